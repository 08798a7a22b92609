"""Correcting an AI's results at a gate: what the form shows, what it sends, what is recorded.

The rule: a field the reviewer does not touch keeps exactly the value the page showed, so an
untouched approval in the browser stores what an API approval with ``edits: {}`` stores, and
records no correction. Found by a review of the gate form:

- the schema's default replaced the AI's value of a field that has one (``tags: list[str] = []``
  showed and stored ``[]`` instead of the AI's ``["a", "b"]``);
- a text area's ``\\r\\n`` (what browsers send), trimmed text, trimmed or dropped list items,
  ``""`` for a null, ``false`` for a null yes/no, a datetime's ``+00:00`` against the stored
  ``Z``, a decimal's ``12.5`` against ``"12.5"`` and ``1e308`` against the ``1000…0`` jsonb
  hands back were all written as corrections (or changed the value);
- a required choice without a value preselected its first option, so the browser sent a
  made-up value (also on Reject);
- a number the server could not read was silently cleared; a blank number was stored as null;
- the second approver of a four-eyes gate saw the AI's values, not the first approver's
  correction, and silently overwrote it;
- a JSON field lost a decimal's digits; the decided panel showed Python's reprs.

``post_as_browser`` posts what Chromium posts for the page as rendered: text areas with
``\\r\\n`` line breaks, text inputs without line breaks, a select without a selected option as
its first option, unticked boxes left out.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from html import unescape
from typing import Any, Literal

import pydantic
import pytest
from django.test import Client

from reviews import services
from reviews.models import Gate, GateCorrection
from reviews.schema import initial_values, schema_of
from tests.reviews.conftest import People, open_gate
from tests.reviews.workflows import TICKET, TICKET_FIELDS
from tests.support import Bell
from workflows import cancel, get_run, restart, workflow
from workflows.core.jsonvalues import same_json
from workflows.keys import create_api_key

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def logged_in(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def browser_values(html: str) -> dict[str, Any]:
    """What Chromium posts for the page's edits form, untouched."""
    values: dict[str, Any] = {}

    def attr(tag: str, name: str) -> str | None:
        found = re.search(rf'\s{name}="([^"]*)"', tag)
        return unescape(found.group(1)) if found else None

    for tag in re.findall(r'<input[^>]*name="edit-[^"]+"[^>]*>', html):
        name, kind = attr(tag, "name") or "", attr(tag, "type")
        if kind == "checkbox":
            if re.search(r"\schecked", tag):
                values.setdefault(name, []).append(attr(tag, "value") or "on")
        else:
            # A text input's value has no line breaks (the browser strips them).
            values[name] = re.sub(r"[\r\n]", "", attr(tag, "value") or "")
    for name, text in re.findall(
        r'<textarea name="(edit-[^"]+)"[^>]*>(.*?)</textarea>', html, re.S
    ):
        text = unescape(text.removeprefix("\n"))  # the parser drops one newline after the tag
        values[name] = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    for name, body in re.findall(r'<select name="(edit-[^"]+)"[^>]*>(.*?)</select>', html, re.S):
        options = re.findall(r"<option([^>]*)>", body)
        chosen = [o for o in options if re.search(r"\sselected", o)] or options[:1]
        values[name] = attr(chosen[0], "value") if chosen else ""
    return values


def page(c: Client, gate: Gate) -> str:
    return c.get(f"/reviews/{gate.pk}/").content.decode()


def post_as_browser(c: Client, gate: Gate, outcome: str = "approve", **changes: Any) -> Any:
    values = browser_values(page(c, gate))
    for name, value in changes.items():
        if value is None:
            values.pop(f"edit-{name}", None)
        else:
            values[f"edit-{name}"] = value
    return c.post(f"/reviews/{gate.pk}/decide/", {**values, "outcome": outcome})


def api_decide(gate: Gate, body: dict[str, Any]) -> Any:
    _, secret = create_api_key("decider", scopes=["gates:decide"])
    return Client().post(
        f"/api/gates/{gate.pk}/decision",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )


def corrections_of(gate: Gate) -> list[tuple[str, Any, Any]]:
    return [(c.field, c.before, c.after) for c in GateCorrection.objects.filter(gate=gate)]


