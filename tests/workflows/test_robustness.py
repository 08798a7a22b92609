"""Failures of the machinery itself: nothing wedges, nothing is lost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core.pools import clear_cache
from workflows.models import Pool, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@step
def nul_text() -> str:
    return "before\x00after"


@workflow(name="test.nul")
def nul_wf(ctx: Any) -> str:
    return ctx.run(nul_text)


@workflow(name="test.bad_child_caught")
def bad_child_caught(ctx: Any) -> int:
    first = ctx.run(samples.add_one, 1)
    try:
        ctx.run_workflow(samples.chain, {"n": "not a number"})
    except Exception:
        pass
    return first


def test_a_value_the_database_cannot_store_fails_the_step_cleanly(bell: Bell) -> None:
    run = start(nul_wf, {})
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    step = Step.objects.get(run=run)
    assert step.status == "failed"
    assert "NUL character" in step.error["message"]


def test_an_error_escaping_an_advance_lets_go_of_the_run(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workflows.core import executor

    run = start(samples.chain, {"n": 1})

    def explode(*args: Any) -> str:
        raise RuntimeError("database went away")

    with monkeypatch.context() as patch:
        patch.setattr(executor, "_replay", explode)
        with pytest.raises(RuntimeError):
            bell.drain()
    fresh = Run.objects.get(pk=run.pk)
    assert fresh.lease_owner == "" and fresh.wake_requested_at is not None
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(seconds=60))
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


def test_a_rolled_back_write_keeps_the_results_it_carried(bell: Bell) -> None:
    """A step's result rides on the next commit; if that transaction rolls back (here: a
    child run with bad input), the result is written with the one after."""
    run = start(bad_child_caught, {})
    bell.drain()
    run = get_run(run.pk)
    assert (run.status, run.output) == ("succeeded", 2)
    step = Step.objects.get(run=run, position=1)
    assert (step.status, step.result, step.attempt) == ("succeeded", 2, 1)


def test_an_expired_reservation_is_not_claimed(bell: Bell) -> None:
    from workflows.core.executor import claim_step

    clear_cache()
    Pool.objects.create(name="limited", max_concurrency=1)
    run = start(samples.limited, {"n": 1})
    bell.drain(limit=1)
    bell.lose_all()
    row = Step.objects.get(run=run, branch=0)
    assert row.lease_owner == "(reserved)"
    Step.objects.filter(pk=row.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert claim_step(row.pk, "late-worker") is None
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [300, 5000])
def test_a_value_nested_too_deep_to_store_is_an_input_error(bell: Bell, depth: int) -> None:
    # pydantic_core gives up past ~255 levels with a plain ValueError, which start and
    # send_event let through (a 500 for their callers) instead of an InvalidInputError.
    from workflows import send_event
    from workflows.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="cannot be stored as JSON"):
        start(samples.waiter, {"note": _nested(depth)})
    assert not Run.objects.exists()
    run = start(samples.waiter, {})
    bell.drain()
    with pytest.raises(InvalidInputError, match="cannot be stored as JSON"):
        send_event(run.pk, "approved", {"by": _nested(depth)})
    send_event(run.pk, "approved", {"by": _nested(50)})  # deep, but storable
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output["event"] == {"by": _nested(50)}


def test_a_lone_surrogate_is_an_input_error_not_a_database_error(bell: Bell) -> None:
    # PostgreSQL's jsonb refuses "\ud800" (a DataError when the run row was inserted); a
    # character outside the BMP, sent as a surrogate pair, is fine.
    from workflows import send_event
    from workflows.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="lone surrogate"):
        start(samples.waiter, {"note": "half an emoji \ud83d"})
    run = start(samples.waiter, {})
    bell.drain()
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        send_event(run.pk, "approved", {"by": "\udfff"})
    send_event(run.pk, "approved", {"by": "\U0001f600"})
    bell.drain()
    assert get_run(run.pk).output["event"] == {"by": "\U0001f600"}
