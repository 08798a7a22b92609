"""The Python ``start()`` and ``send_event()`` passed unchecked text and context straight to
the database: a NUL, a lone surrogate or NaN in the context, a NUL or an over-long idempotency
key, tenant or event name gave PostgreSQL's ``DataError`` (SQLite stored them), a 5,000-digit
integer a bare ``ValueError``, and a 50 MB context was stored in the run row, past the 8 MB
hard limit (invariant 10). The JSON API checks its own fields; these are for Python callers."""

from __future__ import annotations

from typing import Any

import pytest

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import send_event, start
from workflows.core.errors import InvalidInputError, PayloadTooLargeError
from workflows.models import Event, Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    "options,field",
    [
        ({"context": {"a": "\x00"}}, "context"),
        ({"context": {"a": "\ud800"}}, "context"),
        ({"context": {"a": float("nan")}}, "context"),
        ({"context": {"a": 10**5000}}, "context"),
        ({"idempotency_key": "a\x00"}, "idempotency_key"),
        ({"idempotency_key": "x" * 300}, "idempotency_key"),
        ({"idempotency_key": "\ud800"}, "idempotency_key"),
        ({"tenant": "t" * 101}, "tenant"),
        ({"tenant": "a\x00"}, "tenant"),
        ({"created_by": "u" * 151}, "created_by"),
    ],
)
def test_a_start_with_text_no_column_stores_is_an_input_error(
    options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        start(samples.chain, {"n": 1}, **options)
    assert caught.value.errors[0]["field"] == field
    assert not Run.objects.exists()


def test_a_context_over_the_hard_limit_is_refused(settings: Any) -> None:
    settings.SLUICE_PAYLOAD_HARD_LIMIT = 10_000
    with pytest.raises(PayloadTooLargeError, match="context"):
        start(samples.chain, {"n": 1}, context={"a": "x" * 20_000})
    assert not Run.objects.exists()


def test_text_a_column_stores_still_starts(bell: Bell) -> None:
    run = start(
        samples.chain,
        {"n": 1},
        context={"note": "ünïcode 😀 \\u0000 shown, not a NUL"},
        idempotency_key="k" * 255,
        tenant="t" * 100,
    )
    bell.settle()
    assert Run.objects.get(pk=run.pk).status == "succeeded"


@pytest.mark.parametrize("name", ["appr\x00oved", "x" * 201, "\ud800", 7])
def test_an_event_name_no_column_stores_is_an_input_error(bell: Bell, name: Any) -> None:
    run = start(samples.waiter, {})
    bell.settle()
    with pytest.raises(InvalidInputError) as caught:
        send_event(run.pk, name, {})
    assert caught.value.errors[0]["field"] == "name"
    assert not Event.objects.exists()
