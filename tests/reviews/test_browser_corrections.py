"""Correcting an AI's results in a real browser (Debian's chromium through Playwright): what
Chromium sends for a gate's form is what the page showed, unless the reviewer changed it.

- an untouched text area comes back with ``\\r\\n`` line breaks: approving stores the text as
  it was (no correction recorded, nothing for support_ticket to mail with ``\\r``), and
  rejecting sends no edits;
- a required choice the AI left empty starts blank: Reject records nothing made up, Approve
  asks for a choice;
- a number Chromium cannot read (``1e309``) or reads its own way (``1,5`` → 15) is an error at
  the field, never a cleared or changed value;
- a run restarted while the page is open: the changed fields are shown read-only with the
  comment, not dropped, and the page links the gate the restart opened.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from reviews.models import Gate, GateCorrection
from tests.browser import log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import cancel, restart

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REPLY = "Hi Ann,\n\nWe refunded the double charge today.\nBest regards,\nSupport"
FIELDS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reply": {"type": "string", "title": "Reply", "default": REPLY},
        "tags": {"type": "array", "items": {"type": "string"}, "title": "Tags"},
        "sure": {"type": ["boolean", "null"], "title": "Sure"},
        "amount": {"type": "number", "title": "Amount"},
        "title": {"type": "string", "title": "Title"},
    },
}
PAYLOAD = {"summary": "s", "tags": ["a", " b "], "sure": None, "amount": 2.5, "title": "AI title"}
CHOICE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reply": {"type": "string", "title": "Reply", "default": REPLY},
        "category": {"type": "string", "title": "Category", "enum": ["billing", "bug"]},
    },
    "required": ["category"],
}


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1


def corrections(gate: Gate) -> list[str]:
    return list(GateCorrection.objects.filter(gate=gate).values_list("field", flat=True))


def parked_values(page: Page) -> dict[str, list[Any]]:
    """Label → [text, read-only] of each field shown back as not saved."""
    return page.get_by_test_id("unsent-fields").evaluate(  # type: ignore[no-any-return]
        "el => Object.fromEntries(Array.from(el.querySelectorAll('textarea'), t => "
        "[el.querySelector('label[for=' + t.id + ']').textContent, [t.value, t.readOnly]]))"
    )


def decide(page: Page, outcome: str) -> None:
    page.get_by_role("button", name=re.compile(f"^{outcome.capitalize()}")).click()
    page.wait_for_load_state()


def test_an_untouched_form_approves_and_rejects_what_it_showed(
    bell: Bell, live_server: Any, page: Page, people: People
) -> None:
    page.set_default_timeout(15_000)
    approved = open_gate(bell, payload=PAYLOAD, fields=FIELDS)
    log_in(page, live_server.url, "ana", f"/reviews/{approved.pk}/")
    expect(page.locator("#id_edit-sure")).to_have_value("")  # null: neither yes nor no
    decide(page, "approve")
    page.wait_for_url(re.compile(r"/reviews/"))
    approved.refresh_from_db()
    assert approved.status == "decided"
    assert approved.edits == {
        "reply": REPLY,
        "tags": ["a", " b "],
        "sure": None,
        "amount": 2.5,
        "title": "AI title",
    }
    assert corrections(approved) == []

    rejected = open_gate(bell, payload=PAYLOAD, fields=FIELDS)
    page.goto(f"{live_server.url}/reviews/{rejected.pk}/")
    decide(page, "reject")
    rejected.refresh_from_db()
    assert (rejected.status, rejected.outcome, rejected.edits) == ("decided", "reject", None)
    assert corrections(rejected) == []


def test_a_typed_reply_is_stored_with_plain_line_breaks(
    bell: Bell, live_server: Any, page: Page, people: People
) -> None:
    page.set_default_timeout(15_000)
    gate = open_gate(bell, payload=PAYLOAD, fields=FIELDS)
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_edit-reply", "Hi Ann,\n\nDone.\n")
    decide(page, "approve")
    page.wait_for_url(re.compile(r"/reviews/"))
    gate.refresh_from_db()
    assert gate.edits["reply"] == "Hi Ann,\n\nDone.\n"
    assert corrections(gate) == ["reply"]


def test_a_required_choice_the_ai_left_empty_is_not_made_up(
    bell: Bell, live_server: Any, page: Page, people: People
) -> None:
    page.set_default_timeout(15_000)
    gate = open_gate(bell, payload={"summary": "s"}, fields=CHOICE)
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    expect(page.locator("#id_edit-category")).to_have_value("")
    decide(page, "approve")
    expect(page.locator(".rv-field-error")).to_contain_text("required")
    assert Gate.objects.get(pk=gate.pk).status == "open"
    decide(page, "reject")
    page.wait_for_url(re.compile(r"/reviews/"))
    gate.refresh_from_db()
    assert (gate.outcome, gate.edits) == ("reject", None)
    assert corrections(gate) == []


@pytest.mark.parametrize("typed", ["1,5", "1e309"])
def test_a_number_chromium_would_misread_is_refused_at_the_field(
    bell: Bell, live_server: Any, page: Page, people: People, typed: str
) -> None:
    page.set_default_timeout(15_000)
    gate = open_gate(bell, payload=PAYLOAD, fields=FIELDS)
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    amount = page.locator("#id_edit-amount")
    amount.fill("")
    amount.press_sequentially(typed)
    decide(page, "approve")
    expect(page.locator(".rv-field-error", has=page.locator("#id_edit-amount"))).to_contain_text(
        "Enter a number"
    )
    expect(page.locator("#id_edit-amount")).to_have_value(typed)
    gate.refresh_from_db()
    assert gate.status == "open" and gate.edits is None


def test_a_restarted_run_keeps_what_was_typed_and_links_the_new_gate(
    bell: Bell, live_server: Any, page: Page, people: People
) -> None:
    page.set_default_timeout(15_000)
    gate = open_gate(bell, payload=PAYLOAD, fields=FIELDS)
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_edit-reply", "A long careful correction the reviewer typed")
    page.fill("#id_edit-tags", "x\ny")
    page.select_option("#id_edit-sure", "true")
    page.fill("#id_comment", "my comment")
    cancel(gate.run_id)
    bell.drain()
    # The poll closes the page: the form goes, what was typed stays, read-only.
    expect(page.get_by_test_id("closed-banner")).to_contain_text("canceled")
    expect(page.locator("#decision-form")).to_have_count(0)
    unsent = page.get_by_test_id("unsent-comment")
    expect(unsent).to_be_visible()
    expect(unsent).to_contain_text("Your corrections and comment were")
    expect(page.locator("#unsent-comment-text")).to_have_value("my comment")
    parked = page.get_by_test_id("unsent-fields")
    expect(parked.locator("label")).to_have_count(3)  # the fields changed, in the form's order
    typed = {
        "Reply (not saved)": ["A long careful correction the reviewer typed", True],
        "Tags (not saved)": ["x\ny", True],
        "Sure (not saved)": ["Yes", True],
    }
    assert parked_values(page) == typed
    # The run is restarted later: the page links the gate the restart opened, and keeps the text.
    restart(gate.run_id)
    bell.drain()
    new = Gate.objects.get(run_id=gate.run_id, status="open")
    link = page.get_by_test_id("next-attempt")
    expect(link).to_contain_text("The run was restarted")
    expect(link).to_have_attribute("href", f"/reviews/{new.pk}/")
    assert parked_values(page) == typed
    expect(page.locator("#unsent-comment-text")).to_have_value("my comment")
    expect(page.locator("#gate-live[hx-get]")).to_have_count(0)  # the page stops asking


def test_a_decision_sent_too_late_gives_the_fields_back_until_the_restart_and_after(
    bell: Bell, live_server: Any, page: Page, people: People, settings: Any
) -> None:
    page.set_default_timeout(15_000)
    # The open page does not notice the cancel: no push, and no poll for an hour.
    settings.SLUICE_REVIEW_PUSH = False
    settings.SLUICE_REVIEW_POLL_SECONDS = 3600
    gate = open_gate(bell, payload=PAYLOAD, fields=FIELDS)
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.fill("#id_edit-title", "A better title")
    page.fill("#id_comment", "my comment")
    cancel(gate.run_id)
    bell.drain()
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    decide(page, "approve")  # 409: the server hands back what was typed
    expect(page.get_by_test_id("closed-banner")).to_contain_text("canceled")
    typed = {"Title (not saved)": ["A better title", True]}
    assert parked_values(page) == typed
    expect(page.locator("#unsent-comment-text")).to_have_value("my comment")
    restart(gate.run_id)
    bell.drain()
    new = Gate.objects.get(run_id=gate.run_id, status="open")
    expect(page.get_by_test_id("next-attempt")).to_have_attribute("href", f"/reviews/{new.pk}/")
    assert parked_values(page) == typed  # the live update kept them
    expect(page.locator("#unsent-comment-text")).to_have_value("my comment")
