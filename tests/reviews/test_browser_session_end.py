"""A page outliving its session, and htmx requests the server refuses, in a real browser
(Debian's chromium through Playwright).

- When the session ends under an open page (logged out in another tab), its live refreshes send
  the whole tab to the login page, never paste the login page into the table or the panel; and
  logging in there brings the user back to the page they were on (config.login).
- A Claim refused by the server (a CSRF 403 after logging in again in another tab; a 500) says
  so on the page (static/sluice/sluice.js), where htmx alone would leave the page unchanged.
- All of it under the Content-Security-Policy, without a violation.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, Route, expect

from reviews.models import Gate
from tests.browser import end_session_elsewhere, log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

OUT_OF_DATE = "This page is out of date — reload it."
SERVER_FAILED = "The server could not do that. Try again, or reload the page."


def csp_violations(page: Page) -> list[str]:
    found: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            found.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    return found


def test_live_refreshes_after_the_session_ended_go_to_the_login_page_and_back(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False  # the poll, every second, is what notices
    page = viewport
    violations = csp_violations(page)
    base = live_server.url
    gate = open_gate(bell, title="Check the refund")

    # The runs list with a filter, refreshing itself (the gate's run is still active).
    log_in(page, base, "ana", "/runs/?status=active")
    expect(page.locator("#runs-rows[hx-trigger]")).to_have_count(1)
    end_session_elsewhere(page, base)
    # The tab itself goes to the login page: no login form pasted into the runs table.
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="), timeout=20_000)
    expect(page.locator("#runs-rows")).to_have_count(0)
    expect(page.locator("header.topbar")).to_have_count(1)
    page.fill("#id_username", "ana")
    page.fill("#id_password", "pw-ana-123")
    page.click("form.form button[type=submit]")
    page.wait_for_url(f"{base}/runs/?status=active")  # back, with the filter

    # A gate's page: its status poll (/reviews/<pk>/status/ answers 204) is no place to land.
    page.goto(f"{base}/reviews/{gate.pk}/")
    expect(page.get_by_test_id("gate-status")).to_have_text("Open")
    end_session_elsewhere(page, base)
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="), timeout=20_000)
    page.fill("#id_username", "ana")
    page.fill("#id_password", "pw-ana-123")
    page.click("form.form button[type=submit]")
    page.wait_for_url(f"{base}/reviews/{gate.pk}/")
    expect(page.get_by_test_id("gate-status")).to_have_text("Open")
    assert violations == []


def test_a_refused_claim_says_so_and_a_reload_recovers(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    # No refresh may notice anything before the clicks: no poll, no push.
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    violations = csp_violations(page)
    base = live_server.url
    gate = open_gate(bell, title="Check the refund")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    claim = page.locator("#decision-panel").get_by_role("button", name="Claim")
    problem = page.get_by_test_id("htmx-problem")

    # The page is out of date: the server no longer has what it asks for (a 404, as after a
    # deploy that moved the action). A login in another tab used to do this through a stale
    # CSRF token; the page now takes the token from the cookie (test_browser_stale_pages).
    page.route("**/claim/", lambda route: route.fulfill(status=404, body="Not Found"))
    claim.click()
    expect(problem).to_have_text(re.compile(re.escape(OUT_OF_DATE)))
    expect(problem).to_have_attribute("role", "alert")
    expect(problem).to_have_class(re.compile(r"\bflash-error\b"))
    claim.click()  # again: still one message
    expect(problem).to_have_count(1)
    assert Gate.objects.get(pk=gate.pk).claimed_by_id is None
    expect(claim).to_be_visible()  # the panel is as it was: nothing was swapped into it

    page.unroute("**/claim/")
    problem.get_by_role("button", name="Reload").click()
    expect(problem).to_have_count(0)
    page.route("**/claim/", lambda route: route.fulfill(status=500, body="Server Error"))
    claim.click()
    expect(problem).to_have_text(re.compile(re.escape(SERVER_FAILED)))

    # It may pass: the message goes once the next Claim works.
    def let_through(route: Route) -> None:
        route.continue_()

    page.unroute("**/claim/")
    page.route("**/claim/", let_through)
    claim.click()
    expect(page.get_by_test_id("claimed-by")).to_have_text("you")
    expect(problem).to_have_count(0)
    assert Gate.objects.get(pk=gate.pk).claimed_by_id == people.ana.pk
    assert violations == []
