"""Keyboard and screen-reader use of the reviewer pages in a real browser (Debian's chromium
through Playwright), review K.

- A live update of the decision panel (another reviewer claims, then releases the gate) keeps
  keyboard focus where the reviewer was typing: the rest of a half-typed comment goes into the
  comment, not into the one-letter shortcuts ("a" approved a gate). Shortcuts are held back
  for a second after such an update, and while the form holds text not sent, until Esc.
- After the reviewer's own Claim, focus is on the Release button that took its place.
- After a refused decision (422), focus is on the first invalid field.
- In the queue, j/k move focus with the selection; Enter opens the selected gate only from the
  page or that gate's row, not from a filter chip or another gate's link; a live refresh keeps
  focus and says what changed in a status line.
- A pipeline picker does not submit on the first arrow key.
- The skip link, the top bar at small sizes, the focus ring and reduced motion.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from reviews.models import Gate
from reviews.services import claim_gate, release_gate
from tests.browser import log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False  # the polls, every second, bring the changes


def next_settle(page: Page) -> None:
    """Arm a promise that resolves at the page's next htmx swap (window.__settled)."""
    page.evaluate(
        """() => { window.__settled = new Promise(resolve =>
             document.addEventListener('htmx:afterSettle', () => resolve(true),
                                       { once: true })); }"""
    )


def test_typing_goes_on_in_the_comment_through_live_updates_of_the_panel(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, title="Check the indemnity clause")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.click("#id_comment")
    page.keyboard.type("Looks fine to me")

    claim_gate(gate.pk, people.ben)
    expect(page.get_by_test_id("claimed-by")).to_have_text("ben")
    # The comment box is gone while ben holds the claim: focus waits on its read-only copy,
    # where keystrokes do nothing, rather than on <body>, where they are shortcuts.
    expect(page.locator("#unsent-comment-text")).to_be_focused()
    expect(page.locator("#unsent-comment-text")).to_have_value("Looks fine to me")

    release_gate(gate.pk, people.ben)
    expect(page.get_by_role("button", name="Claim")).to_be_visible()
    expect(page.locator("#id_comment")).to_be_focused()
    expect(page.locator("#id_comment")).to_have_value("Looks fine to me")
    page.keyboard.type(", but check clause 4 and re-read the cap")  # an "a", an "r", a "c"
    expect(page.locator("#id_comment")).to_have_value(
        "Looks fine to me, but check clause 4 and re-read the cap"
    )
    fresh = Gate.objects.get(pk=gate.pk)
    assert (fresh.status, fresh.claimed_by_id) == ("open", None)

    # Focus lost some other way, text not sent: "a" does nothing and says why...
    page.evaluate("document.activeElement.blur()")
    page.wait_for_timeout(1100)  # past the pause after the last update
    page.keyboard.press("a")
    expect(page.locator("#key-note")).to_contain_text("not sent")
    assert Gate.objects.get(pk=gate.pk).status == "open"
    # ... until Esc says the shortcut is meant: then it approves with the comment.
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    expect(page.locator(".flash-success")).to_contain_text("Approved")
    decided = Gate.objects.get(pk=gate.pk)
    assert decided.outcome == "approve"
    assert decided.comment == "Looks fine to me, but check clause 4 and re-read the cap"


def test_shortcuts_pause_after_an_update_and_a_claim_puts_focus_on_release(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, title="Check the refund")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    claim_gate(gate.pk, people.ben)
    expect(page.get_by_test_id("claimed-by")).to_have_text("ben")

    next_settle(page)
    release_gate(gate.pk, people.ben)
    page.evaluate("window.__settled")
    page.keyboard.press("c")  # at once: the Claim button just appeared under the finger
    expect(page.locator("#key-note")).to_contain_text("just changed")
    page.wait_for_timeout(400)
    assert Gate.objects.get(pk=gate.pk).claimed_by_id is None

    page.wait_for_timeout(1000)
    page.keyboard.press("c")
    expect(page.get_by_test_id("claimed-by")).to_have_text("you")
    # Focus is on the button that took the pressed one's place, not on <body>.
    expect(page.get_by_role("button", name="Release")).to_be_focused()
    page.keyboard.press("Enter")  # releases: focus on Claim again
    expect(page.get_by_role("button", name="Claim")).to_be_focused()
    assert Gate.objects.get(pk=gate.pk).claimed_by_id is None


