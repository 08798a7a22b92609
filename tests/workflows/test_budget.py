"""Usage and cost per step; a per-run budget stops the run cleanly before the next step."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests import sample_workflows as samples
from tests.sample_workflows import costly
from tests.support import Bell
from workflows import get_run, restart, start, workflow
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
