"""Restart options over the API: a new budget (``max_cost``) and re-running only the failed
branches of a fan-out; a negative budget is a 422 in the API's error shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.api.conftest import Api, Persona, error_code
from tests.sample_workflows import costly
from tests.support import Bell
from workflows import get_run, start, workflow
from workflows.models import Step

pytestmark = pytest.mark.django_db(transaction=True)


@workflow(name="test.api.budget_map")
def budget_map(ctx: Any, n: int) -> int:
    return sum(ctx.map(costly, list(range(n))))


def test_a_restart_raises_the_budget_and_reruns_only_the_refused_branches(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.api.budget_map", {"n": 6}, tenant="acme", max_cost=Decimal("0.50"))
    bell.settle()
    assert get_run(run.pk).error["type"] == "BudgetExceeded"
    r = api.post(
        f"/runs/{run.pk}/restart",
        {"only_failed_branches": True, "max_cost": "3.00", "reason": "approved overspend"},
        as_=service,
    )
    assert r.status_code == 200, r.content
    assert r.json()["max_cost"] == 3.0
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded" and run.cost == Decimal("2.4")
    assert Step.objects.filter(run=run, kind="branch", superseded=True).count() == 4


def test_a_negative_budget_is_a_422(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.chain", {"n": 1}, tenant="acme")
    bell.settle()
    r = api.post(f"/runs/{run.pk}/restart", {"max_cost": "-1"}, as_=service)
    assert r.status_code == 422
    assert error_code(r) == "invalid_request"