def test_a_refused_decision_puts_focus_on_the_invalid_field(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, "support.ticket_triage")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_edit-priority", "9")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".rv-field-error")).to_contain_text("less than or equal to 4")
    field = page.locator("#id_edit-priority")
    expect(field).to_be_focused()
    expect(field).to_have_attribute("aria-invalid", "true")
    described = (field.get_attribute("aria-describedby") or "").split()
    assert "id_edit-priority_error" in described
    for name in described:
        expect(page.locator(f"#{name}")).to_have_count(1)


def test_the_queue_keyboard_focus_and_announcements(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    base = live_server.url
    first = open_gate(bell, title="First in line", timeout_s=600)
    second = open_gate(bell, title="Second in line", timeout_s=1200)
    log_in(page, base, "ana")

    page.keyboard.press("j")
    expect(page.locator(f"#gate-link-{first.pk}")).to_be_focused()  # read out, Tab goes on
    # Enter on another control does what that control does, not "open the selected gate".
    page.locator(f"#gate-link-{second.pk}").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reviews/{second.pk}/")
    page.goto(f"{base}/reviews/")
    page.keyboard.press("j")
    page.locator("a.chip", has_text="Unclaimed").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/reviews/?claim=unclaimed")
    page.goto(f"{base}/reviews/")
    page.keyboard.press("j")
    page.keyboard.press("o")
    page.wait_for_url(f"**/reviews/{first.pk}/")

    # A live refresh keeps focus on the same link and says what changed, outside the list.
    page.goto(f"{base}/reviews/")
    page.keyboard.press("j")
    page.keyboard.press("j")
    link = page.locator(f"#gate-link-{second.pk}")
    expect(link).to_be_focused()
    handle = link.element_handle()
    open_gate(bell, title="Third in line", timeout_s=300)
    expect(page.locator("#queue .rv-row")).to_have_count(3)
    expect(page.get_by_test_id("queue-status")).to_have_text("1 new gate.")
    assert handle is not None and not handle.evaluate("el => el.isConnected")  # re-rendered
    expect(link).to_be_focused()
    assert page.locator("#queue").get_attribute("aria-live") is None
    claim_gate(first.pk, people.ben)
    release_gate(first.pk, people.ben)
    Gate.objects.filter(pk=first.pk).update(group="legal")  # out of ana's sight
    expect(page.get_by_test_id("queue-status")).to_have_text("1 gate left the list.")
    expect(link).to_be_focused()


def test_a_pipeline_picker_waits_for_enter_from_the_keyboard(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    open_gate(bell, title="A review")
    open_gate(bell, "support.ticket_triage")
    log_in(page, live_server.url, "ana")
    picker = page.locator("#pipeline-filter")
    picker.focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(800)
    assert page.url.endswith("/reviews/"), page.url  # not submitted on the first arrow
    page.keyboard.press("ArrowDown")
    chosen = picker.input_value()
    assert chosen
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reviews/?pipeline={chosen}")
    # A pick with the mouse (select_option fires change alone) still submits at once.
    page.locator("#pipeline-filter").select_option("")
    page.wait_for_url("**/reviews/?pipeline=")


def test_skip_link_top_bar_focus_ring_and_reduced_motion(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    open_gate(bell, title="A review")
    log_in(page, live_server.url, "ana")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    box = skip.bounding_box()
    assert box and box["y"] >= 0 and box["height"] > 10  # visible once focused
    page.keyboard.press("Enter")
    expect(page.locator("main#main")).to_be_focused()

    # The focus ring: solid 2 px in the accent blue (the faint 35 % ring was hard to see).
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    ring = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth, s.outlineColor]; })()"
    )
    assert ring == ["solid", "2px", "rgb(31, 111, 235)"], ring

    def topbar() -> str:
        return str(page.evaluate("getComputedStyle(document.querySelector('.topbar')).position"))

    assert topbar() == "sticky"
    page.set_viewport_size({"width": 640, "height": 360})  # 1280×720 at 200 %
    assert topbar() == "static"
    page.set_viewport_size({"width": 1360, "height": 450})  # a short window
    assert topbar() == "static"

    page.emulate_media(reduced_motion="reduce")
    dot = page.evaluate("getComputedStyle(document.querySelector('.rv-live-dot')).animationName")
    assert dot == "none"
