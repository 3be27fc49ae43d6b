"""The release lifecycle: find, verify, load, refuse, swap, watch.

``ReleaseHolder`` keeps one reference (``state``) to what requests read. Everything else
happens away from requests, in the caller's thread at start-up and in a watcher thread later:

- **Identity.** A release is named by its directory (what ``CURRENT`` holds). The manifest's
  ``version`` is what responses report, but the holder never compares it with ``CURRENT``: a
  directory renamed after publishing is served once, not reloaded on every poll.
- **Verification before serving.** ``ReleaseFiles.verify`` checks every manifest checksum
  (sha256), the required tables and arrays, and that the factor arrays are finite; then the
  loader must succeed and the loaded release must have what every endpoint needs (ALS factors
  for ``/customers`` and fold-in). A release failing any of these is *refused*: the served one
  stays, ``status()`` names the refused one and why.
- **No retry storm.** A refused release is remembered with a fingerprint of its directory
  (name, size and mtime of every file, the manifest's bytes). It is tried again only when that
  fingerprint changes: a release repaired in place, or a new one published.
- **Start-up with a broken CURRENT.** The newest release that passes is served instead
  (releases ordered by manifest ``created_at``, then name); ``CURRENT`` is retried once it
  changes.
- **Swap.** The new state is built completely (loaded, warmed) and then assigned: one
  reference flip. The cyclic GC is paused while loading (a full collection over a heap that
  holds two releases is what stalled requests) and the new objects are frozen afterwards with
  a young-generation collection only.
- **Shared memory.** With ``cache=True`` the loaded arrays come from a per-release cache of
  ``.npy`` files mapped read-only (``recs_serving.mapped``): every worker process maps the same
  pages, and the cache is built once, by a child process, so the serving processes never run
  the Parquet loader at all.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from . import release as release_format
from .loader import LoadedRelease, load_release

log = logging.getLogger("recs_serving")

S = TypeVar("S")

RELOAD_SIGNAL = "reload-generation"  # under RECS_HOME/serving-cache: bumped by an admin reload
SIGNAL_POLL_S = 0.2  # how often watchers look at it (one stat); CURRENT keeps its own interval
LOAD_SWITCH_INTERVAL_S = 0.0005
RELOAD_PACE = 2.0  # a reload sleeps twice as long as each unit of its work took (mapped._pause)


_atexit_registered = False


def _unfreeze_at_exit() -> None:
    """Let interpreter shutdown collect (and finalise) frozen objects as usual."""
    global _atexit_registered
    if not _atexit_registered:
        import atexit

        atexit.register(gc.unfreeze)
        _atexit_registered = True


class Refused(release_format.ReleaseError):
    """A release that failed verification or loading; the message is the reason."""


def fingerprint(path: Path) -> str:
    """What changes when a release directory changes on disk: names, sizes and mtimes of its
    files and the manifest's bytes. A missing directory has the fingerprint ``missing``."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except FileNotFoundError:
        return "missing"
    h = hashlib.sha1()
    for e in entries:
        try:
            st = e.stat()
        except FileNotFoundError:
            continue
        h.update(f"{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    try:
        h.update((path / release_format.MANIFEST).read_bytes())
    except OSError:
        h.update(b"no-manifest")
    return h.hexdigest()


def serving_needs(rel: LoadedRelease) -> None:
    """Refuse a loaded release that some endpoint could not answer from."""
    missing = []
    if getattr(rel, "als_item", None) is None or getattr(rel, "als_user", None) is None:
        missing.append("ALS factors (als_user_factors.npy and als_item_factors.npy with matching widths and one row per "
                       "user/item): needed by /v1/items/{item_id}/customers and by the fold-in of recent events")
    if rel.n_items == 0:
        missing.append("items (items.parquet has no rows)")
    if missing:
        raise Refused(f"release {rel.path.name} lacks " + "; ".join(missing))


def load_verified(home: Path, name: str, spill=None) -> LoadedRelease:
    """Verify and load one release in this process; ``Refused`` with the reason otherwise.
    ``spill``: see ``loader.load_release``."""
    rf = release_format.open_release(home, name)
    rf.verify()
    try:
        rel = load_release(home, name, spill=spill)
    except release_format.ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated Parquet file etc. is a refusal, not a crash
        raise Refused(f"release {name}: cannot load: {type(exc).__name__}: {exc}") from exc
    serving_needs(rel)
    return rel


class ReleaseHolder(Generic[S]):
    def __init__(self, home: Path, prepare: Callable[[LoadedRelease], S], *, poll_interval: float = 1.0,
                 cache: bool = False, loader: Callable[[Path, str], LoadedRelease] | None = None):
        self.home = Path(home)
        self.prepare = prepare
        self.poll_interval = float(poll_interval)
        self.cache = cache
        self._loader = loader
        self.state: S | None = None
        self.served: dict[str, Any] | None = None  # name, version, fingerprint, loaded_at, load_s
        self.refused: dict[str, Any] | None = None  # the last refusal: name, reason, at
        self._refused_fp: dict[str, tuple[str, str]] = {}  # name -> (fingerprint, reason)
        self._lock = threading.Lock()  # serialises loads; requests never take it
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._signal_seen = self._signal_stamp()
        self.reloads = 0
        self.reload_errors = 0

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        served, refused = self.served, self.refused
        return {
            "artifact_version": served["version"] if served else None,
            "release": served["name"] if served else None,
            "current": release_format.current_version(self.home),
            "refused": dict(refused) if refused else None,
            "pid": os.getpid(),  # which worker answered
        }

    # ------------------------------------------------------------------ loading
    def _load(self, name: str) -> LoadedRelease:
        if self._loader is not None:
            return self._loader(self.home, name)
        if self.cache:
            from .mapped import load_mapped

            # a reload shares the process with requests; the first load has none to wait
            return load_mapped(self.home, name, RELOAD_PACE if self.state is not None else 0.0)
        return load_verified(self.home, name)

    def _try(self, name: str, fp: str) -> bool:
        """Load ``name`` and swap it in; False (and the refusal recorded) when it fails."""
        t0 = time.perf_counter()
        if self.cache and self._loader is None:
            try:  # the build (a child process) or the wait for another worker's: GC stays on meanwhile
                from .mapped import ensure_built

                ensure_built(self.home, name)
            except Exception as exc:  # noqa: BLE001
                reason = str(exc) if isinstance(exc, release_format.ReleaseError) else f"{type(exc).__name__}: {exc}"
                self._refuse(name, fp, reason, exc)
                return False
        was_enabled = gc.isenabled()
        gc.disable()  # no full collection over two releases' objects while loading
        # While this thread maps and warms, a request thread wanting the GIL gets it within
        # 0.5 ms instead of the default 5 ms switch interval.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, LOAD_SWITCH_INTERVAL_S))
        try:
            rel = self._load(name)
            new = self.prepare(rel)
        except Exception as exc:  # noqa: BLE001
            reason = str(exc) if isinstance(exc, release_format.ReleaseError) else f"{type(exc).__name__}: {exc}"
            self._refuse(name, fp, reason, exc)
            return False
        finally:
            sys.setswitchinterval(interval)
            if was_enabled:
                gc.enable()
        if rel.path.name != name or rel.version != name:
            log.info("release directory %s carries manifest version %s; it is identified by its directory", name, rel.version)
        self.state = new  # the swap: one reference assignment
        self.served = {"name": name, "version": rel.version, "fingerprint": fp, "loaded_at": time.time(),
                       "load_s": round(time.perf_counter() - t0, 3)}
        self._refused_fp.pop(name, None)
        if self.refused and self.refused["name"] == name:
            self.refused = None
        self.reloads += 1
        # Keep the new release's objects out of every collection: a full pass over a heap
        # holding a release was a ~90 ms request stall, and even a young-generation pass over
        # what the load allocated (the GC was off meanwhile) held the GIL for ~20 ms. Frozen
        # objects are still freed by reference counting when the release is dropped.
        gc.freeze()
        _unfreeze_at_exit()
        log.info("serving release %s (loaded and verified in %.2fs)", name, self.served["load_s"])
        return True

    def _refuse(self, name: str, fp: str, reason: str, exc: BaseException | None = None) -> None:
        self.reload_errors += 1
        self._refused_fp[name] = (fp, reason)
        self.refused = {"name": name, "reason": reason, "at": time.time()}
        if exc is not None and not isinstance(exc, release_format.ReleaseError):
            log.error("release %s refused: %s; still serving %s", name, reason, self.served and self.served["name"], exc_info=exc)
        else:
            log.warning("release %s refused: %s; still serving %s", name, reason, self.served and self.served["name"])

    def _candidates(self) -> list[str]:
        """Every release directory, newest first (manifest created_at, then name)."""
        out = []
        for name in release_format.list_versions(self.home):
            try:
                created = json.loads((release_format.releases_dir(self.home) / name / release_format.MANIFEST).read_text()).get("created_at") or ""
            except (OSError, ValueError):
                created = ""
            out.append((str(created), name))
        return [n for _, n in sorted(out, reverse=True)]

    def start(self, require: bool = False) -> None:
        """Serve CURRENT, or when it is missing or broken the newest release that passes."""
        with self._lock:
            current = release_format.current_version(self.home)
            tried = set()
            if current is not None:
                tried.add(current)
                if self._check_and_load(current):
                    return
            for name in self._candidates():
                if name in tried:
                    continue
                tried.add(name)
                if self._check_and_load(name):
                    log.warning("CURRENT (%s) could not be served; serving %s, the newest release that passes", current, name)
                    return
        if require:
            raise release_format.ReleaseError(self._why_not_ready())
        log.warning("%s; serving will be ready once a valid release is published", self._why_not_ready())

    def _why_not_ready(self) -> str:
        if self.refused:
            return f"no servable release under {release_format.releases_dir(self.home)} (last refused {self.refused['name']}: {self.refused['reason']})"
        return f"no current release under {release_format.releases_dir(self.home)}"

    def _check_and_load(self, name: str, force: bool = False) -> bool:
        fp = fingerprint(release_format.releases_dir(self.home) / name)
        seen = self._refused_fp.get(name)
        if seen is not None and seen[0] == fp and not force:
            return False
        if fp == "missing":
            self._refuse(name, fp, f"release directory {name!r} does not exist under {release_format.releases_dir(self.home)}")
            return False
        return self._try(name, fp)

    def reload(self, force: bool = False) -> bool:
        """Load CURRENT now if it is not the release being served; True when swapped.

        Raises ``ReleaseError`` with the reason when CURRENT is refused (a release refused
        before and unchanged since is not verified again unless ``force``)."""
        with self._lock:
            name = release_format.current_version(self.home)
            if name is None:
                raise release_format.ReleaseError(f"no current release under {release_format.releases_dir(self.home)}")
            if self.served is not None and self.served["name"] == name and not force:
                return False
            if self._check_and_load(name, force=force):
                return True
            fp_reason = self._refused_fp.get(name)
            raise Refused(fp_reason[1] if fp_reason else f"release {name} refused")

    def poll(self) -> None:
        """One watcher step: load CURRENT if it is new, or changed since it was refused."""
        name = release_format.current_version(self.home)
        if name is None or (self.served is not None and self.served["name"] == name):
            return
        seen = self._refused_fp.get(name)
        if seen is not None and seen[0] == fingerprint(release_format.releases_dir(self.home) / name):
            return
        with self._lock:
            if self.served is None or self.served["name"] != name:
                self._check_and_load(name)

    # ------------------------------------------------------------------ reload signal (every worker)
    def _signal_path(self) -> Path:
        from .mapped import cache_root

        return cache_root(self.home) / RELOAD_SIGNAL

    def _signal_stamp(self) -> tuple | None:
        try:
            st = os.stat(self._signal_path())
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def signal_reload(self) -> None:
        """Ask every process serving this RECS_HOME to reload CURRENT now (an admin reload
        reaches one worker; the others' watchers see the new generation within
        ``SIGNAL_POLL_S``). A new file each time (temp file + rename): its inode changes."""
        path = self._signal_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RELOAD_SIGNAL}.{os.getpid()}.{time.monotonic_ns()}")
        tmp.write_text(f"{time.time()} {os.getpid()}\n")
        os.replace(tmp, path)

    def _check_signal(self) -> None:
        stamp = self._signal_stamp()
        if stamp == self._signal_seen:
            return
        self._signal_seen = stamp
        if stamp is None:
            return
        try:
            self.reload()
        except release_format.ReleaseError as exc:
            log.warning("reload requested by another worker: %s", exc)

    # ------------------------------------------------------------------ watching
    def start_watching(self) -> None:
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="recs-release-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        tick = min(self.poll_interval, SIGNAL_POLL_S)
        next_poll = time.monotonic() + self.poll_interval
        while not self._stop.wait(tick):
            try:
                self._check_signal()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_interval
                    self.poll()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad release
                self.reload_errors += 1
                log.exception("release watcher step failed; still serving %s", self.served and self.served["name"])

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None
