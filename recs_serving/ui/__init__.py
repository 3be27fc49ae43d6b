"""Web pages for merchandisers, served by the API under ``/ui`` (Jinja templates + htmx).

Everything the pages load comes from this package (``static/``: htmx and the Swagger UI
bundle, copied from their npm packages), so they work with no network. Pages read the same
in-process ``Recommender`` as the JSON API and show its answers with ``explain``'s words.

    /ui                         search, and links to the pages below
    /ui/customers/{user_id}     history, recommendations (with a diversity control)
    /ui/items/{item_id}         the item, similar items, bought-together rules, customers to target (CSV)
    /ui/release                 the release, its evaluation, the difference from the previous one, rollback
"""
from __future__ import annotations

import csv
import hmac
import io
import math
from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from .. import details, explain, releases
from .. import release as release_format
from ..recommender import UnknownItem
from ..schemas import MAX_K, RecommendRequest

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
STATIC_URL = "/ui/static"


def template_config() -> TemplateConfig:
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine)


def swagger_plugin() -> SwaggerRenderPlugin:
    """Swagger UI from the vendored bundle (no CDN), at /schema/swagger and /schema/."""
    v = f"{STATIC_URL}/vendor"
    return SwaggerRenderPlugin(
        path=["/swagger", "/"], js_url=f"{v}/swagger-ui-bundle.js", css_url=f"{v}/swagger-ui.css",
        standalone_preset_js_url=f"{v}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{v}/favicon-32x32.png'>",
    )


def _rec(request: Request):
    return request.app.state.recommender


def _k(v: Any, default: int) -> int:
    try:
        return max(1, min(MAX_K, int(v)))
    except (TypeError, ValueError):
        return default


def _lam(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return min(1.0, max(0.0, f)) if math.isfinite(f) else default


def _page(name: str, request: Request, **ctx) -> Template:
    rec = _rec(request)
    return Template(template_name=name, context={"static": STATIC_URL, "version": rec.version, **ctx})


@get("/ui", sync_to_thread=False, include_in_schema=False)
def home(request: Request) -> Template:
    rel = _rec(request).release
    view = explain.catalog(rel)
    popular = [rel.item_ids[i] for i in list(getattr(rel, "pop_order", []))[:12]]
    users = [rel.user_ids[u] for u in range(min(8, rel.n_users))]
    return _page("home.html", request, popular=[{"item_id": i, **view.info(i)} for i in popular], users=users)


@get("/ui/search", sync_to_thread=True, include_in_schema=False)
def search(request: Request, q: str = "") -> Template | Redirect:
    """An exact customer or item id opens its page; otherwise items whose id or title contains q."""
    rel = _rec(request).release
    text = q.strip()
    partial = request.headers.get("hx-request") == "true"
    if not partial and text:
        if rel.user_index.get(text, -1) >= 0:
            return Redirect(f"/ui/customers/{text}")
        if text in rel.item_index:
            return Redirect(f"/ui/items/{text}")
    view = explain.catalog(rel)
    hits = [{"item_id": i, **view.info(i)} for i in view.search(text, 30)] if text else []
    customer = text if text and rel.user_index.get(text, -1) >= 0 else None
    return _page("search_results.html" if partial else "search.html", request, q=text, hits=hits, customer=customer)


def _recommendations(rec, user_id: str, k: int, lam: float) -> dict:
    body = rec.recommend(RecommendRequest(user_id=user_id, k=k, mmr_lambda=lam), as_dict=True)
    return explain.enrich_response(body, rec, anonymous=True, user_id=user_id)


@get("/ui/customers/{user_id:str}", sync_to_thread=True, include_in_schema=False)
def customer(request: Request, user_id: str, k: int = 10, mmr_lambda: float | None = None) -> Template:
    rec = _rec(request)
    rel = rec.release
    lam = _lam(mmr_lambda, getattr(rel, "mmr_lambda", 0.8))
    k = _k(k, 10)
    user = details.user_detail(rec, user_id)
    recs = _recommendations(rec, user_id, k, lam)
    return _page("customer.html", request, user=user, recs=recs, k=k, lam=lam)


@get("/ui/customers/{user_id:str}/recommendations", sync_to_thread=True, include_in_schema=False)
def customer_recs(request: Request, user_id: str, k: int = 10, mmr_lambda: float | None = None) -> Template:
    """The recommendations block alone (htmx swaps it in when the diversity control moves)."""
    rec = _rec(request)
    lam = _lam(mmr_lambda, getattr(rec.release, "mmr_lambda", 0.8))
    return _page("recs_block.html", request, recs=_recommendations(rec, user_id, _k(k, 10), lam), lam=lam, k=_k(k, 10))


@get("/ui/items/{item_id:str}", sync_to_thread=True, include_in_schema=False)
def item(request: Request, item_id: str) -> Template:
    rec = _rec(request)
    rel = rec.release
    try:
        info = details.item_detail(rec, item_id)
    except UnknownItem as exc:
        raise NotFoundException(str(exc)) from exc
    targets = explain.enrich_customers(rec.top_customers(item_id, 20), rec)
    blended = explain.enrich_response(rec.similar_items(item_id, 10, as_dict=True), rec, anonymous=True, seed=item_id)
    return _page("item.html", request, item=info, behaviour=details.neighbours(rel, item_id, "behaviour", 10),
                 content=details.neighbours(rel, item_id, "content", 10), rules=details.bought_together(rel, item_id, 15),
                 targets=targets, blended=blended)


@get("/ui/items/{item_id:str}/customers.csv", sync_to_thread=True, include_in_schema=False)
def item_customers_csv(request: Request, item_id: str, k: int = MAX_K) -> Response[str]:
    rec = _rec(request)
    try:
        body = explain.enrich_customers(rec.top_customers(item_id, _k(k, MAX_K)), rec)
    except UnknownItem as exc:
        raise NotFoundException(str(exc)) from exc
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "user_id", "score", "reason", "item_id", "title", "artifact_version"])
    for c in body["customers"]:
        w.writerow([c["rank"], c["user_id"], c["score"], c["explanation"], item_id, body.get("title"), body["artifact_version"]])
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in item_id)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="customers-{safe}.csv"'})


