"""The reviewer pages in a real browser (Debian's chromium through Playwright).

The end-to-end tests run real Celery workers and beat against the test database: a reviewer
logs in, sees a gate appear live, claims it, corrects a field, approves, and the run continues;
a gate whose deadline passes leaves the open queue by itself and its run continues with the
default. Screenshots of the pages go to docs/screenshots/.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from reviews.models import Gate
from reviews.services import claim_gate, decide_gate
from tests.browser import log_in, shot
from tests.live import wait_until
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import get_run, start
from workflows.models import Run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODULES = "tests.sample_workflows,tests.reviews.workflows"


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1


def open_gate_of(run: Run) -> Gate:
    return wait_until(
        lambda: Gate.objects.filter(run=run, status="open").first(),
        30,
        message=f"a gate of {run.workflow}",
    )


def finished(run: Run) -> Run | None:
    fresh = get_run(run.pk)
    return fresh if fresh.is_terminal else None


@pytest.mark.integration
def test_it_reviews_a_gate_that_appears_live(
    live: Any, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    live.worker(SLUICE_WORKFLOW_MODULES=MODULES)
    background = [
        start(
            "contracts.clause_check", {"title": "Verify the indemnity clause", "timeout_s": 2400}
        ),
        start("news.daily_digest", {}),
        start("contracts.clause_check", {}),
        start(
            "contracts.clause_check",
            {"title": "Check the termination terms", "timeout_s": 9 * 3600},
        ),
    ]
    gates = [open_gate_of(r) for r in background]
    claim_gate(gates[2].pk, people.ben)

    log_in(page, live_server.url, "ana")
    expect(page.locator("#queue .rv-row")).to_have_count(4)

    run = start("support.ticket_triage", {"timeout_s": 50 * 60})
    row = page.locator("#queue .rv-row", has_text="Confirm the triage of ticket #48213")
    expect(row).to_be_visible()  # appeared without a reload
    expect(page.locator("#queue .rv-row")).to_have_count(5)
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator("#queue .rv-row.selected")).to_have_count(1)
    page.mouse.move(0, 0)
    page.wait_for_timeout(2500)  # let the "new row" highlight fade for the screenshot
    shot(page, "reviews-queue.png")

    row.locator("a.rv-title").click()
    page.wait_for_url("**/reviews/*/")
    expect(page.locator("[data-testid=analysis-card]")).to_have_count(2)
    expect(page.locator(".rv-big")).to_contain_text("m")
    shot(page, "reviews-gate.png")

    page.get_by_role("button", name="Claim").click()
    expect(page.get_by_test_id("claimed-by")).to_have_text("you")

    page.fill("#id_edit-priority", "9")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".rv-field-error")).to_contain_text("less than or equal to 4")
    shot(page, "reviews-gate-invalid.png")
    assert get_run(run.pk).status == "suspended"

    page.fill("#id_edit-priority", "1")
    page.select_option("#id_edit-category", "account")
    page.fill("#id_comment", "Account issue, not billing: the upgrade created a second account.")
    page.keyboard.press("Escape")  # leave the text box so the shortcut reaches the page
    page.keyboard.press("a")
    expect(page.locator(".flash-success")).to_contain_text("Approved")
    # Straight on to the most urgent remaining gate nobody else claimed.
    assert page.url.endswith(f"/reviews/{gates[0].pk}/")

    done = wait_until(lambda: finished(run), 30, message="the run to continue")
    assert done.status == "succeeded"
    assert done.output["outcome"] == "approve" and done.output["decided_by"] == "ana"
    assert done.output["edits"]["priority"] == 1
    assert done.output["edits"]["category"] == "account"

    page.goto(f"{live_server.url}/reviews/mine/")
    expect(page.locator("table")).to_contain_text("Confirm the triage")
    shot(page, "reviews-decisions.png")


@pytest.mark.integration
def test_a_gate_past_its_deadline_leaves_the_queue_and_the_run_continues(
    live: Any, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    live.worker(SLUICE_WORKFLOW_MODULES=MODULES)
    live.beat()
    log_in(page, live_server.url, "ana")
    run = start(
        "news.daily_digest",
        {"title": "Digest that nobody reviews", "timeout_s": 3600, "on_timeout": "reject"},
    )
    row = page.locator("#queue .rv-row", has_text="Digest that nobody reviews")
    # The worker starts and opens the gate; on a loaded machine that can take a while.
    expect(row).to_be_visible(timeout=30_000)
    gate = Gate.objects.get(run=run)
    # Nobody answers until the deadline: write it into the past rather than sleeping an hour.
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    expect(row).to_have_count(0, timeout=30_000)  # expired by the beat sweep, gone by itself
    done = wait_until(lambda: finished(run), 30, message="the run to continue")
    assert (done.status, done.output["outcome"], done.output["timed_out"]) == (
        "succeeded",
        "reject",
        True,
    )
    assert done.output["decided_by"] == ""
    page.goto(f"{live_server.url}/reviews/{gate.pk}/")
    expect(page.get_by_test_id("closed-banner")).to_contain_text("auto-advanced with reject")
    shot(page, "reviews-gate-expired.png")


def test_a_hostile_payload_is_inert_in_the_browser(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    payload = {
        "summary": "<script>window.pwned = 1; alert('summary')</script>",
        "analyses": [
            {
                "title": '<img src=x onerror="window.pwned = 2">',
                "finding": '<a href="javascript:window.pwned = 3">click me</a>',
                "confidence": 0.5,
                "evidence": [
                    {
                        "quote": "quoted evidence",
                        "source": "evil source",
                        "url": "javascript:window.pwned = 4",
                    },
                    {"quote": "second quote", "url": " JaVaScRiPt:window.pwned = 5"},
                ],
                "link": "javascript:window.pwned = 6",
            }
        ],
    }
    gate = open_gate(bell, payload=payload, title="<script>window.pwned = 7</script>")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, live_server.url, "ana")
    expect(page.locator("#queue")).to_contain_text("<script>window.pwned = 7</script>")
    page.goto(f"{live_server.url}/reviews/{gate.pk}/")
    expect(page.locator(".rv-lead")).to_contain_text("<script>window.pwned = 1;")
    expect(page.locator(".rv-card h3")).to_have_text('<img src=x onerror="window.pwned = 2">')
    assert page.locator("a[href^='javascript' i], a[href*='javascript:' i]").count() == 0
    assert page.locator(".rv-main img, .rv-main script").count() == 0
    url = page.url
    card = page.locator(".rv-card")
    card.locator(".rv-card-body").click()
    card.locator(".evidence", has_text="quoted evidence").click()
    card.get_by_text("evil source").click()
    card.get_by_text("second quote").click()
    page.locator("details.rv-raw summary").click()
    expect(page.get_by_test_id("raw-json")).to_contain_text("javascript:window.pwned = 4")
    assert page.url == url
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert dialogs == []
    shot(page, "reviews-escaping.png")


def test_the_keyboard_moves_through_the_queue_and_decides(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    first = open_gate(bell, title="First in line", timeout_s=600)
    second = open_gate(bell, title="Second in line", timeout_s=1200)
    log_in(page, live_server.url, "ana")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    expect(page.locator("#queue .rv-row.selected")).to_have_attribute("data-gate-id", str(first.pk))
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reviews/{first.pk}/")
    page.keyboard.press("r")
    page.wait_for_url(f"**/reviews/{second.pk}/")
    expect(page.locator(".flash-success")).to_contain_text("Rejected “\u2068First in line\u2069”")
    assert Gate.objects.get(pk=first.pk).outcome == "reject"
    # Someone else decides the open gate while it is on screen: the page says so by itself.
    decide_gate(second.pk, outcome="approve", actor="ben", user=people.ben)
    expect(page.get_by_test_id("closed-banner")).to_contain_text("Already decided by ben")
