"""The run pages and the ops overview in a real browser (Debian's chromium via Playwright).

Screenshots go to docs/screenshots/ (runs-list.png, run-page.png, run-page-graph.png, ops.png,
run-page-fork.png, run-page-long.png, run-page-long-head.png).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from tests.browser import SHOTS, log_in, shot
from tests.operators.conftest import People
from tests.operators.scenes import history, pool_pressure, settle, showcase, spread
from tests.support import Bell
from workflows import start
from workflows.core.definitions import get_workflow
from workflows.models import Run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def scene(bell: Bell, people: People) -> dict[str, Run]:
    runs = showcase(bell)
    history()
    pool_pressure()
    return runs


def test_the_runs_list_and_a_run_page(
    viewport: Page, live_server: Any, scene: dict[str, Run]
) -> None:
    page = viewport
    log_in(page, live_server.url, "ops", "/runs/")
    expect(page.locator("h1")).to_have_text("Runs")
    expect(page.locator("#runs-rows tr").first).to_be_visible()
    page.locator("nav.filters a.chip", has_text="failed").click()
    expect(page.locator("#runs-rows .badge").first).to_have_text("failed")
    page.goto(f"{live_server.url}/runs/")
    shot(page, "runs-list.png", full_page=False)

    run = scene["succeeded"]
    page.click(f"a[href='/runs/{run.pk}/']")
    expect(page.locator(".run-title h1")).to_contain_text("docs.analyze")
    branches = page.locator(".tl-branches").first.locator(".tl-branch")
    expect(branches).to_have_count(5)
    # Branches sit side by side: the first two share a row.
    first, second = branches.nth(0).bounding_box(), branches.nth(1).bounding_box()
    assert first and second and abs(first["y"] - second["y"]) < 2 and second["x"] > first["x"]
    expect(page.locator(".chip-retry").first).to_contain_text("2/3")
    expect(page.locator(".tl-wait .tl-note, .tl-wait .tl-duration").first).to_be_visible()
    summary = page.locator("table.journal details summary").nth(1)
    summary.click()
    expect(page.locator("table.journal details[open] pre").first).to_be_visible()
    summary.click()
    page.evaluate("document.querySelectorAll('.table-scroll').forEach(e => e.scrollLeft = 0)")
    shot(page, "run-page.png")


def test_a_run_page_with_the_pipelines_graph(
    viewport: Page, live_server: Any, bell: Bell, people: People
) -> None:
    """A built-in pipeline (a state machine with parallel analyses and a review gate) shows
    its graph, drawn by the pipelines app's vendored mermaid, beside the timeline."""
    from datetime import timedelta

    sample = get_workflow("thread_analysis").extra["sample_input"]
    run = start("thread_analysis", sample, tenant="acme", created_by="user:maria")
    settle(bell)
    spread(run, timezone.now() - timedelta(minutes=2), scale=2.5)
    page = viewport
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    expect(page.locator(".callout-wait")).to_contain_text("Waiting for review")
    expect(page.locator(".graph-card svg").first).to_be_visible()
    expect(page.locator(".tl-branches").first.locator(".tl-branch")).to_have_count(3)
    shot(page, "run-page-graph.png")


def test_a_waiting_run_updates_live_and_staff_can_cancel_it(
    viewport: Page, live_server: Any, scene: dict[str, Run]
) -> None:
    page = viewport
    run = scene["waiting"]
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    expect(page.locator(".run-title .badge")).to_have_text("suspended")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("text=Cancel run")
    expect(page.locator(".run-title .badge")).to_have_text("canceled")
    expect(page.locator(".flash")).to_contain_text("canceled")


def test_staff_fork_a_run_from_its_page(
    viewport: Page, live_server: Any, scene: dict[str, Run]
) -> None:
    page = viewport
    run = scene["succeeded"]
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    form = page.locator("form.fork-form")
    expect(form).to_be_visible()
    form.locator("select").select_option("2")
    form.locator("input.reason").fill("try the new prompt")
    page.on("dialog", lambda dialog: dialog.accept())
    form.locator("button", has_text="Fork").click()
    page.wait_for_url(f"{live_server.url}/runs/*/")
    assert str(run.pk) not in page.url
    expect(page.locator(".flash")).to_contain_text("forked from step 2")
    expect(page.locator(".run-ids")).to_contain_text("forked from")
    expect(page.locator(".run-ids")).to_contain_text("at step 2")
    shot(page, "run-page-fork.png", full_page=False)
    page.locator(".run-ids a", has_text=str(run.pk)[:8]).click()
    expect(page.locator(".audit")).to_contain_text("fork from step 2")
    expect(page.locator(".audit")).to_contain_text("try the new prompt")


def test_the_ops_overview(viewport: Page, live_server: Any, scene: dict[str, Run]) -> None:
    page = viewport
    log_in(page, live_server.url, "ops", "/ops/")
    expect(page.locator("h1")).to_have_text("Ops overview")
    expect(page.locator("svg.chart")).to_have_count(4)
    expect(page.locator(".tile", has_text="Open gates")).to_contain_text("1")
    expect(page.locator("table.pools")).to_contain_text("llm")
    shot(page, "ops.png")


def test_a_run_of_thousands_of_steps(viewport: Page, live_server: Any, people: People) -> None:
    """The timeline draws the first and the latest positions with the gap between them, and
    the restart and fork pickers are number fields (run-page-long.png)."""
    from tests.operators.test_large_runs import _long_run

    page = viewport
    run = _long_run(3_000, status="failed")
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    gap = page.locator(".tl-gap")
    expect(gap).to_contain_text("2800 more steps not drawn")
    expect(page.locator("#from-step")).to_have_attribute("type", "number")
    expect(page.locator("#fork-step")).to_have_value("3000")
    # nothing of the head overflows the page sideways
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.evaluate("document.querySelector('.tl-gap').scrollIntoView({block: 'center'})")
    page.screenshot(path=str(SHOTS / "run-page-long.png"))
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "run-page-long-head.png", full_page=False)