def _plot_rows(rows: list[dict]) -> tuple[str | None, list[dict]]:
    """The first recall-like metric of the evaluation, as bars (label, value, width in %)."""
    if not rows:
        return None, []
    if rows[0].get("use_case") is not None:  # one use case per plot: the first (homepage), every model
        rows = [r for r in rows if r.get("use_case") == rows[0]["use_case"]]
    names = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    metric = next((n for n in names if n.startswith("recall")), names[0] if names else None)
    if metric is None:
        return None, []
    vals = [(str(r.get("model", "?")), float(r.get(metric) or 0.0)) for r in rows]
    top = max((v for _, v in vals), default=0.0) or 1.0
    if rows[0].get("use_case") is not None:
        metric = f"{metric}, {rows[0]['use_case']}"
    return metric, [{"label": lab, "value": v, "width": round(100 * v / top, 1)} for lab, v in vals]


@get("/ui/release", sync_to_thread=True, include_in_schema=False)
def release_page(request: Request, message: str | None = None) -> Template:
    rec = _rec(request)
    rel = rec.release
    rows = releases.evaluation_rows(rel.manifest)
    held_out = [r for r in rows if r.get("split") == "test"]
    other_rows = len(rows) - len(held_out) if held_out else 0
    rows = held_out or rows  # the test split is the one to read; validation rows stay in recs.evaluation
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols and c != "cut"]
    metric, bars = _plot_rows(rows)
    try:
        d = releases.diff(rec.home, None, rel.version)
    except release_format.ReleaseError:
        d = {"from": None, "to": rel.version, "metrics": [], "top_items": []}
    view = explain.catalog(rel)
    for r in d["top_items"]:
        r["title"] = view.title(r["item_id"])
    return _page("release.html", request, rel=rel, manifest=rel.manifest, eval_rows=rows, eval_cols=cols, metric=metric,
                 bars=bars, other_rows=other_rows, diff=d, versions=releases.list_releases(rec.home),
                 admin=bool(request.app.state.admin_token), message=message)


@post("/ui/release/rollback", sync_to_thread=True, include_in_schema=False, status_code=303)
def rollback(request: Request, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]) -> Response:
    """Point CURRENT at an older release and load it now; needs the admin token."""
    token = request.app.state.admin_token
    if not token:
        raise NotFoundException("admin endpoints are disabled (no admin token configured)")
    given = str(data.get("token", ""))
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        return Response("invalid admin token", status_code=403, media_type="text/plain")
    rec = _rec(request)
    version = str(data.get("version", ""))
    try:
        before = releases.rollback(rec.home, version)
        rec.reload()
    except release_format.ReleaseError as exc:
        return Response(f"rollback failed: {exc}", status_code=409, media_type="text/plain")
    return Redirect(f"/ui/release?message=rolled+back+from+{before}+to+{version}", status_code=303)


def route_handlers() -> list:
    return [home, search, customer, customer_recs, item, item_customers_csv, release_page, rollback,
            create_static_files_router(path=STATIC_URL, directories=[STATIC], include_in_schema=False)]


__all__ = ["route_handlers", "template_config", "swagger_plugin", "STATIC", "TEMPLATES"]
