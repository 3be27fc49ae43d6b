"""Run the API: ``python -m recs_serving --port 8000 [--host 127.0.0.1] [--home DIR]``.

Binds to 127.0.0.1 unless ``--host`` says otherwise. The admin reload endpoint is enabled
only when the environment variable named by ``--reload-token-env`` (default
``RECS_ADMIN_TOKEN``) is set.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Requests are small (a GEMV at most): multithreaded BLAS only adds synchronisation latency,
# and the event loop is the unit of concurrency. Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Arrow's system pool lets the loader's temporaries go back to the OS (malloc_trim) after a load.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recs_serving", description="Serve recommendations from the current release.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--home", default=None, help="RECS_HOME (default: $RECS_HOME or the repo's var/)")
    p.add_argument("--reload-token-env", default="RECS_ADMIN_TOKEN", help="env var holding the admin token for POST /v1/admin/reload")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between checks of releases/CURRENT")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency)")
    args = p.parse_args(argv)

    import uvicorn

    from .app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.home:
        os.environ["RECS_HOME"] = args.home
    app = create_app(home=args.home, admin_token=os.environ.get(args.reload_token_env) or None, poll_interval=args.poll_interval)
    rec = app.state.recommender
    print(f"recs_serving: release {rec.version or '(none yet)'} from {rec.home}; http://{args.host}:{args.port}/schema/swagger", file=sys.stderr)
    kw = {}
    try:
        import uvloop  # noqa: F401

        kw["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        kw["http"] = "httptools"
    except ImportError:
        pass
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log, **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
