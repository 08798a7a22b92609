"""Reviewer pages left open for hours, in a real browser (Debian's chromium through Playwright).
static/sluice/sluice.js and static/reviews/reviews.js.

- The session ended under a page holding unsent input (a typed comment, ticked boxes): the live
  refresh's HX-Redirect to the login page does not take the tab away; a message links to the
  login page in a new tab, and the polls stop.
- A login in another tab rotated the CSRF token: the page's actions take the current token from
  the cookie and still work; the out-of-date message's Reload asks before dropping typed text.
- A double click on Approve on a slow network sends the form once.
- A shortcut pressed as the next gate's page opens (reached by deciding) does not decide it.
- Removed from the reviewer group: the page says so, not "out of date".
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import Dialog, Page, Request, expect

from reviews import services
from reviews.models import Gate
from tests.browser import end_session_elsewhere, log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIGNED_OUT = "You were signed out. Sign in again in a new tab; what you typed stays here."
NO_ACCESS = (
    "You no longer have access to this page (your groups or account changed). "
    "Copy anything you typed before reloading."
)
NOTE = (
    "Sign in to open the page you asked for. If you were signed in a moment ago, your session "
    "ended (signed out in another tab, or it expired)."
)


def test_a_signed_out_page_with_a_typed_comment_stays_and_links_to_the_login_page(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    gate = open_gate(bell, title="Check the refund")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_comment", "A careful comment typed over ten minutes")
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/status/" in r.url else None)

    end_session_elsewhere(page, base)
    problem = page.get_by_test_id("htmx-problem")
    expect(problem).to_contain_text(SIGNED_OUT, timeout=20_000)
    expect(problem).to_have_attribute("role", "alert")
    assert page.url == f"{base}/reviews/{gate.pk}/"
    expect(page.locator("#id_comment")).to_have_value("A careful comment typed over ten minutes")
    link = problem.get_by_role("link", name=re.compile("Sign in"))
    expect(link).to_have_attribute("href", re.compile(r"/accounts/login/\?next="))
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener")

    # The polls stop: no more requests that would only be refused again.
    seen = len(polls)
    page.wait_for_timeout(3000)  # three poll periods
    assert len(polls) == seen

    # Sign in from the link, in a new tab: it says why and goes back to the gate's page.
    with page.context.expect_page() as opened:
        link.click()
    login = opened.value
    login.wait_for_load_state()
    expect(login.get_by_test_id("signed-out-note")).to_have_text(NOTE)
    login.fill("#id_username", "ana")
    login.fill("#id_password", "pw-ana-123")
    login.click("form.form button[type=submit]")
    login.wait_for_url(f"{base}/reviews/{gate.pk}/")
    login.close()

    # Back in the first tab, the comment is sent (with the new session's CSRF token).
    page.locator("#decision-form button[value=approve]").click()
    page.wait_for_url(f"{base}/reviews/")
    gate.refresh_from_db()
    assert (gate.status, gate.comment) == ("decided", "A careful comment typed over ten minutes")


def test_a_signed_out_queue_with_ticked_boxes_stays(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    open_gate(bell, title="One")
    open_gate(bell, title="Two")
    log_in(page, base, "ana", "/reviews/")
    page.locator("[data-pick-all]").check()
    page.context.clear_cookies()
    expect(page.get_by_test_id("htmx-problem")).to_contain_text(SIGNED_OUT, timeout=20_000)
    assert page.url == f"{base}/reviews/"
    expect(page.locator("[data-pick-all]")).to_be_checked()


def test_after_a_login_in_another_tab_the_pages_actions_still_work(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    gate = open_gate(bell, title="Check the refund")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_comment", "Not this one")
    end_session_elsewhere(page, base)
    other = page.context.new_page()
    log_in(other, base, "ana")  # Django rotates the CSRF token
    other.close()

    # An htmx action (header X-CSRFToken) works.
    page.locator("#decision-panel").get_by_role("button", name="Claim").click()
    expect(page.get_by_test_id("claimed-by")).to_have_text("you")
    expect(page.get_by_test_id("htmx-problem")).to_have_count(0)
    # And a plain form (its hidden csrfmiddlewaretoken).
    page.locator("#decision-form button[value=reject]").click()
    page.wait_for_url(f"{base}/reviews/")
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.comment) == ("decided", "reject", "Not this one")


def test_the_out_of_date_messages_reload_asks_before_dropping_typed_text(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    gate = open_gate(bell, title="Check the refund")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    page.route("**/claim/", lambda route: route.fulfill(status=404, body="Gone"))
    page.locator("#decision-panel").get_by_role("button", name="Claim").click()
    problem = page.get_by_test_id("htmx-problem")
    expect(problem).to_contain_text("This page is out of date")
    page.fill("#id_comment", "Typed after the message")

    asked: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    problem.get_by_role("button", name="Reload").click()
    expect(problem).to_have_count(1)
    assert asked and "typed" in asked[0]
    expect(page.locator("#id_comment")).to_have_value("Typed after the message")

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        problem.get_by_role("button", name="Reload").click()
    expect(page.get_by_test_id("htmx-problem")).to_have_count(0)


def test_a_double_click_on_approve_sends_the_decision_once(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any, monkeypatch: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    gate = open_gate(bell, title="First one")
    following = open_gate(bell, title="Second one")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_comment", "Checked")
    real = services.decide_gate

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)  # a slow network or server: the reviewer clicks again meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(services, "decide_gate", slow)
    posts: list[Request] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
    box = page.locator("#decision-form button[value=approve]").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    with page.expect_request("**/decide/"):
        page.mouse.click(x, y)
    page.mouse.click(x, y)  # while the first is on its way: the same page, the same button
    page.wait_for_url(f"{base}/reviews/{following.pk}/")
    expect(page.locator("main .flash-success")).to_contain_text("Approved")
    assert [r.url for r in posts] == [f"{base}/reviews/{gate.pk}/decide/"]
    gate.refresh_from_db()
    assert (gate.status, gate.comment) == ("decided", "Checked")
    assert Gate.objects.get(pk=following.pk).status == "open"

    # Back: the page is usable again (restored from the cache or loaded afresh).
    page.go_back()
    page.wait_for_url(f"{base}/reviews/{gate.pk}/")
    expect(page.locator("form[data-submitting]")).to_have_count(0)


def test_a_shortcut_pressed_as_the_next_gates_page_opens_does_nothing(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    gate = open_gate(bell, title="First one")
    following = open_gate(bell, title="Second one")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    page.keyboard.press("a")
    page.wait_for_url(f"**/reviews/{following.pk}/")
    page.keyboard.press("a")  # pressed twice, or as the page appears
    expect(page.locator("#key-note")).to_contain_text("just changed")
    assert page.url == f"{base}/reviews/{following.pk}/"
    assert Gate.objects.get(pk=following.pk).status == "open"
    assert Gate.objects.get(pk=gate.pk).outcome == "approve"


def test_removal_from_the_reviewer_group_says_so(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False
    page = viewport
    base = live_server.url
    gate = open_gate(bell, title="Check the refund")
    log_in(page, base, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_comment", "Typed")
    people.ana.groups.clear()
    problem = page.get_by_test_id("htmx-problem")
    expect(problem).to_contain_text(NO_ACCESS, timeout=20_000)
    expect(page.locator("#id_comment")).to_have_value("Typed")
