"""Where the project keeps its state: everything lives under one directory, RECS_HOME."""
from __future__ import annotations

from pathlib import Path

from recs_serving.release import default_home, releases_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_ONLINE_RETAIL = REPO_ROOT / "data" / "online_retail.parquet"


def recs_home() -> Path:
    return default_home()


def warehouse_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "warehouse.duckdb"


def lancedb_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "lancedb"


def releases_path(home: Path | None = None) -> Path:
    return releases_dir(home or recs_home())


def artifacts_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "artifacts"


def inbox_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "inbox"
