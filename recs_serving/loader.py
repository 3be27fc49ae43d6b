"""Load one release fully into memory as plain numpy arrays and dicts (``LoadedRelease``).

Everything a request touches is precomputed here once per release: id maps, attribute codes
for the hard filters, CSR adjacency for neighbours / co-visitation / rules / history, the
dense per-user top-N, normalised embeddings, popularity lists. A ``LoadedRelease`` is never
mutated after construction, so requests that hold a reference keep a consistent view while
the recommender swaps in a newer one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import scipy.sparse as sp

from recs_kernels import blend

from .release import ReleaseContract, ReleaseFiles, open_release, read_contract

log = logging.getLogger("recs_serving")

MAX_TOPN = 200
COMPACT_IDS_ABOVE = 200_000  # users: above this, ids live in sorted numpy bytes instead of a dict


@dataclass(frozen=True)
class Adjacency:
    """CSR rows of (neighbour idx, score) per item, neighbours in descending score."""

    indptr: np.ndarray
    indices: np.ndarray
    scores: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.scores[a:b]

    def csr(self) -> sp.csr_matrix:
        """The same arrays as a scipy CSR (rows in score order; no copy of the data)."""
        n = self.indptr.size - 1
        return sp.csr_matrix((self.scores, self.indices, self.indptr), shape=(n, n))

    @staticmethod
    def empty(n: int) -> "Adjacency":
        return Adjacency(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    @staticmethod
    def build(n: int, src: np.ndarray, dst: np.ndarray, score: np.ndarray, max_per_row: int | None = None) -> "Adjacency":
        ok = (src >= 0) & (dst >= 0) & (src != dst) & np.isfinite(score)
        src, dst, score = src[ok], dst[ok], score[ok].astype(np.float32)
        order = np.lexsort((dst, -score, src))
        src, dst, score = src[order], dst[order], score[order]
        if src.size:  # drop duplicate (src, dst) pairs, keeping the best score
            key = src.astype(np.int64) * n + dst
            _, first = np.unique(key, return_index=True)
            keep = np.sort(first)
            src, dst, score = src[keep], dst[keep], score[keep]
        if max_per_row is not None and src.size:
            starts = np.searchsorted(src, src, side="left")
            pos = np.arange(src.size) - starts
            keep = pos < max_per_row
            src, dst, score = src[keep], dst[keep], score[keep]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
        return Adjacency(indptr, dst.astype(np.int32), score)


@dataclass(frozen=True)
class LoadedRelease:
    version: str
    path: Path
    manifest: dict
    loaded_at: float
    # items
    item_ids: list
    item_index: dict
    n_items: int
    titles: list
    brand_codes: np.ndarray
    brand_names: list
    brand_index: dict
    category_codes: np.ndarray
    category_names: list
    category_index: dict
    price: np.ndarray
    id_sorted: np.ndarray  # item ids sorted (unicode array), for prefix filters
    id_rank: np.ndarray  # position of each item in id_sorted
    pop_norm: np.ndarray  # [0, 1] log-scaled global popularity per item (reasons only)
    trend_norm: np.ndarray
    pop_order: np.ndarray  # all items by popularity desc, idx asc
    popularity_lists: dict  # (scope, key) -> idx array in rank order
    # users
    user_ids: "CompactIds | list"
    user_index: "CompactIndex | dict"
    n_users: int
    topn_ids: np.ndarray  # [n_users, N] int32, -1 padded
    topn_scores: np.ndarray  # [n_users, N] float32
    hist_indptr: np.ndarray
    hist_items: np.ndarray
    hist_weight: np.ndarray
    hist_purchased: np.ndarray  # bool per history row
    buyers: Adjacency  # item -> users who purchased it
    # models
    als_user: np.ndarray | None
    als_item: np.ndarray | None
    als_yty: np.ndarray | None
    bpr_user: np.ndarray | None
    bpr_item: np.ndarray | None
    emb: np.ndarray | None  # the content source's item vectors (blend.content_vectors: L2, PCA to contract.content_dim)
    mmr_vecs: np.ndarray | None  # the same array: MMR's cosines
    sim_factors: Adjacency  # similar_items (factors): candidates only
    sim_content: Adjacency  # similar_items (content): candidates only
    item_sim: Adjacency  # the blend's item_sim source (item_similarity.parquet)
    covis: Adjacency  # the blend's covis source (covisitation.parquet)
    rules: Adjacency  # the blend's rules source: item -> consequent, score = confidence
    popularity: np.ndarray  # the blend's popularity source (items.popularity), raw
    trending: np.ndarray  # the blend's trending source (items.trending), raw
    contract: ReleaseContract
    multi_rules: "MultiRules | None" = None  # rules with 2+ antecedent items: candidates only
    # what serving derives from the above (recs_serving.prepared), when the mapped cache carries it
    derived: dict | None = None

    def history(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.hist_indptr[u], self.hist_indptr[u + 1]
        return self.hist_items[a:b], self.hist_weight[a:b], self.hist_purchased[a:b]

    def summary(self) -> dict:
        return {
            "artifact_version": self.version,
            "n_items": self.n_items,
            "n_users": self.n_users,
            "topn_width": int(self.topn_ids.shape[1]),
            "loaded_at": self.loaded_at,
        }


# ------------------------------------------------------------------------------------------
# helpers


def _as_str(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.string())
    return col


def _lookup(col: pa.ChunkedArray, value_set: pa.Array, index: dict | None = None) -> np.ndarray:
    """Positions of ``col``'s values in ``value_set`` (-1 when absent).

    Dictionary-encoded chunks (Parquet row groups read with ``read_dictionary``) are mapped
    through their dictionaries, one probe per distinct value, via ``index`` (a Python dict of
    value -> position) so no hash table is rebuilt per chunk; plain columns go through one
    Arrow hash lookup over the whole column.
    """
    if pa.types.is_dictionary(col.type) and index is not None:
        parts = []
        for chunk in col.chunks:
            dic = _as_str(chunk.dictionary).to_pylist()
            many = getattr(index, "get_many", None)  # CompactIndex: one vectorised binary search
            if many is not None:
                pos = many(dic)
            else:
                get = index.get
                pos = np.fromiter((get(v, -1) for v in dic), dtype=np.int64, count=len(dic))
            idx = chunk.indices.fill_null(0).to_numpy(zero_copy_only=False)
            out = pos[idx] if pos.size else np.full(idx.size, -1, np.int64)
            if chunk.null_count:
                out[chunk.is_null().to_numpy(zero_copy_only=False)] = -1
            parts.append(out)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    col = _as_str(col)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return pc.index_in(col, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _read(rf: ReleaseFiles, name: str, columns: list[str] | None = None, dict_cols: tuple = ()) -> pa.Table | None:
    path = rf.path / f"{name}.parquet"
    if not path.exists():
        return None
    schema_names = pq.read_schema(path).names
    cols = [c for c in columns if c in schema_names] if columns else None
    return pq.read_table(path, columns=cols, read_dictionary=[c for c in dict_cols if c in schema_names] or None)


def _num(table: pa.Table, name: str, dtype, default=np.nan) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, default, dtype=dtype)
    col = table.column(name)
    try:
        col = col.cast(pa.float64()) if np.dtype(dtype).kind == "f" else col
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.full(table.num_rows, default, dtype=dtype)
    arr = col.to_numpy() if col.null_count == 0 else col.fill_null(default).to_numpy()
    return np.asarray(arr, dtype=dtype)


def _codes(table: pa.Table, name: str) -> tuple[np.ndarray, list, dict]:
    n = table.num_rows
    if name not in table.column_names:
        return np.full(n, -1, np.int32), [], {}
    col = _as_str(table.column(name)).combine_chunks().dictionary_encode()
    names = col.dictionary.to_pylist()
    codes = col.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, names, {s: i for i, s in enumerate(names)}


def _log_norm(x: np.ndarray) -> np.ndarray:
    x = np.log1p(np.clip(np.nan_to_num(x, nan=0.0), 0, None))
    m = x.max() if x.size else 0.0
    return (x / m).astype(np.float32) if m > 0 else np.zeros_like(x, dtype=np.float32)


def _array(rf: ReleaseFiles, name: str, rows: int, mmap: bool, dtype=np.float32) -> np.ndarray | None:
    if not (rf.path / f"{name}.npy").exists():
        return None
    arr = rf.array(name, mmap=True)
    if arr.ndim != 2 or arr.shape[0] != rows:
        log.warning("release %s: %s has shape %s, expected %d rows; ignored", rf.version, name, arr.shape, rows)
        return None
    if mmap:
        return arr
    return _read_blocks(rf.path / f"{name}.npy", arr.shape, arr.dtype, dtype)


def _read_blocks(path: Path, shape: tuple, src_dtype, dtype, block_bytes: int = 16 << 20) -> np.ndarray:
    """A 2-D ``.npy`` file read block by block into a ``dtype`` array, non-finite values as 0:
    only one block of the file's own dtype is held at a time (1M users x 64 float32 factors
    read whole and then cast to float16 was 450 MB at once)."""
    out = np.empty(shape, dtype)
    rows, cols = shape
    step = max(1, block_bytes // max(1, cols * np.dtype(src_dtype).itemsize))
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        _, fortran, _ = header(fh)  # leaves the file at the data
        if fortran:
            return np.nan_to_num(np.load(path).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0).astype(dtype)
        for a in range(0, rows, step):
            n = min(step, rows - a)
            blk = np.fromfile(fh, dtype=src_dtype, count=n * cols).reshape(n, cols).astype(np.float32, copy=False)
            if not np.isfinite(blk).all():
                blk = np.nan_to_num(blk, nan=0.0, posinf=0.0, neginf=0.0)
            out[a:a + n] = blk
    return out


# ------------------------------------------------------------------------------------------
# load


def load_release(home: Path | str, version: str | None = None, *, mmap: bool = False, verify: bool = False,
                 compact: bool = True, spill=None) -> LoadedRelease:
    """Load a release into memory, one small reader per table. ``compact`` keeps the per-user
    matrices (user factors, top-N scores) in float16: half the memory, and they are only ever
    read a row at a time and cast back to float32 (item-side arrays stay float32).

    ``spill(name, array) -> array``: called on each per-user array (top-N, history, buyers,
    user factors) as soon as it is built; the mapped cache's builder writes it to its file and
    gets a memory map back, so the builder never holds the whole release at once."""
    spill = spill or (lambda name, arr: arr)
    t0 = time.perf_counter()
    user_dtype = np.float16 if compact and not mmap else np.float32
    rf = open_release(home, version)
    if verify:
        rf.verify()
    contract = read_contract(rf.manifest)  # first: a release this reader cannot serve is refused before any table is read

    it = read_items(rf)
    n_items, item_arr, item_index = it["n_items"], it.pop("item_arr"), it["item_index"]
    pop_raw, trend_raw = it.pop("pop_raw"), it.pop("trend_raw")
    pop = read_popularity(rf, item_arr, item_index, n_items, pop_raw, trend_raw)

    user_arr, user_ids, user_index = read_users(rf)
    n_users = len(user_ids)
    # top-N (dense), streamed by row group so a 50M-row table never sits in memory whole
    topn_ids, topn_scores = _load_topn(rf, n_users, user_arr, user_index, item_arr, item_index, user_dtype)
    topn_ids, topn_scores = spill("topn_ids", topn_ids), spill("topn_scores", topn_scores)
    _release_memory()  # the readers' freed buffers, before the next table is read
    hist = read_history(rf, n_users, n_items, user_arr, user_index, item_arr, item_index)
    hist = {k: spill(k, v) if isinstance(v, np.ndarray) else v for k, v in hist.items()}
    hist["buyers"] = Adjacency(*(spill(f"buyers.{p}", getattr(hist["buyers"], p)) for p in ("indptr", "indices", "scores")))
    _release_memory()
    # The loader needed a dict for its vectorised lookups; serving needs one probe per request.
    # A sorted bytes array answers that in O(log n) at a tenth of the memory of 1M Python strings.
    if n_users > COMPACT_IDS_ABOVE and not isinstance(user_ids, CompactIds):
        compact_ids = CompactIds.build(user_arr)
        if compact_ids is not None:
            user_ids, user_index = compact_ids, CompactIndex(compact_ids)
    del user_arr

    als_user, als_item = read_factors(rf, "als", n_users, n_items, mmap, user_dtype)
    als_user = spill("als_user", als_user) if als_user is not None else None
    als_yty = np.ascontiguousarray(als_item.T @ als_item, dtype=np.float32) if als_item is not None else None
    bpr_user, bpr_item = read_factors(rf, "bpr", n_users, n_items, mmap, user_dtype)
    bpr_user = spill("bpr_user", bpr_user) if bpr_user is not None else None
    emb = read_content(rf, n_items, contract.content_dim)
    _release_memory()
    sim_factors, sim_content = read_similar_items(rf, n_items, item_arr, item_index)
    item_sim = read_neighbours(rf, "item_similarity", n_items, item_arr, item_index)
    covis = read_neighbours(rf, "covisitation", n_items, item_arr, item_index)
    rules, multi = read_rules(rf, n_items, item_arr)

    rel = LoadedRelease(
        version=rf.version, path=rf.path, manifest=rf.manifest, loaded_at=time.time(),
        **it, **pop,
        user_ids=user_ids, user_index=user_index, n_users=n_users,
        topn_ids=topn_ids, topn_scores=topn_scores, **hist,
        als_user=als_user, als_item=als_item, als_yty=als_yty,
        bpr_user=bpr_user, bpr_item=bpr_item, emb=emb, mmr_vecs=emb,
        sim_factors=sim_factors, sim_content=sim_content, item_sim=item_sim, covis=covis, rules=rules,
        multi_rules=multi, popularity=pop_raw, trending=trend_raw, contract=contract,
    )
    _release_memory()
    log.info("loaded release %s (%d items, %d users) in %.2fs", rf.version, n_items, n_users, time.perf_counter() - t0)
    return rel


def read_items(rf: ReleaseFiles) -> dict:
    """items.parquet: ids, titles, attribute codes for the hard filters, raw popularity columns."""
    items = _read(rf, "items")
    if "idx" in items.column_names:
        items = items.sort_by("idx")
    n_items = items.num_rows
    item_arr = _as_str(items.column("item_id")).combine_chunks()
    item_ids = item_arr.to_pylist()
    brand_codes, brand_names, brand_index = _codes(items, "brand")
    category_codes, category_names, category_index = _codes(items, "category")
    id_sorted_order = np.argsort(np.asarray(item_ids, dtype=object).astype(str), kind="stable")
    id_rank = np.empty(n_items, np.int64)
    id_rank[id_sorted_order] = np.arange(n_items)
    return dict(
        item_arr=item_arr, item_ids=item_ids, item_index={s: i for i, s in enumerate(item_ids)}, n_items=n_items,
        titles=_as_str(items.column("title")).to_pylist() if "title" in items.column_names else [""] * n_items,
        brand_codes=brand_codes, brand_names=brand_names, brand_index=brand_index,
        category_codes=category_codes, category_names=category_names, category_index=category_index,
        price=_num(items, "price", np.float64), id_sorted=np.asarray(item_ids, dtype=str)[id_sorted_order], id_rank=id_rank,
        pop_raw=_num(items, "popularity", np.float64, 0.0), trend_raw=_num(items, "trending", np.float64, 0.0),
    )


def read_popularity(rf: ReleaseFiles, item_arr, item_index, n_items: int, pop_raw: np.ndarray, trend_raw: np.ndarray) -> dict:
    """popularity.parquet: ranked lists per (scope, key). When items.parquet has no
    popularity/trending scores, they are derived from the global/trending lists (in place)."""
    pop_lists: dict = {}
    pop = _read(rf, "popularity", dict_cols=("scope", "key", "item_id"))
    if pop is not None and pop.num_rows:
        iidx = _lookup(pop.column("item_id"), item_arr, item_index)
        scope = _as_str(pop.column("scope")).to_numpy(zero_copy_only=False).astype(str)
        key = _as_str(pop.column("key")).fill_null("").to_numpy(zero_copy_only=False).astype(str)
        rank = _num(pop, "rank", np.float64, 0.0)
        score = _num(pop, "score", np.float64, 0.0)
        order = np.lexsort((iidx, -score, rank, key, scope))
        scope, key, iidx = scope[order], key[order], iidx[order]
        ok = iidx >= 0
        scope, key, iidx = scope[ok], key[ok], iidx[ok]
        if scope.size:
            brk = np.flatnonzero((scope[1:] != scope[:-1]) | (key[1:] != key[:-1])) + 1
            for a, b in zip(np.r_[0, brk], np.r_[brk, scope.size]):
                seen = iidx[a:b]
                _, first = np.unique(seen, return_index=True)
                pop_lists[(str(scope[a]), "" if scope[a] in ("global", "trending") else str(key[a]))] = seen[np.sort(first)].astype(np.int32)
        if not np.any(pop_raw > 0) and ("global", "") in pop_lists:
            g = pop_lists[("global", "")]
            pop_raw[g] = np.arange(g.size, 0, -1)
        if not np.any(trend_raw > 0) and ("trending", "") in pop_lists:
            t = pop_lists[("trending", "")]
            trend_raw[t] = np.arange(t.size, 0, -1)
    pop_norm = _log_norm(pop_raw)
    trend_norm = _log_norm(trend_raw)
    pop_order = np.lexsort((np.arange(n_items), -pop_norm)).astype(np.int32)
    if ("global", "") not in pop_lists:
        pop_lists[("global", "")] = pop_order[:1000]
    if ("trending", "") not in pop_lists:
        pop_lists[("trending", "")] = np.lexsort((np.arange(n_items), -trend_norm)).astype(np.int32)[:1000]
    return dict(pop_norm=pop_norm, trend_norm=trend_norm, pop_order=pop_order, popularity_lists=pop_lists)


def read_users(rf: ReleaseFiles):
    users = _read(rf, "users")
    if "idx" in users.column_names:
        users = users.sort_by("idx")
    user_arr = _as_str(users.column("user_id")).combine_chunks()
    if len(user_arr) > COMPACT_IDS_ABOVE:
        # Sorted bytes from the start: 1M Python strings and their dict (~200 MB) were most of
        # the cache builder's peak while it read the top-N and history tables.
        compact_ids = CompactIds.build(user_arr)
        if compact_ids is not None:
            return user_arr, compact_ids, CompactIndex(compact_ids)
    user_ids = user_arr.to_pylist()
    return user_arr, user_ids, {s: i for i, s in enumerate(user_ids)}


def read_history(rf: ReleaseFiles, n_users: int, n_items: int, user_arr, user_index, item_arr, item_index) -> dict:
    """user_items.parquet (streamed): per-user CSR of history items, weights, purchased flags,
    and the item -> buyers adjacency."""
    hu, hi, hw, hp = _stream_columns(
        rf, "user_items", [("user_id", user_arr, user_index), ("item_id", item_arr, item_index)],
        [("weight", np.float32, 1.0), ("purchases", np.float32, 1.0)],
    )
    hp = hp > 0
    order = np.lexsort((hi, hu))
    hu, hi, hw, hp = hu[order], hi[order], np.clip(np.nan_to_num(hw[order]), 0, None), hp[order]
    del order
    hist_indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(hu, minlength=n_users), out=hist_indptr[1:])
    buyers = _buyers(n_items, hi[hp], hu[hp])
    return dict(hist_indptr=hist_indptr, hist_items=hi, hist_weight=hw.astype(np.float32), hist_purchased=hp, buyers=buyers)


def read_factors(rf: ReleaseFiles, model: str, n_users: int, n_items: int, mmap: bool, user_dtype):
    """<model>_user_factors / <model>_item_factors, or (None, None) when absent or mismatched."""
    user = _array(rf, f"{model}_user_factors", n_users, mmap, user_dtype)
    item = _array(rf, f"{model}_item_factors", n_items, mmap)
    if user is None or item is None or user.shape[1] != item.shape[1]:
        return None, None
    return user, item


def read_content(rf: ReleaseFiles, n_items: int, dim: int) -> np.ndarray | None:
    """item_embeddings as the content source's vectors (the batch blend's very transform):
    cosines are kept closely, a request gathers fewer floats, and the full-width matrix
    (150 MB at 100K x 384) is not kept."""
    emb = _array(rf, "item_embeddings", n_items, False)
    return None if emb is None else blend.content_vectors(emb, dim)


def read_similar_items(rf: ReleaseFiles, n_items: int, item_arr, item_index) -> tuple[Adjacency, Adjacency]:
    """similar_items.parquet as (factors, content) adjacencies: candidates for item pages."""
    sim = _read(rf, "similar_items", ["item_id", "similar_item_id", "score", "source"], dict_cols=("item_id", "similar_item_id", "source"))
    if sim is None or not sim.num_rows:
        return Adjacency.empty(n_items), Adjacency.empty(n_items)
    a = _lookup(sim.column("item_id"), item_arr, item_index)
    b = _lookup(sim.column("similar_item_id"), item_arr, item_index)
    s = _num(sim, "score", np.float32, 0.0)
    # the mask in Arrow: a 4M-row column as a numpy string array was a ~300 MB spike in the cache builder
    c = (pc.equal(_as_str(sim.column("source")), "content").fill_null(False).to_numpy(zero_copy_only=False)
         if "source" in sim.column_names else np.zeros(a.size, bool))
    return Adjacency.build(n_items, a[~c], b[~c], s[~c], 50), Adjacency.build(n_items, a[c], b[c], s[c], 50)


def read_neighbours(rf: ReleaseFiles, name: str, n_items: int, item_arr, item_index) -> Adjacency:
    """An item x item source table (item_id, neighbor_id, score), every row kept: the blend
    scores from whole rows, as the batch top-N does (the assets bound the row length)."""
    t = _read(rf, name, ["item_id", "neighbor_id", "score"], dict_cols=("item_id", "neighbor_id"))
    if t is None or not t.num_rows:
        return Adjacency.empty(n_items)
    return Adjacency.build(n_items, _lookup(t.column("item_id"), item_arr, item_index),
                           _lookup(t.column("neighbor_id"), item_arr, item_index), _num(t, "score", np.float32, 0.0))


def read_rules(rf: ReleaseFiles, n_items: int, item_arr) -> tuple[Adjacency, "MultiRules"]:
    """rules.parquet: the rules source (``blend.rules_matrix``) and multi-antecedent rules (candidates)."""
    rl = _read(rf, "rules", ["antecedents", "consequents", "confidence"])
    if rl is None or not rl.num_rows:
        return Adjacency.empty(n_items), MultiRules.empty(n_items)
    ante = rl.column("antecedents").combine_chunks()
    cons = rl.column("consequents").combine_chunks()
    conf = _num(rl, "confidence", np.float32, 0.0)
    a_len = pc.list_value_length(ante).fill_null(0).to_numpy(zero_copy_only=False)
    c_len = pc.list_value_length(cons).fill_null(0).to_numpy(zero_copy_only=False)
    a_flat = _lookup(pa.chunked_array([pc.list_flatten(ante)]), item_arr)
    c_flat = _lookup(pa.chunked_array([pc.list_flatten(cons)]), item_arr)
    R = blend.rules_matrix(n_items, a_len, a_flat, c_len, c_flat, conf).tocoo()
    rules = Adjacency.build(n_items, R.row.astype(np.int64), R.col.astype(np.int64), R.data)
    return rules, MultiRules.from_lists(n_items, a_len, a_flat, c_len, c_flat)


@dataclass(frozen=True)
class MultiRules:
    """Rules with two or more antecedent items, as candidates. Arrays only (mapped by every
    worker): per rule its antecedent size and its consequents (CSR), and per item the rules
    whose antecedent holds it, so a request looks at its seeds' rules only, never at all of them."""

    ante_len: np.ndarray  # int32 [n_rules]
    cons_ptr: np.ndarray  # int64 [n_rules + 1]
    cons: np.ndarray  # int32
    by_item_ptr: np.ndarray  # int64 [n_items + 1]
    by_item: np.ndarray  # int32 rule ids

    PARTS = ("ante_len", "cons_ptr", "cons", "by_item_ptr", "by_item")

    @staticmethod
    def build(n_items: int, rules: list) -> "MultiRules":
        """``rules``: (distinct antecedent idx, consequent idx) pairs."""
        ante_len = np.array([a.size for a, _ in rules], np.int32)
        cons_ptr = np.zeros(len(rules) + 1, np.int64)
        np.cumsum(np.array([c.size for _, c in rules], np.int64), out=cons_ptr[1:])
        cons = np.concatenate([c for _, c in rules]).astype(np.int32) if rules else np.zeros(0, np.int32)
        items = np.concatenate([a for a, _ in rules]).astype(np.int64) if rules else np.zeros(0, np.int64)
        rule_of = np.repeat(np.arange(len(rules), dtype=np.int32), ante_len)
        return MultiRules._indexed(n_items, ante_len, cons_ptr, cons, items, rule_of)

    @staticmethod
    def _indexed(n_items: int, ante_len, cons_ptr, cons, items: np.ndarray, rule_of: np.ndarray) -> "MultiRules":
        """The rules with their by-item index: ``items``/``rule_of`` pair each antecedent item
        with its rule."""
        order = np.lexsort((rule_of, items))
        by_item_ptr = np.zeros(n_items + 1, np.int64)
        np.cumsum(np.bincount(items, minlength=n_items), out=by_item_ptr[1:])
        return MultiRules(ante_len, cons_ptr, cons, by_item_ptr, rule_of[order])

    @staticmethod
    def from_lists(n_items: int, a_len: np.ndarray, a_flat: np.ndarray, c_len: np.ndarray, c_flat: np.ndarray,
                   limit: int = 100_000) -> "MultiRules":
        """``build`` from every rule's antecedent and consequent item lists (flat item indices,
        -1 for an item not in the catalogue, and the lengths): the first ``limit`` rules with two
        or more antecedent items, all of them known and at least one consequent known; each
        antecedent's distinct items, the known consequents. Array operations only (a loop over
        35K bundled rules was ~0.6 CPU s of every release load)."""
        a_len, c_len = np.asarray(a_len, np.int64), np.asarray(c_len, np.int64)
        a_flat, c_flat = np.asarray(a_flat, np.int64), np.asarray(c_flat, np.int64)
        n_rules = a_len.shape[0]
        a_rule = np.repeat(np.arange(n_rules), a_len)
        c_rule = np.repeat(np.arange(n_rules), c_len)
        keep = np.zeros(n_rules, bool)
        keep[np.flatnonzero(a_len > 1)[:limit]] = True
        keep &= np.bincount(a_rule[a_flat < 0], minlength=n_rules) == 0
        keep &= np.bincount(c_rule[c_flat >= 0], minlength=n_rules) > 0
        new_id = np.full(n_rules, -1, np.int64)
        new_id[keep] = np.arange(int(keep.sum()))
        n_kept = int(keep.sum())
        # antecedents: distinct items per rule, in (rule, item) order as np.unique per rule gives them
        m = keep[a_rule]
        ar, ai = new_id[a_rule[m]], a_flat[m]
        order = np.lexsort((ai, ar))
        ar, ai = ar[order], ai[order]
        first = np.ones(ar.size, bool)
        first[1:] = (ar[1:] != ar[:-1]) | (ai[1:] != ai[:-1])
        ar, ai = ar[first], ai[first]
        ante_len = np.bincount(ar, minlength=n_kept).astype(np.int32)
        mc = keep[c_rule] & (c_flat >= 0)
        cons = c_flat[mc].astype(np.int32)
        cons_ptr = np.zeros(n_kept + 1, np.int64)
        np.cumsum(np.bincount(new_id[c_rule[mc]], minlength=n_kept), out=cons_ptr[1:])
        return MultiRules._indexed(n_items, ante_len, cons_ptr, cons, ai, ar.astype(np.int32))

    def __len__(self) -> int:
        return int(self.ante_len.shape[0])

    def consequents(self, seeds: np.ndarray) -> np.ndarray:
        """Consequents of every rule whose whole antecedent is among ``seeds`` (distinct idx):
        a rule matches when as many of its antecedent items are seeds as it has."""
        none = np.zeros(0, np.int32)
        if seeds.size < 2 or len(self) == 0:
            return none
        a, b = self.by_item_ptr[seeds], self.by_item_ptr[seeds + 1]
        hits = np.concatenate([self.by_item[x:y] for x, y in zip(a.tolist(), b.tolist())])
        if hits.size == 0:
            return none
        r, n = np.unique(hits, return_counts=True)
        ok = r[n == self.ante_len[r]]
        if ok.size == 0:
            return none
        lo, hi = self.cons_ptr[ok], self.cons_ptr[ok + 1]
        lens = hi - lo
        pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
        return self.cons[pos]

    @staticmethod
    def empty(n_items: int) -> "MultiRules":
        return MultiRules.build(n_items, [])


