"""A loaded release as files that every worker maps: one copy of the arrays per machine.

``load_release`` builds its arrays from Parquet (joins, sorts, CSR builds): that work and its
memory are paid once, by a child process (``python -m recs_serving.mapped``), which verifies
the release, loads it and writes every array field of the ``LoadedRelease`` as ``.npy`` under
``RECS_HOME/serving-cache/<release>-<fingerprint>/`` (a temporary directory, then one atomic
rename). The small Python objects (item id list and dict, popularity lists, parameters) go in
one pickle per field. Serving processes ``np.load(mmap_mode="r")`` the arrays: the pages are
the page cache's, shared by all workers, and a reload maps the new files next to the old ones
(no second private copy; the old mapping goes when its last request ends).

A release that fails verification leaves ``<key>.refused.json`` with the reason, so the other
workers refuse it without verifying it again. Builds are serialised per release by ``flock``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from . import release as release_format
from .loader import Adjacency, CompactIds, CompactIndex, LoadedRelease, MultiRules

CACHE_DIR = "serving-cache"
DONE = "DONE"
KEEP = 4  # cache entries kept (a few releases; workers may still map an older one)
BUILD_TIMEOUT_S = 3600
CHUNK = 2048  # entries per pickled slice of a big list/dict (well under a millisecond to unpickle)
FORMAT = 3  # of the entries' layout; part of the key, so a changed layout is built anew
NICE_ENV = "RECS_BUILD_NICE"
DEFAULT_NICE = 10  # CPU weight ~1/10 of a worker's; 19 starves the build on a busy machine


def cache_root(home: Path) -> Path:
    return Path(home) / CACHE_DIR


def _key(home: Path, name: str) -> str:
    from .holder import fingerprint

    return f"{name}-f{FORMAT}-{fingerprint(release_format.releases_dir(home) / name)[:16]}"


# ----------------------------------------------------------------------------- write


def _tmp_dir(out: Path) -> Path:
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def spiller(tmp: Path):
    """``load_release``'s ``spill`` for an entry being built in ``tmp``: the array goes to the
    file ``write`` would give it, and comes back memory-mapped (the builder's copy is freed)."""
    def spill(name: str, arr: np.ndarray) -> np.ndarray:
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        return np.load(tmp / f"{name}.npy", mmap_mode="r")
    return spill


def _save(path: Path, arr: np.ndarray) -> None:
    """``np.save``, unless ``arr`` is already that file (spilled while loading)."""
    if isinstance(arr, np.memmap) and arr.filename is not None and Path(arr.filename) == path.resolve():
        return
    np.save(path, np.ascontiguousarray(arr))


def write(rel: LoadedRelease, out: Path, tmp: Path | None = None) -> None:
    """Write ``rel`` under ``out`` (which must not exist): tmp dir (``tmp``, when the loader
    spilled arrays into it already) + rename."""
    tmp = tmp if tmp is not None else _tmp_dir(out)
    try:
        layout: dict[str, list] = {}
        objects: dict[str, bytes] = {}
        seen: dict[int, str] = {}
        for f in dataclasses.fields(rel):
            v = getattr(rel, f.name)
            if isinstance(v, np.ndarray) and v.dtype.kind not in "OV":
                if id(v) in seen:  # the same array under two names (emb and mmr_vecs): one file
                    layout[f.name] = ["alias", seen[id(v)]]
                    continue
                seen[id(v)] = f.name
                _save(tmp / f"{f.name}.npy", v)
                layout[f.name] = ["array"]
            elif isinstance(v, Adjacency):
                for part in ("indptr", "indices", "scores"):
                    _save(tmp / f"{f.name}.{part}.npy", getattr(v, part))
                layout[f.name] = ["adjacency"]
            elif isinstance(v, MultiRules):
                for part in MultiRules.PARTS:
                    _save(tmp / f"{f.name}.{part}.npy", getattr(v, part))
                layout[f.name] = ["multi_rules"]
            elif isinstance(v, CompactIds):
                for part in ("by_pos", "order", "sorted"):
                    np.save(tmp / f"{f.name}.{part}.npy", getattr(v, part))
                layout[f.name] = ["compact_ids"]
            elif isinstance(v, CompactIndex):
                layout[f.name] = ["compact_index"]  # rebuilt over user_ids
            elif f.name == "derived" and isinstance(v, dict):
                # serving's derived state (recs_serving.prepared): arrays mapped, lists in slices
                keys = []
                for k, x in v.items():
                    if isinstance(x, np.ndarray) and x.dtype.kind not in "OV":
                        np.save(tmp / f"derived.{k}.npy", np.ascontiguousarray(x))
                        keys.append([k, "array"])
                    else:
                        objects[f"derived.{k}"] = _slices(list(x))
                        keys.append([k, "list_chunks"])
                layout[f.name] = ["derived", keys]
            elif isinstance(v, (dict, list)) and len(v) > CHUNK:
                # pickled in slices: unpickling holds the GIL for the whole call, and a worker
                # reads these while it answers requests
                objects[f.name] = _slices(list(v.items()) if isinstance(v, dict) else v)
                layout[f.name] = ["dict_chunks" if isinstance(v, dict) else "list_chunks"]
            else:
                objects[f.name] = pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)
                layout[f.name] = ["object"]
        with open(tmp / "objects.pkl", "wb") as fh:
            pickle.dump(objects, fh, protocol=pickle.HIGHEST_PROTOCOL)
        (tmp / "layout.json").write_text(json.dumps(layout))
        (tmp / DONE).write_text(rel.version + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _slices(items: list) -> list[bytes]:
    return [pickle.dumps(items[a:a + CHUNK], protocol=pickle.HIGHEST_PROTOCOL) for a in range(0, len(items), CHUNK)]


def _pause(t0: float, pace: float) -> None:
    """Hand the GIL to a request thread waiting for it; with ``pace`` > 0, also stay off it
    ``pace`` times as long as the last unit of work took. A reload shares its process with
    the event loop: at equal turns the loop got half a core while both workers loaded at
    once, and a worker near half a core of requests fell behind (the 1M release's swap second
    was 7x the baseline p99)."""
    time.sleep(pace * (time.perf_counter() - t0) if pace > 0 else 0)


def _unslice(blobs: list[bytes], acc, pace: float = 0.0):
    for blob in blobs:
        t0 = time.perf_counter()
        part = pickle.loads(blob)
        acc.update(part) if isinstance(acc, dict) else acc.extend(part)
        _pause(t0, pace)
    return acc


# ----------------------------------------------------------------------------- read


def _map(path: Path) -> np.ndarray:
    """The file's array, memory-mapped read-only, as a plain ``ndarray`` view: ``np.memmap``'s
    Python-level indexing cost ~8 us per scalar read, and a request makes hundreds."""
    return np.asarray(np.load(path, mmap_mode="r"))


def is_mapped(arr) -> bool:
    """Whether ``arr`` is a view of a memory-mapped file."""
    import mmap

    while arr is not None:
        if isinstance(arr, (np.memmap, mmap.mmap)):
            return True
        arr = getattr(arr, "base", None)
    return False


def read(path: Path, pace: float = 0.0) -> LoadedRelease:
    """Map a cache entry. Each pickled field is loaded separately, and the GIL is offered
    between them, so a request thread never waits for the whole set of objects; ``pace``:
    see ``_pause`` (0 at start-up, when no request waits)."""
    layout = json.loads((path / "layout.json").read_text())
    with open(path / "objects.pkl", "rb") as fh:
        objects = pickle.load(fh)
    values: dict = {}
    for name, (kind, *rest) in layout.items():
        t0 = time.perf_counter()
        if kind == "array":
            values[name] = _map(path / f"{name}.npy")
        elif kind == "adjacency":
            values[name] = Adjacency(*(_map(path / f"{name}.{p}.npy") for p in ("indptr", "indices", "scores")))
        elif kind == "multi_rules":
            values[name] = MultiRules(*(_map(path / f"{name}.{p}.npy") for p in MultiRules.PARTS))
        elif kind == "compact_ids":
            values[name] = CompactIds(*(_map(path / f"{name}.{p}.npy") for p in ("by_pos", "order", "sorted")))
        elif kind == "object":
            values[name] = pickle.loads(objects[name])
            _pause(t0, pace)
        elif kind in ("dict_chunks", "list_chunks"):
            values[name] = _unslice(objects[name], {} if kind == "dict_chunks" else [], pace)
        elif kind == "derived":
            values[name] = {k: _map(path / f"derived.{k}.npy") if how == "array"
                            else _unslice(objects[f"derived.{k}"], [], pace) for k, how in rest[0]}
    for name, (kind, *rest) in layout.items():
        if kind == "alias":
            values[name] = values[rest[0]]
        elif kind == "compact_index":
            values[name] = CompactIndex(values["user_ids"])
    values["loaded_at"] = time.time()
    return LoadedRelease(**values)


# ----------------------------------------------------------------------------- build once, map everywhere


def load_mapped(home: Path | str, name: str, pace: float = 0.0) -> LoadedRelease:
    """The mapped release ``name``; built by a child process when no worker has built it yet.
    ``holder.Refused`` with the reason when the release does not pass."""
    return read(ensure_built(home, name), pace)


def ensure_built(home: Path | str, name: str) -> Path:
    """The cache entry of release ``name``, built first if needed (waiting for another
    worker's build when one is running). ``holder.Refused`` with the reason."""
    from .holder import Refused

    home = Path(home)
    root = cache_root(home)
    root.mkdir(parents=True, exist_ok=True)
    key = _key(home, name)
    out = root / key
    refused = root / f"{key}.refused.json"
    if not (out / DONE).exists():
        with open(root / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per release; the others wait and map its result
            if refused.exists():
                raise Refused(json.loads(refused.read_text())["reason"])
            if not (out / DONE).exists():
                _build_in_child(home, name, out, refused)
        _prune(root, keep=KEEP, spare=key)
    elif refused.exists():
        raise Refused(json.loads(refused.read_text())["reason"])
    return out


def _build_in_child(home: Path, name: str, out: Path, refused: Path) -> None:
    from .holder import Refused

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run([sys.executable, "-m", "recs_serving.mapped", str(home), name, str(out), str(refused)],
                          capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S)
    if proc.returncode == 0 and (out / DONE).exists():
        return
    if refused.exists():
        raise Refused(json.loads(refused.read_text())["reason"])
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    raise Refused(f"release {name}: building the mapped cache failed (exit {proc.returncode}): {' | '.join(tail)}")


def _prune(root: Path, keep: int, spare: str) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for p in entries[: max(0, len(entries) - keep)]:
        if p.name != spare:  # files still mapped by a worker stay valid after unlink
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):
        if time.time() - p.stat().st_mtime > BUILD_TIMEOUT_S:
            shutil.rmtree(p, ignore_errors=True)


def _main(argv: list[str]) -> int:
    home, name, out, refused = Path(argv[0]), argv[1], Path(argv[2]), Path(argv[3])
    try:  # the workers answering requests come first; a load may take longer
        os.nice(int(os.environ.get(NICE_ENV, DEFAULT_NICE)))
    except (OSError, ValueError):
        pass
    from .holder import load_verified

    from .prepared import derive

    tmp = _tmp_dir(out)
    try:
        try:
            rel = load_verified(home, name, spill=spiller(tmp))  # streamed: per-user arrays go to their files at once
            rel = dataclasses.replace(rel, derived=derive(rel))  # validates the blend's sources too
        except release_format.ReleaseError as exc:
            refused.write_text(json.dumps({"name": name, "reason": str(exc)}))
            print(str(exc), file=sys.stderr)
            return 2
        except ValueError as exc:  # the blend refused a source (shape, non-finite values)
            refused.write_text(json.dumps({"name": name, "reason": f"release {name}: {exc}"}))
            print(str(exc), file=sys.stderr)
            return 2
        write(rel, out, tmp=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when write renamed it
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
