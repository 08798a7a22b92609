"""Gates and decisions given what they cannot use: a fields schema no validator can be built
from, edits nested deeper than JSON can be stored, a blank optional field. Each is a clear
error on the field (or a clear run failure), never a 500 nor a gate nobody can close."""

from __future__ import annotations

from typing import Any

import pytest

from reviews.models import Gate
from reviews.schema import schema_of
from reviews.services import InvalidDecisionError, decide_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import get_run, start

pytestmark = [pytest.mark.django_db(transaction=True)]

BROKEN = {
    "pattern": ({"type": "string", "pattern": "["}, "unclosed character class"),
    "minimum": ({"type": "integer", "minimum": "x"}, "minimum must be a number"),
    "maxLength": ({"type": "string", "maxLength": "5"}, "maxLength must be a whole number"),
    # Found by make test-long: a decision without edits stored "" for an integer field.
    "default": ({"type": "integer", "default": ""}, "is not of the field's type"),
    "coerced default": ({"type": "integer", "default": "5"}, "is not of the field's type"),
}


def _fields(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"note": {"type": "string"}, "a": prop}}


@pytest.mark.parametrize("case", BROKEN)
def test_a_schema_no_validator_can_be_built_from_fails_the_run_naming_the_field(
    bell: Bell, case: str
) -> None:
    prop, why = BROKEN[case]
    with pytest.raises(ValueError, match=why) as exc:
        schema_of(_fields(prop))
    assert exc.value.field == "a"  # type: ignore[attr-defined]
    run = start("test.review", {"fields": _fields(prop)})
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert "field 'a' of the gate's fields schema is invalid" in run.error["message"]
    assert why in run.error["message"]
    assert not Gate.objects.exists()


def _gate_with_broken_schema(bell: Bell, prop: dict[str, Any]) -> Gate:
    """A gate opened before schemas were checked when a gate opens: the bad schema is stored."""
    gate = open_gate(bell, fields=_fields({"type": "string"}))
    Gate.objects.filter(pk=gate.pk).update(fields_schema=_fields(prop))
    return Gate.objects.get(pk=gate.pk)


@pytest.mark.parametrize("case", ["pattern", "minimum"])
def test_a_stored_broken_schema_is_a_decision_error_and_the_gate_can_still_close(
    bell: Bell, people: People, case: str
) -> None:
    gate = _gate_with_broken_schema(bell, BROKEN[case][0])
    with pytest.raises(InvalidDecisionError) as exc:
        decide_gate(gate.pk, outcome="approve", edits={"a": "x"}, actor="ana", user=people.ana)
    assert [e["field"] for e in exc.value.errors] == ["a"]
    assert "cannot be edited" in exc.value.errors[0]["message"]
    # The web form: the page loads, the error sits on the field, the gate stays open.
    from django.test import Client

    c = Client()
    c.force_login(people.ana)
    assert c.get(f"/reviews/{gate.pk}/").status_code == 200
    r = c.post(
        f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "edit-note": "n", "edit-a": "7"}
    )
    assert r.status_code == 422
    assert "cannot be edited" in " ".join(r.context["edits_form"].errors["a"])
    assert Gate.objects.get(pk=gate.pk).status == "open"
    # Deciding without edits still closes it, and the run finishes.
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    bell.drain()
    assert get_run(gate.run_id).status == "succeeded"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize("depth", [300, 3000])
def test_edits_nested_too_deep_to_store_are_a_decision_error(
    bell: Bell, people: People, depth: int
) -> None:
    gate = open_gate(bell, fields={"type": "object", "properties": {"extra": {"type": "object"}}})
    with pytest.raises(InvalidDecisionError) as exc:
        decide_gate(
            gate.pk, outcome="approve", edits={"extra": _nested(depth)}, actor="ana", user=None
        )
    assert [e["field"] for e in exc.value.errors] == ["extra"]
    assert Gate.objects.get(pk=gate.pk).status == "open"
    decide_gate(gate.pk, outcome="approve", edits={"extra": _nested(20)}, actor="ana", user=None)
    bell.drain()
    assert get_run(gate.run_id).output["edits"] == {"extra": _nested(20)}


OPTIONAL = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 4},
        "ratio": {"type": "number", "default": 0.5},
        "mood": {"type": "string", "enum": ["calm", "angry"]},
        "level": {"enum": [1, 2]},
        "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": 3},
    },
    "required": ["sentiment"],
}


def test_a_blank_optional_field_means_not_edited_as_over_the_api(
    bell: Bell, people: People
) -> None:
    # The API accepts a decision that omits "priority"; the web form sent null for the blank
    # input, and the gate answered 422 "input should be a valid integer".
    from django.test import Client

    gate = open_gate(bell, fields=OPTIONAL, payload={"summary": "s"})
    c = Client()
    c.force_login(people.ana)
    r = c.post(
        f"/reviews/{gate.pk}/decide/",
        {
            "outcome": "approve",
            "edit-sentiment": "negative",
            "edit-priority": "",
            "edit-ratio": "",
            "edit-mood": "",
            "edit-level": "",
            "edit-maybe": "",
        },
    )
    assert r.status_code == 302, r.context and r.context["edits_form"].errors
    bell.drain()
    edits = get_run(gate.run_id).output["edits"]
    # Left out: the schema's default (or null where there is none); a nullable field
    # left blank is cleared.
    assert edits == {
        "sentiment": "negative",
        "priority": None,
        "ratio": 0.5,
        "mood": None,
        "level": None,
        "maybe": None,
    }
