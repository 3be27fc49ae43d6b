"""The web pages and the Swagger page in headless Chromium (Playwright), with no network.

The API runs in a real uvicorn server on 127.0.0.1; the browser may reach only that origin
(every other request is aborted and recorded, and must not happen). Screenshots go to
var/test-artifacts/ui/. Skipped when Playwright or Chromium is missing (scripts/test.sh
installs Chromium).
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import pytest

from readable_fixtures import LiveServer, readable_home, readable_rec, readable_versions  # noqa: F401

pytestmark = pytest.mark.xdist_group("readable")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "var" / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("RECS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (scripts/test.sh installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(readable_rec):
    from recs_serving.app import create_app

    with LiveServer(create_app(readable_rec, admin_token="ui-token")) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    outside: list[str] = []

    def gate(route):
        url = route.request.url
        if url.startswith(server.url) or url.startswith("data:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    ctx.route("**/*", gate)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.base = server.url
    yield pg
    ctx.close()
    assert not outside, f"the page tried to reach the network: {outside[:5]}"
    assert not errors, f"JavaScript errors: {errors[:3]}"


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_customer_page_history_recommendations_and_diversity(page):
    page.goto(f"{page.base}/ui/customers/12347")
    assert page.locator("h1").inner_text() == "Customer 12347"
    hist = page.locator("#history tbody tr")
    assert hist.count() >= 10
    first = hist.nth(0).inner_text()
    assert re.search(r"20\d\d-\d\d-\d\d", first) and re.search(r"[A-Z]{3,} [A-Z]{3,}", first), first  # a date and a title
    cards = page.locator("#recs .rec")
    assert cards.count() == 10
    whys = [cards.nth(i).locator(".why").inner_text() for i in range(10)]
    assert all(w and ":" not in w for w in whys), whys  # words, not codes
    assert any(w.startswith("Often bought with ") or w.startswith("Picked for you") for w in whys), whys
    assert page.locator("#recs .rec img").count() >= 1  # the catalog has image_url for some items
    assert all(re.search(r"£\d+\.\d\d", cards.nth(i).inner_text()) for i in range(10))
    before = [cards.nth(i).get_attribute("data-item") for i in range(10)]
    shot(page, "customer-12347")
    page.locator("#mmr").fill("0.1")  # the diversity control: htmx swaps the block in
    page.wait_for_function("document.querySelector('#recs').innerText.includes('λ = 0.1')", timeout=10_000)
    after = [page.locator("#recs .rec").nth(i).get_attribute("data-item") for i in range(page.locator("#recs .rec").count())]
    assert len(after) == 10 and after != before
    shot(page, "customer-12347-diverse")


def test_item_page_neighbours_rules_targets_and_csv(page):
    page.goto(f"{page.base}/ui/items/85123A")
    assert page.locator("h1").inner_text() == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert page.locator("#similar-behaviour tbody tr").count() == 10
    assert page.locator("#similar-content tbody tr").count() == 10
    rules = page.locator("#rules tbody tr")
    assert rules.count() >= 3 and re.search(r"\d+%\s+\d+\.\d", rules.nth(0).inner_text())  # confidence and lift
    assert "Often bought with WHITE HANGING HEART T-LIGHT HOLDER" in page.locator("#page-recs").inner_text()
    targets = page.locator("#targets tbody tr")
    assert targets.count() == 20 and "whose buyers also buy this" in targets.nth(0).inner_text()
    shot(page, "item-85123A")
    with page.expect_download() as dl:
        page.click("#csv")
    rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text())))
    assert rows[0][:3] == ["rank", "user_id", "score"] and len(rows) == 101
    assert all(r[5] == "WHITE HANGING HEART T-LIGHT HOLDER" for r in rows[1:])


def test_search_box_on_every_page(page):
    for path in ("/ui", "/ui/items/85123A", "/ui/release"):
        page.goto(page.base + path)
        assert page.locator("header input[type=search]").count() == 1
    page.fill("header input[type=search]", "12347")
    page.press("header input[type=search]", "Enter")
    page.wait_for_url("**/ui/customers/12347")
    page.fill("header input[type=search]", "t-light holder")
    page.press("header input[type=search]", "Enter")
    page.wait_for_url("**/ui/search?q=*")
    assert "WHITE HANGING HEART T-LIGHT HOLDER" in page.locator("#results").inner_text()
    page.fill("main input[type=search]", "cake stand")  # live results through htmx
    page.wait_for_function("document.querySelector('#results').innerText.includes('CAKESTAND') || "
                           "document.querySelector('#results').innerText.includes('CAKE STAND')", timeout=10_000)
    shot(page, "search")


def test_swagger_renders_offline_with_examples(page):
    page.goto(f"{page.base}/schema/swagger")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "recs serving API" in page.locator(".swagger-ui .info .title").inner_text()
    for tag in ("recommendations", "items", "customers", "operations"):
        assert page.locator(f"#operations-tag-{tag}").count() == 1, tag
    page.click("#operations-recommendations-V1RecommendRecommend .opblock-summary")
    page.click("#operations-recommendations-V1RecommendRecommend .try-out__btn")
    body = page.locator("#operations-recommendations-V1RecommendRecommend textarea.body-param__text").input_value()
    assert "12347" in body and "additionalProp" not in body
    page.click("#operations-recommendations-V1RecommendRecommend .execute")
    op = "#operations-recommendations-V1RecommendRecommend"
    page.wait_for_selector(f"{op} .live-responses-table tbody .response-col_status", timeout=10_000)
    assert page.locator(f"{op} .live-responses-table tbody .response-col_status").first.inner_text().strip().startswith("200")
    assert "Often bought with" in page.locator(f"{op} .live-responses-table tbody .response-col_description").first.inner_text()
    shot(page, "swagger")


def test_release_page_diff_and_rollback(page, readable_rec, readable_home, readable_versions):
    from recs_serving import releases

    prev, cur = readable_versions
    page.goto(f"{page.base}/ui/release")
    assert cur in page.locator("h1").inner_text()
    assert page.locator("#evaluation tbody tr").count() == 3
    assert page.locator("#eval-plot rect").count() == 3
    deltas = page.locator("#metric-deltas").inner_text()
    assert "served blend" in deltas and "+0.0113" in deltas  # 0.113 now, 0.9 x 0.113 before
    assert page.locator("#top-changes tbody tr").count() == 10
    shot(page, "release")
    try:
        page.select_option("#rollback select[name=version]", prev)
        page.fill("#rollback input[name=token]", "wrong")
        page.click("#rollback button")
        assert "invalid admin token" in page.content()
        page.goto(f"{page.base}/ui/release")
        page.select_option("#rollback select[name=version]", prev)
        page.fill("#rollback input[name=token]", "ui-token")
        page.click("#rollback button")
        page.wait_for_url("**/ui/release?message=*")
        assert prev in page.locator("h1").inner_text() and "rolled back" in page.locator(".notice").inner_text()
        assert readable_rec.version == prev
        shot(page, "release-rolled-back")
    finally:
        releases.rollback(readable_home, cur)
        readable_rec.reload()
    assert readable_rec.version == cur