def stored(gate: Gate) -> Any:
    gate.refresh_from_db()
    return gate.edits


# --- the pipeline's model: every shape of field --------------------------------------------------


class Answer(pydantic.BaseModel):
    name: str
    tags: list[str] = []
    note: str | None = None
    level: Literal["low", "high"] = "low"
    at: datetime
    price: Decimal
    ratio: float = 0.0
    sure: bool | None = None
    reply: str = ""


AI = {
    "name": "  Ann Lee  ",
    "tags": ["a", " b "],
    "note": None,
    "level": "high",
    "at": "2026-12-24T10:00:00+00:00",
    "price": 12.5,
    "ratio": 1e308,
    "sure": None,
    "reply": "Hi Ann,\n\nWe refunded the double charge.\n",
}


@workflow(name="test.untouched_model")
def untouched_model_wf(ctx: Any, payload: Any = None) -> dict[str, Any]:
    d = ctx.review(
        "Check the answer", "Correct it.", AI if payload is None else payload, fields=Answer
    )
    return {"edits": d.edits.model_dump(mode="json") if d.edits is not None else None}


def test_the_form_starts_from_the_ais_values_not_the_schemas_defaults(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, "test.untouched_model")
    shown = browser_values(page(logged_in(people.ana), gate))
    assert shown["edit-tags"] == "a\r\n b "
    assert shown["edit-level"] == "high"
    assert shown["edit-reply"] == "Hi Ann,\r\n\r\nWe refunded the double charge.\r\n"
    # A pipeline's explicit pre-fill (a model instance's values) still comes first; a default
    # applies where the payload has no value, or one that is not a value of the field.
    prefilled = schema_of(Answer(name="Pre", at=datetime(2026, 1, 1), price=Decimal(1)))
    values = initial_values(prefilled, {"name": "AI", "ratio": "about 5"})
    assert values["name"] == "Pre"
    fields = {"type": "object", "properties": {"n": {"type": "integer", "default": 3}}}
    assert initial_values(fields, {"n": 7}) == {"n": 7}
    assert initial_values(fields, {"n": "about 5"}) == {"n": 3}
    assert initial_values(fields, {}) == {"n": 3}


def test_an_untouched_approval_stores_what_the_api_stores_and_corrects_nothing(
    bell: Bell, people: People
) -> None:
    by_browser = open_gate(bell, "test.untouched_model")
    by_api = open_gate(bell, "test.untouched_model")
    r = post_as_browser(logged_in(people.ana), by_browser)
    assert r.status_code == 302, r.context and r.context["edits_form"].errors
    assert api_decide(by_api, {"outcome": "approve", "edits": {}}).status_code == 200
    assert stored(by_browser) == stored(by_api)
    edits = stored(by_browser)
    assert edits["tags"] == ["a", " b "]  # not the default []
    assert edits["level"] == "high"  # not the default "low"
    assert edits["name"] == "  Ann Lee  "  # not trimmed
    assert edits["reply"] == "Hi Ann,\n\nWe refunded the double charge.\n"  # no \r, not trimmed
    assert edits["note"] is None and edits["sure"] is None  # not "" nor false
    assert corrections_of(by_browser) == [] and corrections_of(by_api) == []
    bell.drain()
    assert get_run(by_browser.run_id).output["edits"] == edits


SHAPES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "s_plain": {"type": "string"},
        "s_absent": {"type": "string"},
        "multi": {"type": "string", "format": "textarea"},
        "lines": {"type": "array", "items": {"type": "string"}},
        "e_null": {"enum": ["low", "high", None]},
        "flag": {"type": "boolean"},
        "maybe": {"type": ["boolean", "null"]},
        "num": {"type": "number"},
        "s_null": {"type": ["string", "null"]},
    },
    "required": ["flag"],
}
SHAPES_AI = {
    "s_plain": "  padded answer  ",
    "multi": "Dear customer,\r\rThanks.\n",
    "lines": ["a", " b ", ""],
    "e_null": None,
    "flag": False,
    "maybe": None,
    "num": 1e308,
    "s_null": "",
}


