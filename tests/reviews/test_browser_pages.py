"""Hostile text, a gate closing under an open page, and the Content-Security-Policy, in a real
browser (Debian's chromium through Playwright). Issue 8, items 5 and 6, and the CSP check.

- Every page that shows outside text stays within the viewport when that text is a
  10,000-character word, a 3,000-character comment or a 200-character title, and a U+202E
  (right-to-left override) in a title is isolated from the text around it.
- A gate page left open while its gate expires switches wholly to the closed state, and a typed
  comment is shown back instead of being dropped.
- No page logs a CSP violation.

Screenshots: docs/screenshots/reviews-gate-long-words.png, reviews-gate-closed-live.png,
error-403.png, error-404.png.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import ConsoleMessage, Page, expect

from reviews.models import Gate
from reviews.services import decide_gate, expire_due_gates
from tests.browser import log_in, shot
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import get_run, start

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


WORD = "W" * 10_000  # one word, no break opportunity
COMMENT = "c" * 3_000
RLO = "\u202e"
TITLE = ("Check the attachment invoice-" + RLO + "gnp.exe then approve ").ljust(200, "x")
assert len(TITLE) == 200


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1


def superuser() -> User:
    return User.objects.create_superuser("root", password="pw-root-123")


def hostile_payload() -> dict[str, Any]:
    return {
        "summary": f"Lead {WORD} end",
        "document": WORD,
        "analyses": [
            {
                "title": WORD,
                "finding": f"{WORD} {RLO}gnp.exe after",
                "confidence": 0.5,
                "evidence": [{"quote": WORD, "source": WORD, "url": f"https://example.com/{WORD}"}],
                "link": f"https://example.com/{WORD}",
            }
        ],
    }


def overflow(page: Page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


def assert_fits(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("load")
    width, viewport_width = overflow(page)
    assert width <= viewport_width, f"{url} is {width} px wide in a {viewport_width} px viewport"


def isolated(page: Page, selector: str) -> bool:
    """The element holding the text is a bidi island: unicode-bidi isolate, or inside <bdi>."""
    return bool(
        page.locator(selector).first.evaluate(
            """el => {
              for (let e = el; e; e = e.parentElement) {
                if (e.tagName === 'BDI') return true;
                const ub = getComputedStyle(e).unicodeBidi;
                if (['isolate', 'isolate-override', 'plaintext'].includes(ub)) return true;
                if (e.tagName === 'MAIN') break;
              }
              return false;
            }"""
        )
    )


@pytest.mark.parametrize("width", [1360, 760, 390])
def test_hostile_text_stays_inside_the_viewport(
    bell: Bell, live_server: Any, viewport: Page, people: People, width: int
) -> None:
    page = viewport
    page.set_viewport_size({"width": width, "height": 900})
    gate = open_gate(bell, title=TITLE, payload=hostile_payload())
    decided = open_gate(bell, title=TITLE, payload=hostile_payload())
    decide_gate(decided.pk, outcome="approve", comment=COMMENT, actor="ana", user=people.ana)
    failed = start("test.refuse", {"reason": f"{WORD} {RLO}gnp.exe"})  # a 10,000-char error
    bell.drain()
    assert get_run(failed.pk).status == "failed"
    superuser()

    base = live_server.url
    log_in(page, base, "ana")
    reviewer_pages = {
        "queue": "/reviews/",
        "gate": f"/reviews/{gate.pk}/",
        "decided gate": f"/reviews/{decided.pk}/",
        "my decisions": "/reviews/mine/",
    }
    for url in reviewer_pages.values():
        assert_fits(page, base + url)

    # The queue clamps the title and keeps the whole of it on hover; the override is isolated.
    page.goto(f"{base}/reviews/")
    title = page.locator("#queue a.rv-title").first
    expect(title).to_have_attribute("title", TITLE)
    assert isolated(page, "#queue a.rv-title")
    box = title.bounding_box()
    assert box and box["height"] < 60  # two lines at most
    # The override itself is shown as a marker, so the file name reads as it was sent.
    expect(title.locator(".bidi-mark")).to_have_text("RLO")
    assert "gnp.exe" in title.inner_text() and RLO not in title.inner_text()
    page.goto(f"{base}/reviews/{gate.pk}/")
    expect(page.get_by_test_id("gate-title")).to_have_attribute("title", TITLE)
    assert isolated(page, "[data-testid=gate-title]")
    assert isolated(page, ".rv-card-body")
    if width == 1360:
        shot(page, "reviews-gate-long-words.png", full_page=False)

    page.context.clear_cookies()
    log_in(page, base, "root", "/admin/")
    staff_pages = {
        "run": f"/runs/{gate.run_id}/",
        "decided run": f"/runs/{decided.run_id}/",
        "failed run": f"/runs/{failed.pk}/",
        "runs": "/runs/",
        "pipelines": "/pipelines/",
        "ops": "/ops/",
        "admin gate": f"/admin/reviews/gate/{decided.pk}/change/",
        "admin run": f"/admin/workflows/run/{gate.run_id}/change/",
        "admin failed run": f"/admin/workflows/run/{failed.pk}/change/",
    }
    for url in staff_pages.values():
        assert_fits(page, base + url)
    page.goto(f"{base}/runs/{gate.run_id}/")
    banner = page.locator(".callout-wait strong").first
    expect(banner).to_have_attribute("title", TITLE)
    assert isolated(page, ".callout-wait strong")


def expire(gate: Gate) -> None:
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=5))
    expire_due_gates()


def test_an_open_gate_page_closes_wholly_when_the_gate_expires(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, title="Check the refund", on_timeout="reject")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    expect(page.get_by_test_id("gate-status")).to_have_text("Open")
    page.fill("#id_comment", "The refund matches the invoice.")
    expire(gate)
    # The page notices by itself (the poll), and every part of it agrees.
    expect(page.get_by_test_id("closed-banner")).to_contain_text("expired")
    expect(page.get_by_test_id("gate-status")).to_have_text("Expired")
    expect(page.locator(".rv-deadline-box")).to_have_count(0)
    assert "due now" not in page.locator("main").inner_text()
    expect(page.locator("#decision-panel button[name=outcome]")).to_have_count(0)
    expect(page.locator("#decision-panel").get_by_role("button", name="Claim")).to_have_count(0)
    expect(page.get_by_test_id("panel-status")).to_have_text("Expired")
    # The typed comment is handed back, read-only, with a note that it was not saved.
    unsent = page.get_by_test_id("unsent-comment")
    expect(unsent).to_be_visible()
    expect(unsent).to_contain_text("not saved")
    expect(unsent.locator("textarea")).to_have_value("The refund matches the invoice.")
    expect(page.get_by_test_id("closed-banner")).to_have_count(1)
    expect(page.locator(".rv-activity")).to_contain_text("auto-advanced")  # the audit trail too
    expect(page.locator(".rv-keyhelp")).to_have_count(0)
    shot(page, "reviews-gate-closed-live.png", full_page=False)


def test_approving_after_expiry_says_so_once_and_keeps_the_comment(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    # The page must not notice the expiry before the click: no poll, and no push (the push
    # stream announces the expiry within milliseconds and closes the panel first).
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    gate = open_gate(bell, title="Check the refund", on_timeout="reject")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_comment", "Approved after a call with the customer.")
    expire(gate)
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_test_id("closed-banner")).to_contain_text("expired")
    expect(page.get_by_test_id("closed-banner")).to_have_count(1)
    expect(page.locator(".flash-error")).to_have_count(0)  # the error is said once, not twice
    assert page.locator("main").inner_text().count("expired at") == 1
    expect(page.get_by_test_id("gate-status")).to_have_text("Expired")
    expect(page.locator("#decision-panel button[name=outcome]")).to_have_count(0)
    unsent = page.get_by_test_id("unsent-comment")
    expect(unsent.locator("textarea")).to_have_value("Approved after a call with the customer.")
    assert Gate.objects.get(pk=gate.pk).outcome == "reject"


def test_no_page_breaks_the_content_security_policy(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            violations.append(f"{page.url}: {text}")

    page.on("console", on_console)
    gate = open_gate(bell, title="Check the contract")
    decided = open_gate(bell, title="Already checked")
    decide_gate(decided.pk, outcome="approve", comment="Fine.", actor="ana", user=people.ana)
    superuser()
    base = live_server.url

    response = page.goto(f"{base}/accounts/login/")
    assert response is not None
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("style-src")[0]
    assert "object-src 'none'" in policy and "frame-ancestors 'none'" in policy

    log_in(page, base, "ana")
    for url in ("/reviews/", f"/reviews/{gate.pk}/", f"/reviews/{decided.pk}/", "/reviews/mine/"):
        response = page.goto(base + url)
        page.wait_for_load_state("load")
        # The pages showing LLM output allow no inline style either.
        assert response is not None
        assert "style-src 'self';" in response.headers["content-security-policy"] + ";"
    # The live parts run under the policy: claiming swaps the panel, the queue polls.
    page.goto(f"{base}/reviews/{gate.pk}/")
    page.get_by_role("button", name="Claim").click()
    expect(page.get_by_test_id("claimed-by")).to_have_text("you")
    page.goto(f"{base}/reviews/")
    page.wait_for_timeout(1500)

    page.context.clear_cookies()
    log_in(page, base, "otto", "/pipelines/")
    page.goto(f"{base}/reviews/")  # 403 page
    expect(page.get_by_test_id("error-page")).to_be_visible()
    page.context.clear_cookies()
    log_in(page, base, "root", "/admin/")
    for url in (
        "/runs/",
        f"/runs/{gate.run_id}/",
        "/ops/",
        "/pipelines/",
        "/admin/reviews/gate/",
        f"/admin/reviews/gate/{gate.pk}/change/",
        f"/admin/workflows/run/{gate.run_id}/change/",
        "/api/docs",
        "/no-such-page/",
    ):
        page.goto(base + url)
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)
    # Graphs draw with the vendored mermaid under the policy.
    page.goto(f"{base}/pipelines/")
    expect(page.locator("figure.sluice-graph.is-rendered").first).to_be_visible()
    page.wait_for_timeout(300)
    assert violations == []


def test_error_pages_in_the_browser(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.DEBUG = False
    page = viewport
    log_in(page, live_server.url, "otto", "/pipelines/")
    page.goto(f"{live_server.url}/reviews/")
    expect(page.locator("h1")).to_have_text("You are not allowed to open this page")
    shot(page, "error-403.png", full_page=False)
    page.goto(f"{live_server.url}/runs/00000000-0000-0000-0000-000000000000/")
    expect(page.get_by_test_id("error-page")).to_be_visible()
    page.goto(f"{live_server.url}/no-such-page/")
    expect(page.locator("h1")).to_have_text("There is nothing here")
    shot(page, "error-404.png", full_page=False)
    page.goto(f"{live_server.url}/reviews/")
    page.get_by_test_id("switch-user").click()
    page.wait_for_url("**/accounts/login/?next=/reviews/")
    page.fill("#id_username", "ana")
    page.fill("#id_password", "pw-ana-123")
    page.click("form.form button[type=submit]")
    page.wait_for_url("**/reviews/")
    expect(page.locator("h1")).to_have_text("Review queue")
