"""The release contract from the configs the assets ran with (their recorded artifacts' meta).

``contract_from_configs`` is the one place a ``ReleaseContract`` is built from config objects;
the release asset calls ``contract_from_artifacts`` (the configs each asset recorded), the
evaluation calls ``contract_from_configs`` with the configs it fits with.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from recs_assets import modeling
from recs_kernels.sources import SOURCES
from recs_serving.release import SCHEMA_VERSION, USE_CASES, ReleaseContract


def _dump(cfg: Any) -> dict:
    if isinstance(cfg, BaseModel):
        return cfg.model_dump()
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"expected a config object or its dict, got {type(cfg).__name__}")


def contract_from_configs(*, matrix, als, bpr, covisitation, item_similarity, popularity, topn,
                          blends: dict | None = None) -> ReleaseContract:
    """Each argument: the dg.Config the asset ran with, or its ``model_dump()``.

    ``topn`` is the batch_topn config (``n``, ``blend``, ``request``): its blend and MMR lambda
    are the homepage's (the batch table is scored with them). ``blends``: the other use cases'
    ``{"weights", "mmr_lambda", "chosen"}`` as the evaluation chose them on validation; a use
    case it did not choose for is served with the configured blend. Values are taken, never
    defaulted: a config missing a field fails validation here, at publish time."""
    m = modeling.MatrixParams.model_validate(_dump(matrix))
    a = modeling.ALSParams.model_validate(_dump(als))
    t = _dump(topn)
    missing = [k for k in ("n", "blend", "request") if k not in t]
    if missing:
        raise ValueError(f"the batch_topn config lacks {missing}; re-materialize batch_topn with this code")
    blend = modeling.BlendParams.model_validate(_dump(t["blend"]))
    req = modeling.RequestParams.model_validate(_dump(t["request"]))
    configs = {"interaction_matrix": m.model_dump(), "als_factors": a.model_dump(), "bpr_factors": _dump(bpr),
               "covisitation": _dump(covisitation), "item_similarity": _dump(item_similarity),
               "popularity": _dump(popularity), "batch_topn": {**t, "blend": blend.model_dump(), "request": req.model_dump()}}
    chosen = dict(blends or {})
    home = chosen.get("homepage", {})
    per_use_case = {uc: dict(chosen[uc]) if uc in chosen else
                    {"weights": blend.weights(), "mmr_lambda": req.mmr_lambda, "chosen": "configured"} for uc in USE_CASES}
    same = home.get("weights") == blend.weights() and home.get("mmr_lambda") == req.mmr_lambda
    per_use_case["homepage"] = {"weights": blend.weights(), "mmr_lambda": req.mmr_lambda,
                                "chosen": home.get("chosen", "configured") if same else "configured"}
    return ReleaseContract(
        schema_version=SCHEMA_VERSION,
        sources=SOURCES,
        blends=per_use_case,
        als={"factors": a.factors, "regularization": a.regularization, "alpha": a.alpha},
        event_weights=m.event_weights(),
        decay_days=m.decay_days,
        recent_weight=req.recent_weight,
        content_dim=req.content_dim,
        candidates={"neighbours_per_seed": req.neighbours_per_seed, "max_seeds": req.max_seeds,
                    "history_cap": req.history_cap, "topn": int(t["n"]),
                    **{k: getattr(req, k) for k in ("als_scan_per_k", "als_scan_extra", "mmr_pool_per_k",
                                                    "mmr_pool_extra", "popular_per_k")}},
        configs=configs,
    )


def contract_from_artifacts(artifacts) -> ReleaseContract:
    """The contract of what the artifacts in ``artifacts`` (an ArtifactStore) were built with."""
    return contract_from_configs(
        matrix=artifacts.meta("interaction_matrix")["params"],
        als=_model_meta(artifacts.meta("als_factors")), bpr=_model_meta(artifacts.meta("bpr_factors")),
        covisitation=_model_meta(artifacts.meta("covisitation")),
        item_similarity=_model_meta(artifacts.meta("item_similarity")),
        popularity=artifacts.meta("popularity"), topn=artifacts.meta("topn_params"), blends=_tuned_blends(artifacts),
    )


def _tuned_blends(artifacts) -> dict:
    """The per-use-case blends the evaluation chose (artifact ``tuned_blend``), none before it ran."""
    try:
        meta = artifacts.meta("tuned_blend")
    except FileNotFoundError:
        return {}
    return meta.get("blends", {}) if meta.get("tuned") else {}


def _model_meta(meta: dict) -> dict:
    """An artifact's meta without what save_csr adds (its shape)."""
    return {k: v for k, v in meta.items() if k != "shape"}