def test_untouched_values_of_every_shape_are_kept_as_they_were(bell: Bell, people: People) -> None:
    by_browser = open_gate(bell, payload=SHAPES_AI, fields=SHAPES)
    by_api = open_gate(bell, payload=SHAPES_AI, fields=SHAPES)
    assert post_as_browser(logged_in(people.ana), by_browser).status_code == 302
    assert api_decide(by_api, {"outcome": "approve", "edits": {}}).status_code == 200
    assert stored(by_browser) == stored(by_api)
    edits = stored(by_browser)
    assert {k: edits[k] for k in ("s_plain", "multi", "lines", "s_null", "maybe")} == {
        "s_plain": "  padded answer  ",
        "multi": "Dear customer,\r\rThanks.\n",
        "lines": ["a", " b ", ""],
        "s_null": "",
        "maybe": None,
    }
    assert edits["s_absent"] is None  # left out, as by the API: not ""
    assert corrections_of(by_browser) == []


def test_a_nullable_yes_no_is_a_three_way_choice(bell: Bell, people: People) -> None:
    gate = open_gate(bell, payload=SHAPES_AI, fields=SHAPES)
    html = page(logged_in(people.ana), gate)
    select = re.search(r'<select name="edit-maybe"[^>]*>(.*?)</select>', html, re.S)
    assert select is not None
    assert re.findall(r'<option value="([^"]*)"', select.group(1)) == ["", "true", "false"]
    assert post_as_browser(logged_in(people.ana), gate, maybe="false").status_code == 302
    assert stored(gate)["maybe"] is False
    assert corrections_of(gate) == [("maybe", None, False)]


def test_a_field_taken_off_the_page_keeps_its_value(bell: Bell, people: People) -> None:
    gate = open_gate(bell, payload=SHAPES_AI, fields=SHAPES)
    r = post_as_browser(logged_in(people.ana), gate, s_plain=None, lines=None, num=None)
    assert r.status_code == 302
    edits = stored(gate)
    assert (edits["s_plain"], edits["lines"]) == ("  padded answer  ", ["a", " b ", ""])
    assert same_json(edits["num"], 1e308)  # jsonb hands back 1e308 as 1000…0
    assert corrections_of(gate) == []


def test_text_typed_in_a_browser_is_stored_with_plain_line_breaks(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, payload=SHAPES_AI, fields=SHAPES)
    r = post_as_browser(
        logged_in(people.ana), gate, multi="Dear Ann,\r\nrefunded.\r\n", lines="x\r\n y\r\n"
    )
    assert r.status_code == 302
    edits = stored(gate)
    assert edits["multi"] == "Dear Ann,\nrefunded.\n"
    assert edits["lines"] == ["x", " y"]


def test_rejecting_an_untouched_multi_line_field_sends_no_edits(bell: Bell, people: People) -> None:
    gate = open_gate(bell, payload=SHAPES_AI, fields=SHAPES)
    assert post_as_browser(logged_in(people.ana), gate, outcome="reject").status_code == 302
    assert stored(gate) is None and corrections_of(gate) == []


def test_the_support_ticket_reply_is_sent_without_carriage_returns(
    bell: Bell, people: People
) -> None:
    reply = "Hi Ann,\n\nWe refunded the double charge today.\nBest regards,\nSupport"
    fields = {
        "type": "object",
        "properties": {"reply": {"type": "string", "title": "Reply", "default": reply}},
    }
    gate = open_gate(bell, payload={"summary": "s", "reply": reply}, fields=fields)
    c = logged_in(people.ana)
    assert post_as_browser(c, gate).status_code == 302
    assert stored(gate) == {"reply": reply} and corrections_of(gate) == []
    edited = open_gate(bell, payload={"summary": "s", "reply": reply}, fields=fields)
    assert post_as_browser(c, edited, reply="Hi Ann,\r\nDone.").status_code == 302
    assert stored(edited) == {"reply": "Hi Ann,\nDone."}


# --- choices ------------------------------------------------------------------------------------

CHOICE = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug"]},
        "level": {"enum": [1, 2, 3]},
    },
    "required": ["category", "level"],
}