def _buyers(n_items: int, items: np.ndarray, users: np.ndarray) -> Adjacency:
    order = np.lexsort((users, items))
    items, users = items[order], users[order]
    indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.bincount(items, minlength=n_items), out=indptr[1:])
    return Adjacency(indptr, users.astype(np.int32), np.ones(users.size, np.float32))


def _release_memory() -> None:
    """Hand the loader's temporaries back to the OS (Arrow's pool and glibc's heap keep them)."""
    try:
        pa.default_memory_pool().release_unused()
    except Exception:  # noqa: BLE001
        pass
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001
        pass


def _stream_columns(rf: ReleaseFiles, name: str, id_cols: list, num_cols: list, batch_rows: int = 1 << 20):
    """Read ``name`` batch by batch: id columns mapped to positions (rows with an unknown id
    dropped), numeric columns as numpy. Returns one array per column, in order."""
    path = rf.path / f"{name}.parquet"
    pf = pq.ParquetFile(path, read_dictionary=[c for c, _, _ in id_cols])
    have = set(pf.schema_arrow.names)
    cols = [c for c, _, _ in id_cols] + [c for c, _, _ in num_cols if c in have]
    parts: list[list[np.ndarray]] = [[] for _ in range(len(id_cols) + len(num_cols))]
    for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
        t = pa.Table.from_batches([batch])
        mapped = [_lookup(t.column(c), vs, ix) for c, vs, ix in id_cols]
        ok = np.ones(t.num_rows, bool)
        for m in mapped:
            ok &= m >= 0
        for j, m in enumerate(mapped):
            parts[j].append(m[ok].astype(np.int32))  # positions: half the builder's memory of int64
        for j, (c, dt, default) in enumerate(num_cols):
            parts[len(id_cols) + j].append(_num(t, c, dt, default)[ok])
    return [np.concatenate(p) if p else np.zeros(0, np.int32 if j < len(id_cols) else num_cols[j - len(id_cols)][1])
            for j, p in enumerate(parts)]


