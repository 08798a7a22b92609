"""Usage and cost per step; a per-run budget stops the run cleanly before the next step."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.support import Bell
from workflows import get_run, start
from workflows.models import Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def test_usage_and_cost_are_journaled_and_summed_on_the_run(bell: Bell) -> None:
    run = start("test.budget", {"n": 2})
    bell.drain()
    run = get_run(run.pk)
    assert run.cost == Decimal("0.8")
    step = Step.objects.get(run=run, position=1)
    assert step.usage == {"input_tokens": 100, "output_tokens": 20, "model": "offline"}
    assert step.cost == Decimal("0.4")


def test_a_budget_stops_the_run_before_the_step_that_would_exceed_it(bell: Bell) -> None:
    run = start("test.budget", {"n": 5}, max_cost=Decimal("1.0"))
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "BudgetExceeded"
    assert "spent $1.2000 of its $1.0000 budget" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 3
