"""Reading the warehouse into frames and arrays for the compute assets."""
from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_assets.resources import ArtifactStore, Warehouse


EVENT_COLUMNS = ("user_id", "item_id", "ts", "event", "quantity", "price", "basket_id")
EVENT_TYPE = pl.Enum(["view", "add", "purchase"])  # the only events ingest keeps


def load_events(warehouse: Warehouse, columns: tuple[str, ...] = EVENT_COLUMNS) -> pl.DataFrame:
    """recs.interactions as a frame (in the warehouse's time order); ``columns`` only: at 20M
    events each 8-byte column is 160 MB, a string one 320 MB."""
    unknown = set(columns) - set(EVENT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown event columns {sorted(unknown)}")
    with warehouse.connect(read_only=True) as con:
        frame = con.sql(f"SELECT {', '.join(columns)} FROM recs.interactions").pl()
    # One column at a time into one contiguous chunk: the frame arrives in hundreds of chunks
    # whose strings also keep the Arrow buffers they were converted from (20M events, five
    # columns: 2.3 GiB resident, 1.3 GiB once compacted); an Enum is a byte a row where a
    # string is 16.
    for name in frame.columns:
        col = frame[name].cast(EVENT_TYPE) if name == "event" else frame[name]
        frame = frame.with_columns(col.rechunk())
    return frame


def load_catalog(warehouse: Warehouse) -> pl.DataFrame:
    with warehouse.connect(read_only=True) as con:
        return con.sql(
            "SELECT item_id, title, description, brand, category, price, attributes FROM recs.catalog ORDER BY item_id"
        ).pl()


def load_item_ids(warehouse: Warehouse) -> np.ndarray:
    """Item ids in catalog order: the row order of every item-aligned array."""
    with warehouse.connect(read_only=True) as con:
        return con.sql("SELECT item_id FROM recs.catalog ORDER BY item_id").pl()["item_id"].to_numpy().astype(object)


def neighbour_table(item_ids: np.ndarray, C: sp.csr_matrix) -> pl.DataFrame:
    """An item x item CSR as rows (item_id, neighbor_id, score), best first per item."""
    coo = sp.csr_matrix(C).tocoo()
    return pl.DataFrame({"item_id": pl.Series(item_ids[coo.row], dtype=pl.String),
                         "neighbor_id": pl.Series(item_ids[coo.col], dtype=pl.String),
                         "score": coo.data.astype(np.float32)}).sort(["item_id", "score"], descending=[False, True])


def save_csr(store: ArtifactStore, name: str, m: sp.csr_matrix, meta: dict | None = None, **extra) -> None:
    m = sp.csr_matrix(m)
    store.save(name, meta={**(meta or {}), "shape": list(m.shape)}, data=m.data, indices=m.indices,
               indptr=m.indptr, **extra)


def load_csr(store: ArtifactStore, name: str) -> sp.csr_matrix:
    a = store.load(name, "data", "indices", "indptr")
    shape = tuple(store.meta(name)["shape"])
    return sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=shape)