def _load_topn(rf, n_users, user_arr, user_index, item_arr, item_index, user_dtype):
    path = rf.path / "topn.parquet"
    pf = pq.ParquetFile(path, read_dictionary=["user_id", "item_id"])
    lo = hi = None
    for batch in pf.iter_batches(batch_size=1 << 22, columns=["rank"]):
        r = batch.column(0).to_numpy(zero_copy_only=False)
        if r.size:
            lo = int(r.min()) if lo is None else min(lo, int(r.min()))
            hi = int(r.max()) if hi is None else max(hi, int(r.max()))
    base = lo or 0
    width = int(min(MAX_TOPN, (hi - base + 1))) if hi is not None else 1
    topn_ids = np.full((n_users, width), -1, np.int32)
    topn_scores = np.full((n_users, width), -np.inf, user_dtype)
    cols = ["user_id", "item_id", "rank"] + (["score"] if "score" in pf.schema_arrow.names else [])
    for batch in pf.iter_batches(batch_size=1 << 20, columns=cols):
        t = pa.Table.from_batches([batch])
        u = _lookup(t.column("user_id"), user_arr, user_index)
        i = _lookup(t.column("item_id"), item_arr, item_index)
        pos = _num(t, "rank", np.float64, 0.0).astype(np.int64) - base
        sc = _num(t, "score", np.float32, 0.0)
        ok = (u >= 0) & (i >= 0) & (pos >= 0) & (pos < width)
        topn_ids[u[ok], pos[ok]] = i[ok]
        topn_scores[u[ok], pos[ok]] = sc[ok]
    return topn_ids, topn_scores


