import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "online_retail.parquet"

# numba's on-disk cache must live somewhere writable and under the project's state dir.
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / "var" / "numba-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh RECS_HOME for one test."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("RECS_HOME", str(h))
    return h
