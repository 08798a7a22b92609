"""The API's run detail for compensation and budgets: the "compensating" status (also as a
list filter), what the run ends as, undo steps in the journal, and cost per generation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.api.conftest import Api, Persona
from tests.support import Bell
from tests.workflows import saga_workflows  # noqa: F401  (registers the saga workflows)
from workflows import cancel, get_run, restart, start

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_api_shows_the_compensating_status_and_what_the_run_ends_as(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.saga_wait", {"names": ["a"]}, tenant="acme")
    bell.settle()
    cancel(run.pk)
    body = api.get(f"/runs/{run.pk}", as_=service).json()
    assert (body["status"], body["after_compensation"]) == ("compensating", "canceled")
    listed = api.get("/runs?status=compensating", as_=service).json()
    assert [item["id"] for item in listed["items"]] == [str(run.pk)]
    steps = api.get(f"/runs/{run.pk}/steps", as_=service).json()
    assert steps
    bell.settle()
    body = api.get(f"/runs/{run.pk}", as_=service).json()
    assert (body["status"], body["after_compensation"]) == ("canceled", None)
    kinds = [s["kind"] for s in api.get(f"/runs/{run.pk}/steps", as_=service).json()]
    assert kinds[-1] == "compensate"


def test_run_detail_shows_cost_per_generation_with_its_budget(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.budget", {"n": 5}, max_cost=Decimal("0.50"), tenant="acme")
    bell.settle()
    assert get_run(run.pk).error["type"] == "BudgetExceeded"
    restart(run.pk, from_step=2, max_cost=Decimal("2.50"))
    bell.settle()
    body = api.get(f"/runs/{run.pk}", as_=service).json()
    assert body["status"] == "succeeded"
    assert body["generations"] == [
        {"generation": 1, "cost": 0.8, "run_total": 0.8, "max_cost": 0.5},
        # the budget caps the run's total, every generation counted: 2.4 of 2.5
        {"generation": 2, "cost": 1.6, "run_total": 2.4, "max_cost": 2.5},
    ]


def test_the_creating_request_is_still_the_same_request_after_a_restart_raised_the_budget(
    api: Api, service: Persona, bell: Bell
) -> None:
    """Found by review: an Idempotency-Key retry of the very request that created a run was a
    422 ("a different request body") once a restart had given the run a new max_cost."""
    body = {"pipeline": "test.budget", "input": {"n": 5}, "max_cost": 0.5}
    key = {"Idempotency-Key": "budget-1"}
    first = api.post("/runs", body, as_=service, headers=key)
    assert first.status_code == 201
    bell.settle()
    restarted = api.post(f"/runs/{first.json()['id']}/restart", {"max_cost": 2.5}, as_=service)
    assert restarted.status_code == 200, restarted.content
    again = api.post("/runs", body, as_=service, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = api.post("/runs", {**body, "max_cost": 2.5}, as_=service, headers=key)
    assert other.status_code == 422  # the run was not created with that body