class CompactIds:
    """Read-only sequence of ids (position -> str) over one numpy bytes array, sorted view for lookups."""

    __slots__ = ("by_pos", "order", "sorted")

    def __init__(self, by_pos: np.ndarray, order: np.ndarray, sorted_: np.ndarray):
        self.by_pos, self.order, self.sorted = by_pos, order, sorted_

    @staticmethod
    def build(arr: pa.Array, max_width: int = 64) -> "CompactIds | None":
        b = pc.cast(arr, pa.binary()).to_numpy(zero_copy_only=False)
        if b.size == 0:
            return None
        width = max(len(x) for x in b[: min(b.size, 1000)]) if b.size else 0
        width = max(width, int(pc.max(pc.binary_length(pc.cast(arr, pa.binary()))).as_py() or 0))
        if width > max_width or any(x.endswith(b"\x00") for x in b[:1000]):
            return None  # long or NUL-terminated ids: keep the dict
        by_pos = np.array(b, dtype=f"S{max(width, 1)}")
        order = np.argsort(by_pos, kind="stable").astype(np.int32)
        return CompactIds(by_pos, order, by_pos[order])

    def __len__(self) -> int:
        return self.by_pos.shape[0]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [x.decode() for x in self.by_pos[i]]
        return self.by_pos[i].decode()

    def __iter__(self):
        return (x.decode() for x in self.by_pos)

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class CompactIndex:
    """Mapping id -> position over ``CompactIds`` (binary search; ``get`` like a dict)."""

    __slots__ = ("ids",)

    def __init__(self, ids: CompactIds):
        self.ids = ids

    def get(self, key, default=-1):
        if not isinstance(key, str):
            return default
        kb = key.encode()
        if len(kb) > self.ids.sorted.dtype.itemsize or not kb or kb.endswith(b"\x00"):
            return default
        s = self.ids.sorted
        p = int(np.searchsorted(s, kb))
        if p < s.shape[0] and s[p] == kb:
            return int(self.ids.order[p])
        return default

    def get_many(self, keys: list) -> np.ndarray:
        """``[get(k) for k in keys]`` as int64 (-1 when absent), with one binary search."""
        s = self.ids.sorted
        w = s.dtype.itemsize
        out = np.full(len(keys), -1, np.int64)
        if not keys or s.shape[0] == 0:
            return out
        enc = [k.encode() if isinstance(k, str) else b"" for k in keys]
        ok = np.fromiter((0 < len(b) <= w and not b.endswith(b"\x00") for b in enc), bool, len(enc))
        kb = np.array([b if o else b"" for b, o in zip(enc, ok.tolist())], dtype=s.dtype)
        p = np.minimum(np.searchsorted(s, kb), s.shape[0] - 1)
        hit = ok & (s[p] == kb)
        out[hit] = self.ids.order[p[hit]]
        return out

    def __getitem__(self, key) -> int:
        v = self.get(key, None)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key) -> bool:
        return self.get(key, None) is not None

    def __len__(self) -> int:
        return len(self.ids)
