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

from litestar import Litestar, Request, Response, get, head, post
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.plugins.pydantic import PydanticPlugin
from litestar.middleware import DefineMiddleware
from litestar.params import FromQuery, QueryParameter
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_503_SERVICE_UNAVAILABLE
from pydantic import ValidationError

from . import release as release_format
from . import ui
from . import details, explain
from .fast_routes import FastRoutes
from .guards import RequestIdMiddleware, StrictJSONRequest, on_server_error
from .metrics import Metrics, MetricsMiddleware
from .recommender import NotReady, Recommender, UnknownItem
from .schemas import (
    MAX_K,
    BatchRecommendRequest,
    CartAddonsRequest,
    RecommendRequest,
    ReloadResponse,
    ExplainedBatchResponse,
    ExplainedCustomersResponse,
    ExplainedResponse,
    ItemDetail,
    UserDetail,
)
from litestar.openapi.spec import Example
from .api_docs import BatchBody, CartBody, ItemPath, RecommendBody, UserPath, TAGS, cors_config

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a full request (200 recent events, 1000 users) fits easily
ADMIN_TOKEN_ENV = "RECS_ADMIN_TOKEN"

KQuery = Annotated[int, QueryParameter(ge=1, le=MAX_K, description=f"number of results, 1..{MAX_K}", examples=[Example(value=5)])]


def _rec(request: Request) -> Recommender:
    return request.app.state.recommender


# The answers of the hot routes, shared by the Litestar handlers and ``fast_routes``: items as pre-encoded JSON
# (``explain.enrich_items_wire``), which both encode to the bytes of the plain dicts.


def recommend_answer(rec: Recommender, data: RecommendRequest) -> dict:
    seed = max(data.recent, key=lambda r: r.timestamp).item_id if data.recent else None
    return explain.enrich_response(rec.recommend(data, as_dict=True), rec, anonymous=True, seed=seed, user_id=data.user_id,
                                   wire=True)


def similar_answer(rec: Recommender, item_id: str, k: int, brand: str | None) -> dict:
    return explain.enrich_response(rec.similar_items(item_id, k, brand=brand, as_dict=True), rec, anonymous=True, seed=item_id,
                                   wire=True)


def cart_answer(rec: Recommender, data: CartAddonsRequest) -> dict:
    anonymous = data.user_id is None or data.user_id not in rec.release.user_index
    return explain.enrich_response(rec.cart_addons(data, as_dict=True), rec, anonymous=anonymous, seed=data.item_ids[0],
                                   user_id=data.user_id, wire=True)


def customers_answer(rec: Recommender, item_id: str, k: int, _brand: None = None) -> dict:
    return explain.enrich_customers(rec.top_customers(item_id, k), rec)


def batch_answer(rec: Recommender, data: BatchRecommendRequest) -> dict:
    return explain.enrich_batch(rec.recommend_batch(data, as_dict=True), rec, wire=True)


@post("/v1/recommend", sync_to_thread=False, status_code=200, tags=["recommendations"], summary="Recommendations for a user (known, anonymous with recent events, or cold)")
def recommend(request: Request, data: RecommendBody) -> ExplainedResponse:
    return recommend_answer(_rec(request), data)  # type: ignore[return-value]


@get("/v1/items/{item_id:str}/similar", sync_to_thread=False, tags=["items"], summary="Items similar to an item (item page)")
def similar(request: Request, item_id: ItemPath, k: KQuery = 20, brand: FromQuery[str | None] = None) -> ExplainedResponse:
    return similar_answer(_rec(request), item_id, k, brand)  # type: ignore[return-value]


@get("/v1/items/{item_id:str}", sync_to_thread=True, tags=["items"], summary="One item: attributes, popularity, bought-together rules")
def item_info(request: Request, item_id: ItemPath) -> ItemDetail:
    return details.item_detail(_rec(request), item_id)  # type: ignore[return-value]


@get("/v1/users/{user_id:str}", sync_to_thread=True, tags=["customers"], summary="One customer: history with titles, dates and quantities")
def user_info(request: Request, user_id: UserPath) -> UserDetail:
    return details.user_detail(_rec(request), user_id)  # type: ignore[return-value]


@post("/v1/cart/addons", sync_to_thread=False, status_code=200, tags=["recommendations"], summary="Add-ons for a cart (bought-together rules and co-visitation)")
def cart_addons(request: Request, data: CartBody) -> ExplainedResponse:
    return cart_answer(_rec(request), data)  # type: ignore[return-value]


# in the loop, not a thread: bounded CPU work (well under a ms) that the GIL serialises anyway; the
# thread hop cost more than the call
@get("/v1/items/{item_id:str}/customers", sync_to_thread=False, tags=["customers"], summary="Customers most likely to want an item (targeting)")
def customers(request: Request, item_id: ItemPath, k: KQuery = 20) -> ExplainedCustomersResponse:
    return customers_answer(_rec(request), item_id, k)  # type: ignore[return-value]


@post("/v1/recommend/batch", sync_to_thread=False, status_code=200, tags=["recommendations"], summary="Recommendations for many users at once")
def recommend_batch(request: Request, data: BatchBody) -> ExplainedBatchResponse:
    return batch_answer(_rec(request), data)  # type: ignore[return-value]


@get("/v1/release", sync_to_thread=False, tags=["operations"], summary="Manifest of the release being served")
def release_info(request: Request) -> dict[str, Any]:
    rel = _rec(request).release
    return {"artifact_version": rel.version, "path": str(rel.path), "summary": rel.summary(), "manifest": rel.manifest}


