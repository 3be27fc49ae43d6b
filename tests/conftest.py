import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "online_retail.parquet"

# numba's on-disk cache must live somewhere writable and under the project's state dir.
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / "var" / "numba-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