def test_a_required_choice_without_a_value_starts_blank(bell: Bell, people: People) -> None:
    c = logged_in(people.ana)
    gate = open_gate(bell, payload={"summary": "s", "category": "billing-ish"}, fields=CHOICE)
    shown = browser_values(page(c, gate))
    assert shown["edit-category"] == "" and shown["edit-level"] == ""
    # Rejecting asks for nothing and records nothing made up.
    assert post_as_browser(c, gate, outcome="reject").status_code == 302
    assert stored(gate) is None and corrections_of(gate) == []
    # Approving needs a choice.
    gate = open_gate(bell, payload={"summary": "s"}, fields=CHOICE)
    r = post_as_browser(c, gate)
    assert r.status_code == 422
    errors = r.context["edits_form"].errors
    assert set(errors) == {"category", "level"}
    assert Gate.objects.get(pk=gate.pk).status == "open"
    assert post_as_browser(c, gate, category="bug", level="2").status_code == 302
    assert stored(gate) == {"category": "bug", "level": 2}
    # With a value, the value is selected and there is no blank to pick.
    gate = open_gate(bell, payload={"category": "bug", "level": 3}, fields=CHOICE)
    html = page(c, gate)
    assert browser_values(html) == {"edit-category": "bug", "edit-level": "3"}
    assert '<option value="">' not in html.split('name="edit-category"')[1].split("</select>")[0]


# --- numbers ------------------------------------------------------------------------------------

NUMBERS = {
    "type": "object",
    "properties": {"amount": {"type": "number", "title": "Amount"}, "n": {"type": "integer"}},
}


@pytest.mark.parametrize("typed", ["1,5", "1e309", "abc"])
def test_a_number_the_server_cannot_read_is_an_error_not_a_cleared_value(
    bell: Bell, people: People, typed: str
) -> None:
    gate = open_gate(bell, payload={"amount": 2.5, "n": 4}, fields=NUMBERS)
    html = page(logged_in(people.ana), gate)
    # Typed as text (a number input sends "" for what it cannot read, and 15 for "1,5").
    tag = re.search(r'<input[^>]*name="edit-amount"[^>]*>', html)
    assert tag is not None and 'type="text"' in tag.group(0) and "inputmode" in tag.group(0)
    r = post_as_browser(logged_in(people.ana), gate, amount=typed)
    assert r.status_code == 422
    assert "amount" in r.context["edits_form"].errors
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_a_blank_number_that_cannot_be_null_keeps_the_value_shown(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, payload={"amount": 2.5, "n": 4}, fields=NUMBERS)
    assert post_as_browser(logged_in(people.ana), gate, amount="", n=" 5 ").status_code == 302
    assert stored(gate) == {"amount": 2.5, "n": 5}


class Priced(pydantic.BaseModel):
    price: Decimal
    extra: dict[str, Any] = {}


@workflow(name="test.untouched_decimal")
def untouched_decimal_wf(ctx: Any) -> dict[str, Any]:
    d = ctx.review("Check the price", "", {"price": 12.5}, fields=Priced)
    return {"price": str(d.edits.price)}


def test_a_decimal_typed_in_the_form_keeps_its_digits(bell: Bell, people: People) -> None:
    gate = open_gate(bell, "test.untouched_decimal")
    c = logged_in(people.ana)
    assert post_as_browser(c, gate, price="12345678901234567890.12").status_code == 302
    assert stored(gate)["price"] == "12345678901234567890.12"
    bell.drain()
    assert get_run(gate.run_id).output == {"price": "12345678901234567890.12"}
    # A value refused elsewhere comes back as typed, digits and all.
    gate = open_gate(bell, "test.untouched_decimal")
    r = post_as_browser(c, gate, price="12345678901234567890.12", extra="[1,")
    assert r.status_code == 422
    assert 'name="edit-price"' in r.content.decode()
    assert "12345678901234567890.12" in r.content.decode()


# --- four eyes ----------------------------------------------------------------------------------


