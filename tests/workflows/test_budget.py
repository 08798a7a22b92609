"""Usage and cost per step; a per-run budget stops the run cleanly before the next step."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from tests import sample_workflows as samples
from tests.sample_workflows import costly
from tests.support import Bell
from workflows import cancel, get_run, record_usage, restart, start, step, workflow
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def test_usage_and_cost_are_journaled_and_summed_on_the_run(bell: Bell) -> None:
    run = start(samples.budget, {"n": 2})
    bell.drain()
    run = get_run(run.pk)
    assert run.cost == Decimal("0.8")
    step = Step.objects.get(run=run, position=1)
    assert step.usage == {"input_tokens": 100, "output_tokens": 20, "model": "offline"}
    assert step.cost == Decimal("0.4")


def test_a_budget_stops_the_run_before_the_step_that_would_exceed_it(bell: Bell) -> None:
    run = start(samples.budget, {"n": 5}, max_cost=Decimal("1.0"))
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "BudgetExceeded"
    assert "spent $1.2000 of its $1.0000 budget" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 3


@workflow(name="test.budget.map")
def budget_map(ctx: Any, n: int = 10) -> int:
    try:
        values = ctx.map(costly, list(range(n)), return_exceptions=True)
    except Exception:  # neither this nor return_exceptions may spend past the budget
        return -1
    return sum(v for v in values if isinstance(v, int))


def test_it_holds_the_cap_per_branch_of_a_fan_out(bell: Bell) -> None:
    run = start("test.budget.map", {"n": 10}, max_cost=Decimal("0.50"))
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "BudgetExceeded"
    assert "of its $0.5000 budget" in run.error["message"]
    assert "(8 of 10 branches not started)" in run.error["message"]
    # Branch 1 started while $0.40 < $0.50 was spent; no branch started after that.
    assert run.cost == Decimal("0.8")
    branches = Step.objects.filter(run=run, kind="branch")
    assert branches.filter(status="succeeded").count() == 2
    refused = branches.filter(status="failed")
    assert refused.count() == 8
    assert all(r.error["type"] == "BranchBudgetExceeded" for r in refused)
    assert all("was not started" in r.error["message"] for r in refused)


def test_it_counts_branches_in_flight_as_reserved(bell: Bell) -> None:
    from workflows.core.executor import budget_refusal

    run = start("test.budget.map", {"n": 4}, max_cost=Decimal("10"))
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    # A branch costs $0.40 on average. With $0.40 spent and two other branches in flight
    # ($0.80 reserved), a $1.00 cap is reached: the next branch must not start.
    rows = list(Step.objects.filter(run=run, kind="branch").order_by("branch"))
    Run.objects.filter(pk=run.pk).update(cost=Decimal("0.40"), max_cost=Decimal("1.00"))
    Step.objects.filter(pk__in=[rows[1].pk, rows[2].pk]).update(status="running", lease_owner="w1")
    assert "reserved by 2 branch(es) in flight" in budget_refusal(rows[3])
    Step.objects.filter(pk=rows[2].pk).update(status="succeeded", lease_owner="")
    assert budget_refusal(rows[3]) == ""  # $0.40 + $0.40 < $1.00


def test_a_restart_may_raise_the_cap(bell: Bell) -> None:
    run = start("test.budget.map", {"n": 10}, max_cost=Decimal("0.50"))
    bell.settle()
    assert get_run(run.pk).status == "failed"
    restart(run.pk, only_failed_branches=True, max_cost=Decimal("5"))
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.max_cost == Decimal("5")
    assert run.output == sum(range(1, 11))
    assert run.cost == Decimal("4.0")  # each branch paid once


@step
def paid_then_canceled(tag: str) -> int:
    """An LLM call that is paid for, while an operator cancels its run."""
    record_usage(cost=Decimal("2.0"), input_tokens=100, output_tokens=1)
    cancel(Run.objects.get(input__tag=tag).pk, "canceled while the call was in flight")
    return 1


@workflow(name="test_budget.inline_canceled")
def inline_canceled(ctx: Any, tag: str) -> int:
    return ctx.run(paid_then_canceled, tag)


@workflow(name="test_budget.branch_canceled")
def branch_canceled(ctx: Any, tag: str) -> Any:
    return ctx.map(paid_then_canceled, [tag])


@pytest.mark.parametrize("name", ["test_budget.inline_canceled", "test_budget.branch_canceled"])
def test_what_a_step_spent_while_its_run_was_canceled_is_counted(bell: Bell, name: str) -> None:
    """Found by review: the step's completion was refused (fenced out by the cancel), and its
    cost with it: the run, the step and the ops overview said $0, and a budget restarted
    after the cancel could spend past its cap."""
    run = start(name, {"tag": name})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "canceled"
    assert run.cost == Decimal("2.0")
    paid = Step.objects.get(run=run, name="paid_then_canceled")
    assert paid.cost == Decimal("2.0")


@step
def past_the_column(x: int) -> int:
    record_usage(cost=Decimal("60000000"))  # each is allowed; two make a run total too large
    return x


@workflow(name="test_budget.past_the_column")
def past_the_column_map(ctx: Any) -> Any:
    return ctx.map(past_the_column, [1, 2])


def test_a_branch_whose_cost_overflows_the_run_total_fails_once(bell: Bell) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores any decimal: no column range to pass")
    """Found by review: the run total past the cost column's range ($99,999,999.999999) made
    the fallback that records the step failed overflow again; the branch was run three times,
    paying each time, then blamed on a lost worker."""
    run = start(past_the_column_map, {})
    bell.settle()
    rows = list(Step.objects.filter(run=run, branch__gte=0).order_by("branch"))
    assert [r.attempt for r in rows] == [1, 1]
    assert sorted(r.status for r in rows) == ["failed", "succeeded"]
    failed = next(r for r in rows if r.status == "failed")
    assert failed.error["type"] == "DataError" and failed.error.get("outcome_not_stored")
    assert get_run(run.pk).status == "failed"
