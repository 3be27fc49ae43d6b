"""Run the API: ``python -m recs_serving --port 8000 [--workers N] [--host 127.0.0.1] [--home DIR]``.

``--workers`` (default: one per core) worker processes listen on the port, each on its own
``SO_REUSEPORT`` socket so the kernel spreads connections over them (``reuseport``); uvicorn's
supervisor starts them and restarts a worker that dies. Every worker maps the same
per-release array files (``recs_serving.mapped``), built once by a child process: N workers
hold one copy of the release's arrays, and a reload maps the new files instead of copying.
Each worker watches ``CURRENT`` itself; ``POST /v1/admin/reload`` reaches one worker, which
reloads and bumps ``RECS_HOME/serving-cache/reload-generation``: every other worker's watcher
sees it within 0.2 s and reloads too, whatever ``--poll-interval`` is.

Binds to 127.0.0.1 unless ``--host`` says otherwise. The admin reload endpoint is enabled
only when the environment variable named by ``--reload-token-env`` (default
``RECS_ADMIN_TOKEN``) is set. Requests whose headers and body do not arrive within
``--read-timeout`` seconds get a 408 and the connection is closed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Requests are small (a GEMV at most): multithreaded BLAS only adds synchronisation latency,
# and the worker process is the unit of concurrency. Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Arrow's system pool lets the loader's temporaries go back to the OS (malloc_trim) after a load.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

HOME_ENV = "RECS_HOME"
POLL_ENV = "RECS_POLL_INTERVAL"
CACHE_ENV = "RECS_SERVING_MAPPED"
TOKEN_ENV_ENV = "RECS_SERVING_TOKEN_ENV"
LOG_ENV = "RECS_LOG_LEVEL"


def app_from_env():
    """The app of one worker process, configured from the environment ``main`` set."""
    from .app import create_app
    from .recommender import Recommender

    logging.basicConfig(level=os.environ.get(LOG_ENV, "INFO").upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    home = os.environ.get(HOME_ENV) or None
    rec = Recommender(home, watch=False, poll_interval=float(os.environ.get(POLL_ENV, "1.0")),
                      cache=os.environ.get(CACHE_ENV, "1") == "1")
    token = os.environ.get(os.environ.get(TOKEN_ENV_ENV, "RECS_ADMIN_TOKEN")) or None
    app = create_app(rec, admin_token=token, owns_recommender=True)
    # Modules, the app and the loaded release live as long as the process: out of the collector's
    # sight, a full collection no longer walks them (under load they made pauses of tens of ms).
    import gc

    gc.freeze()
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recs_serving", description="Serve recommendations from the current release.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes sharing the port (default: one per core)")
    p.add_argument("--home", default=None, help="RECS_HOME (default: $RECS_HOME or the repo's var/)")
    p.add_argument("--reload-token-env", default="RECS_ADMIN_TOKEN", help="env var holding the admin token for POST /v1/admin/reload")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between checks of releases/CURRENT")
    p.add_argument("--read-timeout", type=float, default=10.0, help="seconds a client has to send a request's headers and body (else 408)")
    p.add_argument("--no-mapped", action="store_true", help="load releases in each worker's memory instead of mapping a shared cache")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency)")
    args = p.parse_args(argv)

    if args.home:
        os.environ[HOME_ENV] = str(args.home)
    os.environ[POLL_ENV] = str(args.poll_interval)
    os.environ[CACHE_ENV] = "0" if args.no_mapped else "1"
    os.environ[TOKEN_ENV_ENV] = args.reload_token_env
    os.environ[LOG_ENV] = args.log_level
    os.environ["RECS_READ_TIMEOUT"] = str(args.read_timeout)

    import uvicorn

    from .protocol import FastPathProtocol

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    workers = max(1, args.workers)
    kw: dict = {"http": FastPathProtocol, "timeout_graceful_shutdown": 5}
    try:
        import uvloop  # noqa: F401

        kw["loop"] = "uvloop"
    except ImportError:
        pass
    home = os.environ.get(HOME_ENV) or "(default)"
    print(f"recs_serving: {workers} worker(s) serving releases from {home}; http://{args.host}:{args.port}/schema/swagger", file=sys.stderr)
    if workers == 1:
        uvicorn.run(app_from_env(), host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log, **kw)
    else:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics sums every worker (see metrics.py)
            import tempfile

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recs-prometheus-")
        _run_workers(workers, args, kw)
    return 0


def _run_workers(workers: int, args, kw: dict) -> None:
    """uvicorn's supervisor (starts, watches and restarts the workers, relays signals), each
    worker on its own ``SO_REUSEPORT`` socket (``reuseport``: the kernel spreads connections)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from . import reuseport

    config = uvicorn.Config("recs_serving.__main__:app_from_env", factory=True, workers=workers, host=args.host, port=args.port,
                            log_level=args.log_level, access_log=args.access_log, **kw)
    if not reuseport.available():  # one shared socket, as uvicorn.run binds it
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    try:
        held = reuseport.reserve(args.host, args.port)
    except OSError as exc:
        logging.getLogger("uvicorn.error").error("could not bind %s:%s: %s", args.host, args.port, exc)
        sys.exit(1)
    try:
        port = held.getsockname()[1]  # --port 0: the port the supervisor got, for every worker
        Multiprocess(config, sockets=[reuseport.PerWorkerSocket(args.host, port, config.backlog)]).run()  # type: ignore[list-item]
    finally:
        held.close()


if __name__ == "__main__":
    sys.exit(main())
