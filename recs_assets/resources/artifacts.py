"""Arrays handed from one asset to the next (factors, id maps, embeddings).

Numpy files under RECS_HOME/artifacts/<name>/, written to a temp directory and renamed into
place, so a step in another process (multiprocess or a remote executor with a shared volume)
never sees a half-written set.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from recs_assets import paths


class ArtifactStore(dg.ConfigurableResource):
    root: str = Field(default="", description="Directory; empty means RECS_HOME/artifacts")

    def base(self) -> Path:
        return Path(self.root) if self.root else paths.artifacts_path()

    def save(self, name: str, meta: dict | None = None, **arrays: np.ndarray) -> Path:
        base = self.base()
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{name}.{uuid.uuid4().hex}"
        tmp.mkdir()
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr), allow_pickle=arr.dtype == object)
        (tmp / "meta.json").write_text(json.dumps(meta or {}, default=str))
        final = base / name
        old = base / f".{name}.old.{uuid.uuid4().hex}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, name: str, *keys: str, mmap: bool = False) -> dict[str, np.ndarray]:
        folder = self.base() / name
        if not folder.exists():
            raise FileNotFoundError(f"artifact {name!r} is missing under {self.base()}; materialize it first")
        wanted = keys or [p.stem for p in folder.glob("*.npy")]
        return {
            k: np.load(folder / f"{k}.npy", mmap_mode="r" if mmap else None, allow_pickle=True)
            for k in wanted
        }

    def meta(self, name: str) -> dict:
        return json.loads((self.base() / name / "meta.json").read_text())