def test_the_second_approver_starts_from_the_first_approvers_correction(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, payload=TICKET, fields=TICKET_FIELDS, approvals=2)
    ana, ben = logged_in(people.ana), logged_in(people.ben)
    first = post_as_browser(ana, gate, category="billing", priority="1")
    assert first.status_code == 302
    html = page(ben, gate)
    shown = browser_values(html)
    assert shown["edit-priority"] == "1" and shown["edit-category"] == "billing"
    assert 'data-testid="edited-by"' in html and "edited by <bdi>ana</bdi>" in html
    assert 'data-testid="edited-note"' in html
    assert post_as_browser(ben, gate).status_code == 302
    gate.refresh_from_db()
    assert gate.status == "decided" and gate.edits["priority"] == 1
    bell.drain()
    assert get_run(gate.run_id).output["edits"]["priority"] == 1
    assert services.form_values(gate).corrected == ("priority",)
    # An approval that changed nothing says nothing of the kind.
    ai = {"category": "bug", "priority": 2}
    again = open_gate(bell, payload=ai, fields=TICKET_FIELDS, approvals=2)
    assert post_as_browser(ana, again).status_code == 302
    assert 'data-testid="edited-by"' not in page(ben, again)


# --- a run restarted under an open page ----------------------------------------------------------


def test_a_late_decision_gives_back_the_changed_fields_and_links_the_new_gate(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, payload={"amount": 2.5, "n": 4}, fields=NUMBERS)
    c = logged_in(people.ana)
    values = browser_values(page(c, gate))
    cancel(gate.run_id)
    bell.drain()
    restart(gate.run_id)
    bell.drain()
    new = Gate.objects.get(run_id=gate.run_id, status="open")
    gate.refresh_from_db()
    assert gate.status == "canceled"
    assert services.next_attempt(gate, people.ana) == new
    values.update({"edit-amount": "7.25", "comment": "checked the invoice"})
    r = c.post(f"/reviews/{gate.pk}/decide/", {**values, "outcome": "approve"})
    assert r.status_code == 409
    html = r.content.decode()
    unsent = html.split('data-testid="unsent-fields"')[1].split("</div>")[0]
    assert "Amount (not saved)" in unsent and "7.25" in unsent
    assert "N (not saved)" not in unsent
    assert "checked the invoice" in html
    link = html.split('data-testid="next-attempt"')[0].rsplit("<a ", 1)[1]
    assert f'href="/reviews/{new.pk}/"' in link
    assert "The run was restarted" in html.split('data-testid="next-attempt"')[1]


# --- the decided panel --------------------------------------------------------------------------


def test_decided_values_read_as_json_in_the_fields_order(bell: Bell, people: People) -> None:
    payload = {**AI, "name": "<b>Ann</b>", "ratio": 0.5}
    gate = open_gate(bell, "test.untouched_model", payload=payload)
    assert api_decide(gate, {"outcome": "approve", "edits": {}}).status_code == 200
    html = page(logged_in(people.ben), gate)
    panel = html.split('<dl class="kv rv-outcome">')[1].split("</dl>")[0]
    rows = re.findall(r'<dt>([^<]*)</dt><dd[^>]*data-testid="edit-value">(.*?)</dd>', panel, re.S)
    # The model's order (the database keeps its own: at, name, note, sure, tags, ...).
    assert [k for k, _ in rows] == list(Answer.model_fields)
    values = dict(rows)
    assert values["name"] == "&lt;b&gt;Ann&lt;/b&gt;"
    assert values["tags"] == "[&quot;a&quot;, &quot; b &quot;]"  # not ['a', ' b ']
    assert values["note"] == "null" and values["sure"] == "null"  # not None
    assert values["ratio"] == "0.5" and values["price"] == "12.5"
    assert values["reply"] == "Hi Ann,\n\nWe refunded the double charge.\n"  # pre-wrap


def test_a_bulk_closing_approval_keeps_the_first_approvers_correction(
    bell: Bell, people: People
) -> None:
    """The API's and the bulk action's closing approvals fill the fields they leave out from
    what the page shows, the first approver's correction included: they took the AI's value."""
    from reviews import bulk

    gate = open_gate(bell, payload=TICKET, fields=TICKET_FIELDS, approvals=2)
    assert post_as_browser(logged_in(people.ana), gate, priority="1").status_code == 302
    result = bulk.bulk_decide(people.ben, [gate.pk], outcome="approve")
    assert [g.pk for g in result.decided] == [gate.pk], result
    gate.refresh_from_db()
    assert gate.status == "decided" and gate.edits["priority"] == 1
