"""Careless and odd pipeline code, found by the twelfth session's review: an exception whose
``str()`` raises, a hook that raises a BaseException or is async, a retry policy that cannot
work, a lazy return value calling ctx, one name registered twice, and a child run's budget and
review timeout. Each fails where it is written, or fails its run with a clear message: never a
run replayed for ever, a hook run again, or a healthy run held back with a broken one.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from reviews.models import Gate
from tests.support import Bell
from workflows import RetryPolicy, get_run, record_usage, start, step, workflow
from workflows.core import executor
from workflows.core.calls import error_dict, is_retryable
from workflows.core.definitions import registered_workflows, unregister_workflow
from workflows.core.errors import InvalidInputError
from workflows.models import Run, Step

engine = pytest.mark.django_db(transaction=True)


class BrokenStr(Exception):
    """``__str__`` reads an attribute the code never set."""

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"  # type: ignore[attr-defined]


class BrokenRetryable(Exception):
    @property
    def retryable(self) -> bool:
        raise RuntimeError("no")


CALLS: list[str] = []


@step
def charge(x: int) -> int:
    CALLS.append(f"charge:{x}")
    return x


@workflow(name="test_edges.healthy")
def healthy(ctx: Any) -> int:
    return ctx.run(charge, 1)


@workflow(name="test_edges.broken_str")
def broken_str(ctx: Any) -> None:
    raise BrokenStr()


@step(retry=RetryPolicy(max_attempts=1))
def raises_broken(x: int) -> int:
    raise BrokenStr()


@workflow(name="test_edges.broken_step")
def broken_step(ctx: Any) -> int:
    return ctx.run(raises_broken, 1)


# --- an exception whose str() raises ----------------------------------------------------------


def test_error_dict_records_an_exception_whose_str_raises() -> None:
    err = error_dict(BrokenStr())
    assert err["type"] == "BrokenStr"
    assert err["message"] == "<str() of BrokenStr failed: AttributeError>"
    assert "BrokenStr" in err["traceback"]
    assert is_retryable(BrokenRetryable()) is False  # a property that raises: no paid retry


@engine
@pytest.mark.parametrize("name", ["test_edges.broken_str", "test_edges.broken_step"])
def test_a_run_whose_exception_cannot_be_shown_fails_once(bell: Bell, name: str) -> None:
    """Found by review: ``error_dict`` raised inside the handler's ``except``; the run was let
    go and replayed every doorbell grace, for ever, its step left running."""
    run = start(name, {})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["message"].startswith("step 'raises_broken' failed") or (
        run.error["message"] == "<str() of BrokenStr failed: AttributeError>"
    )
    assert not Step.objects.filter(run=run, status="running").exists()


@engine
def test_one_runs_unexpected_error_does_not_hold_back_its_burst(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: ``advance_many`` let every run of its burst go when one raised, so a
    healthy run re-rung with a broken one never finished, and its step ran on every pass."""
    CALLS.clear()
    good = start(healthy, {})
    bad = start(healthy, {})
    bell.lose_all()
    real = executor._run_handler

    def failing_for_bad(ctx: Any, run: Run) -> Any:
        if run.pk == bad.pk:
            raise RuntimeError("the database refused this run's write")
        return real(ctx, run)

    monkeypatch.setattr(executor, "_run_handler", failing_for_bad)
    counts = executor.advance_many([(bad.pk, bad.generation), (good.pk, good.generation)])
    assert counts.get("error") == 1
    assert get_run(good.pk).status == "succeeded" and CALLS == ["charge:1"]
    bad = get_run(bad.pk)
    assert bad.status in ("pending", "running") and bad.lease_owner == ""  # let go, for the sweep


# --- retry policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": -3}, "must be from 1"),
        ({"max_attempts": 0}, "must be from 1"),
        ({"max_attempts": 2.5}, "must be a whole number"),
        ({"max_attempts": True}, "must be a whole number"),
        ({"initial_backoff": math.nan}, "initial_backoff=nan"),
        ({"max_backoff": math.inf}, "max_backoff=inf"),
        ({"initial_backoff": -1}, "initial_backoff=-1"),
        ({"max_backoff": 1e12}, "a year"),
        ({"multiplier": 0.5}, "multiplier=0.5"),
    ],
)
def test_a_retry_policy_that_cannot_work_fails_where_it_is_written(
    kwargs: dict[str, Any], message: str
) -> None:
    """Found by review: ``max_attempts=-3`` failed at run time with an IntegrityError dumping
    the step's row into the run's error; NaN and infinite backoffs were taken."""
    with pytest.raises((ValueError, TypeError), match="RetryPolicy") as caught:
        RetryPolicy(**kwargs)
    assert message in str(caught.value)


def test_a_long_retry_policy_backs_off_at_its_cap_past_attempt_1024() -> None:
    """Found by review: ``2.0 ** 1024`` overflowed at attempt 1025 of a long-running policy,
    failing the run with an OverflowError and leaving its step running."""
    policy = RetryPolicy(max_attempts=5000, initial_backoff=0.5, max_backoff=60, jitter=False)
    assert policy.backoff(1025) == 60 and policy.backoff(4999) == 60
    assert policy.backoff(1) == 0.5


