"""The reviewer pages for a keyboard-only screen-reader user and a low-vision operator (200 %
zoom, Windows High Contrast), second review, in a real browser (Debian's chromium through
Playwright). The markup alone is checked in test_a11y_markup.py.

- After a decision, focus is on the flash that names the decided gate and the next one (a status
  region that is there at load is not read out, and the next page can look like the last).
- The single-letter shortcuts can be turned off (kept in the browser), and never fire from a
  form control, a checkbox included.
- Someone else's claim taking the decision buttons away is said in the polite note; a Claim
  refused puts focus on why.
- In the queue, when the focused gate leaves the list on a live refresh, focus goes to the row
  now in its place (marked aria-current), and the status line names the gate that left.
- Control borders have 3:1 contrast; what is current or selected keeps a cue in forced colours;
  the "If nobody answers" column stays at narrow widths.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from reviews.models import Gate
from reviews.services import claim_gate, decide_gate
from tests.browser import log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False  # the polls, every second, bring the changes


def with_subject(gate: Gate, subject: str) -> Gate:
    """The gate as a pipeline makes it: a title its gates share, the run's own subject."""
    Gate.objects.filter(pk=gate.pk).update(subject=subject, title="Check the contract analysis")
    return Gate.objects.get(pk=gate.pk)