@get("/healthz", sync_to_thread=False, tags=["operations"], summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@head("/healthz", sync_to_thread=False, tags=["operations"], summary="Liveness (no body)")
def healthz_head() -> None:
    return None


@get("/readyz", sync_to_thread=False, tags=["operations"], summary="Readiness: a release is loaded",
     description="200 when a release is served, else 503. Names the served release and the last release that was "
                 "refused (checksum, missing array, non-finite factors, unreadable table...) with the reason; a refused "
                 "release is tried again only once its files change on disk.",
     responses={503: ResponseSpec(dict, description="no release loaded yet", generate_examples=False)})
def readyz(request: Request) -> Response[dict[str, Any]]:
    rec = _rec(request)
    body = {"status": "ready" if rec.ready else "not ready", **rec.lifecycle_status()}
    return Response(body, status_code=200 if rec.ready else HTTP_503_SERVICE_UNAVAILABLE)


@head("/readyz", sync_to_thread=False, tags=["operations"], summary="Readiness (no body): 200 or 503")
def readyz_head(request: Request) -> Response[None]:
    return Response(None, status_code=200 if _rec(request).ready else HTTP_503_SERVICE_UNAVAILABLE)


@get("/metrics", sync_to_thread=False, media_type="text/plain; version=0.0.4", tags=["operations"], summary="Prometheus metrics")
def metrics(request: Request) -> str:
    return request.app.state.metrics.render(_rec(request))


@post("/v1/admin/reload", sync_to_thread=True, tags=["admin"], summary="Load CURRENT now (needs the admin token)", status_code=200)
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
    except release_format.ReleaseError as exc:  # refused: verification or loading failed; the old release keeps serving
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    finally:
        rec.signal_reload()  # the other workers (--workers N) reload too
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


def _document_limits(app: Litestar) -> None:
    """What the generated OpenAPI document leaves out: ``additionalProperties: false`` on every
    request model (they all forbid unknown fields), the 404 of the routes keyed by an id, and
    the 408/413 every body-carrying route can answer. Applied once, to the cached document."""
    from litestar._openapi.plugin import OpenAPIPlugin
    from litestar.openapi.spec import OpenAPIResponse

    from . import schemas as schema_module

    spec = app.plugins.get(OpenAPIPlugin).provide_openapi()
    for name, schema in ((spec.components.schemas if spec.components else None) or {}).items():
        model = getattr(schema_module, name, None)
        config = getattr(model, "model_config", None) or getattr(model, "__pydantic_config__", None) or {}
        if config.get("extra") == "forbid" and hasattr(schema, "additional_properties"):
            schema.additional_properties = False
    for path, item in (spec.paths or {}).items():
        for op in (item.get, item.post, item.head):
            if op is None:
                continue
            responses = op.responses if op.responses is not None else {}
            if "{item_id}" in path or "{user_id}" in path:
                responses.setdefault("404", OpenAPIResponse(description="unknown item_id / user_id (named in `extra`)"))
            if op is item.post:
                responses.setdefault("413", OpenAPIResponse(description=f"request body larger than {MAX_BODY_BYTES} bytes"))
                responses.setdefault("408", OpenAPIResponse(description="request headers/body not received within the read timeout"))
            op.responses = responses


def _fast_routes(app: Litestar, m: Metrics, max_body_bytes: int) -> FastRoutes:
    """The hot routes in front of Litestar's router (see ``fast_routes``), labelled in the metrics
    as the Litestar routes are."""
    def label(handler) -> str:
        return sorted(handler.paths)[0]

    return FastRoutes(
        app.asgi_handler, app,
        posts={"/v1/recommend": (RecommendRequest, recommend_answer, label(recommend)),
               "/v1/cart/addons": (CartAddonsRequest, cart_answer, label(cart_addons)),
               "/v1/recommend/batch": (BatchRecommendRequest, batch_answer, label(recommend_batch))},
        gets={"similar": (similar_answer, label(similar), True), "customers": (customers_answer, label(customers), False)},
        max_body=max_body_bytes, cors=app.cors_config is not None, metrics=m)


def create_app(
    recommender: Recommender | None = None,
    *,
    home: Path | str | None = None,
    admin_token: str | None = None,
    poll_interval: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    debug: bool = False,
    cors_origins: str | list[str] | None = None,
    owns_recommender: bool | None = None,
) -> Litestar:
    owns = recommender is None if owns_recommender is None else owns_recommender
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
        route_handlers=[recommend, similar, item_info, user_info, cart_addons, customers, recommend_batch, release_info, healthz, readyz,
                        healthz_head, readyz_head,
                        metrics, admin_reload, *ui.route_handlers()],
        on_startup=[_start],
        on_shutdown=[_stop],
        exception_handlers={
            ValidationError: _on_validation,
            NotReady: _on_not_ready,
            UnknownItem: _on_unknown_item,
            500: on_server_error,
        },
        request_class=StrictJSONRequest,
        plugins=[PydanticPlugin(validate_strict=True)],
        openapi_config=OpenAPIConfig(
            title="recs serving API",
            version="1.0.0",
            description="Recommendations from the latest published release. Every response names its artifact_version.",
            path="/schema",
            render_plugins=[ui.swagger_plugin()],
            tags=TAGS,
        ),
        template_config=ui.template_config(),
        cors_config=cors_config(cors_origins),
        request_max_body_size=max_body_bytes,
        middleware=[RequestIdMiddleware, DefineMiddleware(MetricsMiddleware, metrics=m)],
        debug=debug,
    )
    _document_limits(app)
    app.asgi_handler = _fast_routes(app, m, max_body_bytes)
    app.state.recommender = recommender
    app.state.metrics = m
    app.state.admin_token = token
    return app


__all__ = ["create_app", "MAX_BODY_BYTES", "ADMIN_TOKEN_ENV", "ValidationException"]