# --- on_complete hooks ------------------------------------------------------------------------

HOOK_CALLS: list[str] = []


def cancelled_hook(run: Run) -> None:
    HOOK_CALLS.append(str(run.pk))
    raise asyncio.CancelledError()


def broken_str_hook(run: Run) -> None:
    HOOK_CALLS.append(str(run.pk))
    raise BrokenStr()


async def async_hook(run: Run) -> None:  # pragma: no cover - refused at start
    HOOK_CALLS.append(str(run.pk))


not_a_hook = 42


@workflow(name="test_edges.plain")
def plain(ctx: Any) -> str:
    return "done"


@engine
@pytest.mark.parametrize("hook", ["cancelled_hook", "broken_str_hook"])
def test_a_hook_raising_a_base_exception_runs_once_and_the_run_ends(bell: Bell, hook: str) -> None:
    """Found by review: only ``Exception`` was caught around the hook, so an
    ``asyncio.CancelledError`` left the run running, and the hook ran on every replay."""
    HOOK_CALLS.clear()
    run = start(plain, {}, on_complete=f"{__name__}.{hook}")
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded" and HOOK_CALLS == [str(run.pk)]
    assert run.error["on_complete"].split(":")[0] in ("CancelledError", "BrokenStr")


@engine
@pytest.mark.parametrize(
    ("hook", "message"),
    [("async_hook", "is an async function"), ("not_a_hook", "is a int, not a function")],
)
def test_a_hook_that_cannot_work_is_refused_at_start(hook: str, message: str) -> None:
    """Found by review: an ``async def`` hook was called and never awaited (the run succeeded,
    the hook never ran); a value that is not callable failed only at the run's end."""
    with pytest.raises(InvalidInputError, match=message):
        start(plain, {}, on_complete=f"{__name__}.{hook}")
    assert not Run.objects.exists()


# --- a lazy return value ----------------------------------------------------------------------


@workflow(name="test_edges.lazy")
def lazy(ctx: Any) -> Any:
    return (ctx.run(charge, x) for x in range(2))


@engine
def test_a_lazy_return_value_calling_ctx_fails_with_what_to_do(bell: Bell) -> None:
    """Found by review: the generator ran the steps only when the output was stored, after
    the handler had returned; a retry then failed the run as non-deterministic."""
    CALLS.clear()
    run = start(lazy, {})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed" and CALLS == []
    assert "was called after the workflow handler returned" in run.error["message"]
    assert "make it a list inside the handler" in run.error["message"]


# --- one name, two modules --------------------------------------------------------------------


def test_a_second_module_cannot_take_a_registered_name() -> None:
    """Found by review: a module registering a taken name (a built-in's, or a lower version)
    silently took every new run, and runs in flight replayed its code."""

    def report(ctx: Any) -> str:
        return "a"

    def report_b(ctx: Any) -> str:  # the same name, another function
        return "b"

    first = workflow(name="test_edges.shared", version=2)(report)
    try:
        with pytest.raises(ValueError, match="is already registered by .*report"):
            workflow(name="test_edges.shared", version=1)(report_b)
        assert registered_workflows()["test_edges.shared"] is first
        again = workflow(name="test_edges.shared", version=3)(report)  # the same code, a new
        assert registered_workflows()["test_edges.shared"] is again  # version: a re-import
    finally:
        unregister_workflow("test_edges.shared")


# --- a child run's budget and review timeout --------------------------------------------------


@step
def costly(i: int) -> int:
    record_usage(cost=0.40)
    return i


@workflow(name="test_edges.child_spender")
def child_spender(ctx: Any) -> list[int]:
    return [ctx.run(costly, i) for i in range(5)]


@workflow(name="test_edges.parent_budget")
def parent_budget(ctx: Any) -> Any:
    return ctx.run_workflow(child_spender, {})


@engine
def test_a_child_spends_from_its_parents_budget(bell: Bell) -> None:
    """Found by review: a parent with max_cost 0.50 had its child spend $2.00 (the child had
    no budget), and the parent's cost read $0.00."""
    run = start(parent_budget, {}, max_cost=Decimal("0.50"))
    bell.settle()
    run = get_run(run.pk)
    child = Run.objects.get(parent_id=run.pk)
    assert child.max_cost == Decimal("0.50")
    assert child.status == "failed" and child.error["type"] == "BudgetExceeded"
    assert child.cost == Decimal("0.80")  # it stopped before its third paid step
    assert run.status == "failed" and run.cost == child.cost  # the child's cost is the parent's
    waited = Step.objects.get(run=run, kind="child")
    assert waited.cost == child.cost


@workflow(name="test_edges.child_gate")
def child_gate(ctx: Any) -> Any:
    return ctx.review(title="child check").outcome


@workflow(name="test_edges.parent_gate")
def parent_gate(ctx: Any) -> Any:
    return ctx.run_workflow(child_gate, {})


