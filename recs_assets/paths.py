"""Where the project keeps its state: everything lives under one directory, RECS_HOME."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_ONLINE_RETAIL = REPO_ROOT / "data" / "online_retail.parquet"


def recs_home() -> Path:
    return Path(os.environ.get("RECS_HOME", REPO_ROOT / "var")).resolve()


def warehouse_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "warehouse.duckdb"


def lancedb_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "lancedb"


def releases_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "releases"


def artifacts_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "artifacts"


def inbox_path(home: Path | None = None) -> Path:
    return (home or recs_home()) / "inbox"
