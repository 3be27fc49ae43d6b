"""The Litestar app: thin JSON handlers over one in-process ``Recommender``.

``create_app(home=...)`` (or ``create_app(recommender=...)``) builds the app; the recommender
lives in ``app.state.recommender`` and its watcher thread is started and stopped with the
app's lifespan. Reading recommendations needs no credentials; the one state-changing
endpoint (``POST /v1/admin/reload``) needs ``RECS_ADMIN_TOKEN`` (or ``admin_token=``) and is
absent (404) when no token is configured.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Annotated, Any

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_503_SERVICE_UNAVAILABLE
from pydantic import ValidationError

from . import release as release_format
from .metrics import Metrics, MetricsMiddleware
from .recommender import NotReady, Recommender, UnknownItem
from .schemas import (
    MAX_K,
    BatchRecommendRequest,
    BatchRecommendResponse,
    CartAddonsRequest,
    CustomersResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadResponse,
)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a full request (200 recent events, 1000 users) fits easily
ADMIN_TOKEN_ENV = "RECS_ADMIN_TOKEN"

KQuery = Annotated[int, QueryParameter(ge=1, le=MAX_K, description=f"number of results, 1..{MAX_K}")]


def _rec(request: Request) -> Recommender:
    return request.app.state.recommender


@post("/v1/recommend", sync_to_thread=False, status_code=200, summary="Recommendations for a user (known, anonymous with recent events, or cold)")
def recommend(request: Request, data: JSONBody[RecommendRequest]) -> RecommendResponse:
    return _rec(request).recommend(data, as_dict=True)  # type: ignore[return-value]


@get("/v1/items/{item_id:str}/similar", sync_to_thread=False, summary="Items similar to an item (item page)")
def similar(request: Request, item_id: FromPath[str], k: KQuery = 20, brand: FromQuery[str | None] = None) -> RecommendResponse:
    return _rec(request).similar_items(item_id, k, brand=brand, as_dict=True)  # type: ignore[return-value]


@post("/v1/cart/addons", sync_to_thread=False, status_code=200, summary="Add-ons for a cart (bought-together rules and co-visitation)")
def cart_addons(request: Request, data: JSONBody[CartAddonsRequest]) -> RecommendResponse:
    return _rec(request).cart_addons(data, as_dict=True)  # type: ignore[return-value]


@get("/v1/items/{item_id:str}/customers", sync_to_thread=True, summary="Customers most likely to want an item (targeting)")
def customers(request: Request, item_id: FromPath[str], k: KQuery = 20) -> CustomersResponse:
    return _rec(request).top_customers(item_id, k)


@post("/v1/recommend/batch", sync_to_thread=False, status_code=200, summary="Recommendations for many users at once")
def recommend_batch(request: Request, data: JSONBody[BatchRecommendRequest]) -> BatchRecommendResponse:
    return _rec(request).recommend_batch(data, wire=True)  # type: ignore[return-value]


@get("/v1/release", sync_to_thread=False, summary="Manifest of the release being served")
def release_info(request: Request) -> dict[str, Any]:
    rel = _rec(request).release
    return {"artifact_version": rel.version, "path": str(rel.path), "summary": rel.summary(), "manifest": rel.manifest}


@get("/healthz", sync_to_thread=False, summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False, summary="Readiness: a release is loaded")
def readyz(request: Request) -> Response[dict[str, Any]]:
    rec = _rec(request)
    if rec.ready:
        return Response({"status": "ready", "artifact_version": rec.version})
    return Response({"status": "not ready", "artifact_version": None}, status_code=HTTP_503_SERVICE_UNAVAILABLE)


@get("/metrics", sync_to_thread=False, media_type="text/plain; version=0.0.4", summary="Prometheus metrics")
def metrics(request: Request) -> str:
    return request.app.state.metrics.render(_rec(request))


@post("/v1/admin/reload", sync_to_thread=True, summary="Load CURRENT now (needs the admin token)", status_code=200)
def admin_reload(request: Request) -> ReloadResponse:
    token = request.app.state.admin_token
    if not token:
        raise NotFoundException("admin endpoints are disabled (no admin token configured)")
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-admin-token", "")
    if not given:
        raise HTTPException(status_code=401, detail="admin token required (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(status_code=403, detail="invalid admin token")
    rec = _rec(request)
    before = rec.version
    try:
        changed = rec.reload()
    except release_format.ReleaseError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return ReloadResponse(reloaded=changed, artifact_version=rec.version, previous_version=before)


# ----------------------------------------------------------------------------- errors


def _pydantic_errors(exc: ValidationError) -> list[dict]:
    return [{"key": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"], "source": "body"} for e in exc.errors()]


def _on_validation(_: Request, exc: ValidationError) -> Response:
    return Response({"status_code": 400, "detail": "Validation failed", "extra": _pydantic_errors(exc)}, status_code=HTTP_400_BAD_REQUEST)


def _on_value_error(_: Request, exc: ValueError) -> Response:
    return Response({"status_code": 400, "detail": str(exc)}, status_code=HTTP_400_BAD_REQUEST)


def _on_not_ready(_: Request, exc: NotReady) -> Response:
    return Response({"status_code": 503, "detail": str(exc)}, status_code=HTTP_503_SERVICE_UNAVAILABLE)


def _on_unknown_item(_: Request, exc: UnknownItem) -> Response:
    return Response({"status_code": 404, "detail": str(exc), "extra": [{"key": "item_id", "message": str(exc), "source": "path"}]}, status_code=404)


def create_app(
    recommender: Recommender | None = None,
    *,
    home: Path | str | None = None,
    admin_token: str | None = None,
    poll_interval: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    debug: bool = False,
) -> Litestar:
    owns = recommender is None
    if recommender is None:
        recommender = Recommender(home, watch=False, poll_interval=poll_interval)
    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    m = Metrics()

    def _start(app: Litestar) -> None:
        recommender.start_watching()

    def _stop(app: Litestar) -> None:
        if owns:
            recommender.close()

    app = Litestar(
        route_handlers=[recommend, similar, cart_addons, customers, recommend_batch, release_info, healthz, readyz, metrics, admin_reload],
        on_startup=[_start],
        on_shutdown=[_stop],
        exception_handlers={
            ValidationError: _on_validation,
            NotReady: _on_not_ready,
            UnknownItem: _on_unknown_item,
        },
        openapi_config=OpenAPIConfig(
            title="recs serving API",
            version="1.0.0",
            description="Recommendations from the latest published release. Every response names its artifact_version.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/swagger"), ScalarRenderPlugin(path="/")],
        ),
        request_max_body_size=max_body_bytes,
        middleware=[DefineMiddleware(MetricsMiddleware, metrics=m)],
        debug=debug,
    )
    app.state.recommender = recommender
    app.state.metrics = m
    app.state.admin_token = token
    return app


__all__ = ["create_app", "MAX_BODY_BYTES", "ADMIN_TOKEN_ENV", "ValidationException"]