@engine
def test_a_childs_gates_get_the_parents_review_timeout(bell: Bell) -> None:
    run = start(parent_gate, {}, review_timeout=timedelta(hours=1))
    bell.settle()
    child = Run.objects.get(parent_id=run.pk)
    assert child.review_timeout == timedelta(hours=1)
    gate = Gate.objects.get(run=child)
    assert abs((gate.deadline - gate.created_at) - timedelta(hours=1)) < timedelta(seconds=5)


# --- odd arguments to ctx ---------------------------------------------------------------------


@workflow(name="test_edges.odd_call")
def odd_call(ctx: Any, case: str) -> Any:
    import datetime as dt

    calls: dict[str, Any] = {
        "sleep until a datetime": lambda: ctx.sleep(dt.datetime(2030, 1, 1)),
        "sleep NaN": lambda: ctx.sleep(math.nan),
        "sleep for ages": lambda: ctx.sleep(1e12),
        "sleep a string": lambda: ctx.sleep("1h"),
        "a long event name": lambda: ctx.wait_for_event("e" * 201),
        "an event timeout as text": lambda: ctx.wait_for_event("go", timeout="1h"),
        "an endless event timeout": lambda: ctx.wait_for_event("go", timeout=timedelta.max),
        "a bare step in parallel": lambda: ctx.parallel([charge]),
        "a run in parallel": lambda: ctx.parallel([ctx.run(charge, 1)]),
        "a long group": lambda: ctx.review(title="t", group="g" * 151),
        "a NaN gate timeout": lambda: ctx.review(title="t", group="reviewers", timeout=math.nan),
        "a NUL in the instruction": lambda: ctx.review(
            title="t", group="reviewers", instruction="a\x00b"
        ),
    }
    return calls[case]()


@engine
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("sleep until a datetime", "ctx.sleep() takes a timedelta or a number of seconds"),
        ("sleep NaN", "ctx.sleep() must be a finite duration"),
        ("sleep for ages", "ctx.sleep() must be a finite duration of at most ten years"),
        ("sleep a string", "ctx.sleep() takes a timedelta or a number of seconds, not str"),
        ("a long event name", "wait_for_event() needs an event name of 1 to 200 characters"),
        ("an event timeout as text", "wait_for_event(timeout=...) takes a timedelta"),
        ("an endless event timeout", "wait_for_event(timeout=...) must be a finite duration"),
        ("a bare step in parallel", "ctx.parallel() takes ctx.call(step, *args) items"),
        ("a run in parallel", "ctx.parallel() takes ctx.call(step, *args) items"),
        ("a long group", "(at most 150 characters)"),
        ("a NaN gate timeout", "a gate's timeout must be a finite duration"),
        ("a NUL in the instruction", "a gate's instruction may not contain a NUL"),
    ],
)
def test_odd_arguments_to_ctx_fail_the_run_naming_the_argument(
    bell: Bell, case: str, message: str
) -> None:
    """Found by review: these failed with Python's or the database's own words ("float()
    argument must be ...", "date value out of range", "value too long for type character
    varying(200)", "'StepDef' object has no attribute 'step'"), or not at all on SQLite."""
    run = start(odd_call, {"case": case})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert message in run.error["message"], run.error["message"]


@workflow(name="test_edges.child_spends_then_waits")
def child_spends_then_waits(ctx: Any) -> Any:
    ctx.run(costly, 1)
    return ctx.wait_for_event("go")


@workflow(name="test_edges.parent_of_waiting_child")
def parent_of_waiting_child(ctx: Any) -> Any:
    return ctx.run_workflow(child_spends_then_waits, {})


@engine
def test_a_canceled_parent_still_counts_what_its_child_spent(bell: Bell) -> None:
    """Found by review: the cancel closed the parent's waiting step before the child ended,
    so the child's $0.40 never reached the parent, and a restart's budget ignored it."""
    from workflows import cancel

    run = start(parent_of_waiting_child, {}, max_cost=Decimal("5"))
    bell.settle()
    child = Run.objects.get(parent_id=run.pk)
    assert child.cost == Decimal("0.40")
    cancel(run.pk)
    bell.settle()
    assert get_run(child.pk).status == "canceled"
    assert get_run(run.pk).cost == Decimal("0.40")


@workflow(name="test_edges.recurse")
def recurse(ctx: Any, n: int = 0) -> Any:
    return ctx.run_workflow("test_edges.recurse", {"n": n + 1})


@engine
def test_a_workflow_that_starts_itself_stops_at_the_depth_limit(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a workflow starting itself without a base case made runs for ever
    (600 nested runs in three drains)."""
    from workflows.core import context

    monkeypatch.setattr(context, "MAX_CHILD_DEPTH", 5)
    run = start(recurse, {})
    bell.settle()
    assert Run.objects.count() == 5
    deepest = Run.objects.get(input={"n": 4})
    assert deepest.status == "failed" and "6 levels deep; at most 5" in deepest.error["message"]
    assert get_run(run.pk).status == "failed"  # the failure climbs back up
