"""A 422 names the first errors and counts the rest: it stays small however many there are.

Found by review: each error was listed twice (in ``message`` and ``details``), so an input of
120,000 unknown keys answered a 15.6 MB 422, and as many unknown edit fields 16.3 MB."""

from __future__ import annotations

from typing import Any

import pytest

from reviews.models import Gate
from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import start
from workflows.core.services import MAX_LISTED_ERRORS

pytestmark = pytest.mark.django_db(transaction=True)

MANY = 120_000
SMALL = 20_000  # bytes


def _unknown_keys(n: int = MANY, width: int = 6) -> dict[str, int]:
    return {f"k{i:0{width}d}": 0 for i in range(n)}


def _assert_counted(r: Any, code: str, total: int) -> list[dict[str, Any]]:
    assert r.status_code == 422, r.content[:500]
    assert error_code(r) == code
    assert len(r.content) < SMALL, len(r.content)
    error = r.json()["error"]
    details = error["details"]
    assert len(details) <= MAX_LISTED_ERRORS + 1
    *named, rest = details
    assert rest["type"] == "too_many_errors" and rest["count"] == total
    assert rest["message"] == f"and {total - len(named):,} more ({total:,} errors in all)"
    assert error["message"].endswith(rest["message"])
    # The errors named are the first ones, in the message as in the details.
    assert named and all(d["field"] in error["message"] for d in named)
    return named


def test_an_input_with_120000_unknown_keys_is_a_small_422_that_counts_them(
    api: Api, service: Persona
) -> None:
    r = api.post("/runs", {"pipeline": "test.chain", "input": _unknown_keys()}, as_=service)
    named = _assert_counted(r, "invalid_input", MANY)
    assert len(named) == MAX_LISTED_ERRORS
    assert named[0] == {
        "field": "k000000",
        "message": "Extra inputs are not permitted",
        "type": "extra_forbidden",
    }


def test_a_body_with_120000_unknown_fields_is_a_small_422_that_counts_them(
    api: Api, service: Persona
) -> None:
    """ninja's own validation (the request's schema), before any pipeline sees it."""
    r = api.post("/runs", {"pipeline": "test.chain", **_unknown_keys()}, as_=service)
    named = _assert_counted(r, "invalid_request", MANY)
    assert named[0]["location"] == "body"
    assert set(r.json()["error"]["details"][-1]) == {
        "field",
        "location",
        "message",
        "type",
        "count",
    }


def test_a_decision_with_120000_unknown_edit_fields_is_a_small_422_that_counts_them(
    api: Api, service: Persona, bell: Bell
) -> None:
    import tests.reviews.workflows  # noqa: F401  (registers test.review)

    fields = {"type": "object", "properties": {"note": {"type": "string"}}}
    run = start("test.review", {"fields": fields}, tenant="acme")
    bell.drain()
    gate = Gate.objects.get(run=run, status="open")
    body = {"outcome": "approve", "edits": _unknown_keys()}
    r = api.post(f"/gates/{gate.pk}/decision", body, as_=service)
    named = _assert_counted(r, "invalid_input", MANY)
    assert named[0]["message"] == "this is not one of the gate's editable fields"
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_long_field_names_are_named_fewer_at_a_time(api: Api, service: Persona) -> None:
    r = api.post(
        "/runs", {"pipeline": "test.chain", "input": _unknown_keys(40, width=2000)}, as_=service
    )
    named = _assert_counted(r, "invalid_input", 40)
    assert 1 < len(named) < 40


def test_a_few_errors_are_all_named_without_a_count(api: Api, service: Persona) -> None:
    r = api.post("/runs", {"pipeline": "test.chain", "input": _unknown_keys(3)}, as_=service)
    assert r.status_code == 422 and error_code(r) == "invalid_input"
    details = r.json()["error"]["details"]
    assert [d["field"] for d in details] == ["k000000", "k000001", "k000002"]
    assert "more" not in r.json()["error"]["message"]