def test_after_a_decision_focus_is_on_the_message_naming_the_next_gate(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    first = with_subject(open_gate(bell, timeout_s=600), "Nordwind supply contract")
    second = with_subject(open_gate(bell, timeout_s=1200), "Lisbon office lease")
    log_in(page, live_server.url, "ana", f"/reviews/{first.pk}/")
    # No message, no focus moved: the page starts at the top as usual.
    assert page.evaluate("document.activeElement === document.body")
    expect(page).to_have_title(
        "Nordwind supply contract — Check the contract analysis · Review · Sluice"
    )

    page.keyboard.press("a")
    page.wait_for_url(f"**/reviews/{second.pk}/")
    flash = page.locator("main .flash-success")
    expect(flash).to_be_focused()
    expect(flash).to_have_text(
        "Approved “\u2068Nordwind supply contract\u2069”. "
        "Next up: “\u2068Lisbon office lease\u2069”."
    )
    expect(page).to_have_title(
        "Lisbon office lease — Check the contract analysis · Review · Sluice"
    )
    expect(page.get_by_test_id("gate-subject")).to_have_text("Lisbon office lease")
    # The shortcuts still work from the message, once the second after the page opened is
    # over (a key pressed as it opens does nothing: test_browser_stale_pages).
    page.wait_for_timeout(1100)
    page.keyboard.press("r")
    page.wait_for_url("**/reviews/")
    expect(page.locator("main .flash-success")).to_be_focused()
    assert Gate.objects.get(pk=second.pk).outcome == "reject"


def test_the_shortcuts_can_be_turned_off_and_never_fire_from_a_checkbox(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, title="Check the indemnity clause")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    toggle = page.get_by_role("checkbox", name="Keyboard shortcuts")
    approve = page.locator('#decision-panel [data-key="a"]')
    expect(toggle).to_be_checked()
    expect(approve).to_have_attribute("aria-keyshortcuts", "a")
    expect(
        page.get_by_role("button", name="Approve", exact=True)
    ).to_be_visible()  # not "Approve a"

    toggle.uncheck()
    page.reload()  # kept in this browser
    expect(toggle).not_to_be_checked()
    expect(approve.locator("kbd")).to_be_hidden()
    expect(approve).not_to_have_attribute("aria-keyshortcuts", "a")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("a")  # off: nothing

    toggle.check()
    expect(toggle).to_be_focused()
    expect(approve).to_have_attribute("aria-keyshortcuts", "a")
    page.keyboard.press("a")  # on, but focus is on a checkbox: nothing
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("r")
    page.wait_for_url("**/reviews/")
    # Had either "a" approved, the gate would not have been open for the rejection.
    decided = Gate.objects.get(pk=gate.pk)
    assert (decided.status, decided.outcome) == ("decided", "reject")


def test_someone_elses_claim_is_said_and_a_refused_claim_focuses_why(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    page = viewport
    gate = open_gate(bell, title="Check the refund")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    note = page.locator("#key-note")
    expect(note).to_have_attribute("role", "status")
    claim_gate(gate.pk, people.ben)
    expect(note).to_have_text("Claimed by ben — you can no longer decide this gate.")
    expect(page.locator('#decision-panel [data-key="a"]')).to_have_count(0)

    # A key whose button is gone says so (once the pause after the update is over).
    page.wait_for_function("() => !document.querySelector('#decision-panel [data-key]')")
    page.wait_for_timeout(1100)  # past the pause after the panel changed
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("a")
    expect(note).to_contain_text("“a” did nothing: there is no Approve button on this gate now")
    expect(note).to_contain_text("claimed by ben")


def test_a_refused_claim_puts_focus_on_why(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600  # the page does not learn of ben's claim by itself
    page = viewport
    gate = open_gate(bell, title="Check the refund")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    claim = page.get_by_role("button", name="Claim")
    expect(claim).to_be_visible()
    claim_gate(gate.pk, people.ben)
    claim.click()
    refused = page.locator("#decision-panel .flash-error")
    expect(refused).to_contain_text("ben")
    expect(refused).to_be_focused()


def test_when_the_focused_gate_leaves_the_queue_focus_goes_to_the_row_in_its_place(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    first = open_gate(bell, title="First in line", timeout_s=600)
    second = open_gate(bell, title="Second in line", timeout_s=1200)
    third = open_gate(bell, title="Third in line", timeout_s=1800)
    log_in(page, live_server.url, "ana")
    page.keyboard.press("j")
    page.keyboard.press("j")
    link = page.locator(f"#gate-link-{second.pk}")
    expect(link).to_be_focused()
    expect(link).to_have_attribute("aria-current", "true")
    assert page.locator("#queue tr[aria-selected]").count() == 0

    decide_gate(second.pk, outcome="approve", actor="ben", user=people.ben)
    expect(page.locator("#queue .rv-row")).to_have_count(2)
    expect(page.get_by_test_id("queue-status")).to_have_text("“Second in line” left the list.")
    now = page.locator(f"#gate-link-{third.pk}")
    expect(now).to_be_focused()
    expect(now).to_have_attribute("aria-current", "true")
    expect(page.locator("#queue .rv-row.selected")).to_have_attribute("data-gate-id", str(third.pk))
    page.keyboard.press("k")  # on from there, not from the first row again
    expect(page.locator(f"#gate-link-{first.pk}")).to_be_focused()
    expect(now).not_to_have_attribute("aria-current", "true")

    # The last gate goes: focus waits on the (empty) list, not on <body>.
    decide_gate(third.pk, outcome="approve", actor="ben", user=people.ben)
    expect(page.locator("#queue .rv-row")).to_have_count(1)
    decide_gate(first.pk, outcome="approve", actor="ben", user=people.ben)
    expect(page.get_by_test_id("queue-status")).to_have_text(
        "“First in line” left the list, the list is empty."
    )
    expect(page.locator("#queue")).to_be_focused()


def test_a_reviewer_on_another_rows_box_keeps_the_focus_when_the_selected_gate_leaves(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    """Only focus on the selected row's link (or nowhere) follows the selection: a reviewer
    ticking boxes is not moved to a title link (found by review)."""
    page = viewport
    first = open_gate(bell, title="First in line", timeout_s=600)
    second = open_gate(bell, title="Second in line", timeout_s=1200)
    open_gate(bell, title="Third in line", timeout_s=1800)
    log_in(page, live_server.url, "ana")
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator(f"#gate-link-{second.pk}")).to_be_focused()
    page.locator(f"#gate-pick-{first.pk}").focus()

    decide_gate(second.pk, outcome="approve", actor="ben", user=people.ben)
    expect(page.locator("#queue .rv-row")).to_have_count(2)
    expect(page.get_by_test_id("queue-status")).to_have_text("“Second in line” left the list.")
    expect(page.locator(f"#gate-pick-{first.pk}")).to_be_focused()


def test_borders_and_current_items_for_low_vision_and_forced_colours(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, title="First in line", timeout_s=600)
    log_in(page, live_server.url, "ana")

    def style(selector: str, prop: str) -> str:
        return str(
            page.locator(selector).first.evaluate(
                "(el, p) => getComputedStyle(el).getPropertyValue(p)", prop
            )
        )

    # Text boxes and selects were outlined in #cfd4da (1.49:1); buttons and chips in #e3e6ea.
    assert style("#bulk-comment", "border-top-color") == "rgb(118, 118, 118)"
    assert style("#pipeline-filter", "border-top-color") == "rgb(118, 118, 118)"
    assert style("a.chip:not([aria-current])", "border-top-color") == "rgb(129, 139, 152)"
    assert style(".rv-pager .btn, .userbox .btn, #bulk-form .btn", "border-top-width") == "1px"

    # The current filter and nav item are not told by colour alone.
    assert style('a.chip[aria-current="true"]', "font-weight") == "700"
    assert "underline" in style('.mainnav a[aria-current="page"]', "text-decoration-line")

    # Windows High Contrast: the j/k-selected row is framed in the highlight colour.
    page.emulate_media(forced_colors="active")
    page.keyboard.press("j")
    expect(page.locator(f"#gate-link-{gate.pk}")).to_be_focused()
    cell = "#queue tr.selected td:nth-child(3)"
    assert style(cell, "border-top-style") == "solid"
    assert style(cell, "border-top-width") == "2px"
    assert style('a.chip[aria-current="true"]', "border-top-width") == "2px"
    page.emulate_media(forced_colors="none")

    # At 200 % zoom (a 680 px wide window) the "If nobody answers" column is still there.
    page.set_viewport_size({"width": 680, "height": 900})
    expect(page.locator("#queue td.rv-col-default").first).to_contain_text("auto-")
    expect(page.locator("#queue td.rv-col-default").first).to_be_attached()
    assert style("#queue td.rv-col-default", "display") != "none"
