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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make ``--dist loadgroup`` group again: pytest 9 keeps node ids in ``_id`` and ignores the
    ``@group`` suffix xdist 3.8 writes to ``_nodeid``, so every xdist_group was scattered over
    the workers (each worker then built its own module fixtures: pipeline runs, releases)."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # pytest < 9: xdist's own suffix works
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
