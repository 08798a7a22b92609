"""The run page for compensation and budgets: a compensating run
says so, undo entries are labelled, cost is shown per generation against each generation's
budget, and the restart form takes a new budget (bad amounts are form errors, nothing lost)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.operators.conftest import People
from tests.operators.scenes import settle
from tests.support import Bell
from tests.workflows import saga_workflows  # noqa: F401  (registers the saga workflows)
from workflows import cancel, get_run, restart, start
from workflows.models import RunAudit

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_compensating_run_says_so_and_its_undos_are_labelled(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    run = start("test.saga_wait", {"names": ["flight", "hotel"]})
    settle(bell)
    cancel(run.pk, "plans changed")
    page = c.get(f"/runs/{run.pk}/").content.decode()
    assert 'badge-compensating">compensating<' in page
    assert "Compensating: undoing the completed steps, last completed first." in page
    assert "it ends canceled once the undos ran" in page
    listed = c.get("/runs/?status=compensating").content.decode()
    assert str(run.pk)[:8] in listed
    settle(bell)
    page = c.get(f"/runs/{run.pk}/").content.decode()
    assert get_run(run.pk).status == "canceled"
    assert page.count("undo: unbook") >= 4  # two timeline entries, two journal rows
    assert "Compensated: the undos of its completed steps ran" in page


def test_restart_form_takes_a_new_budget_and_cost_shows_per_generation(
    people: People, bell: Bell
) -> None:
    c = people.client(people.ops)
    run = start("test.budget", {"n": 5}, max_cost=Decimal("0.50"), tenant="acme")
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["type"] == "BudgetExceeded"
    r = c.post(
        f"/runs/{run.pk}/actions/restart/",
        {"from_step": "2", "max_cost": "2.50", "reason": "approved"},
        follow=True,
    )
    assert "restarted from step 2" in r.content.decode()
    run = get_run(run.pk)
    assert (run.generation, run.max_cost) == (2, Decimal("2.5"))
    assert RunAudit.objects.get(run=run).max_cost == Decimal("0.5")  # generation 1's cap
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    page = c.get(f"/runs/{run.pk}/")
    gens = [(g.generation, g.spent, g.cap) for g in page.context["generations"]]
    assert gens == [(1, Decimal("0.8"), Decimal("0.5")), (2, Decimal("1.6"), Decimal("2.5"))]
    html = page.content.decode()
    assert "Cost per generation" in html and 'class="budget"' in html


@pytest.mark.parametrize("bad", ["NaN", "-1", "Infinity", "abc", "1e400", "0.0000001"])
def test_a_bad_budget_on_the_restart_form_is_a_form_error_and_changes_nothing(
    people: People, bell: Bell, bad: str
) -> None:
    c = people.client(people.ops)
    run = start("test.refuse", {}, max_cost=Decimal("1.00"))
    settle(bell)
    r = c.post(f"/runs/{run.pk}/actions/restart/", {"from_step": "1", "max_cost": bad}, follow=True)
    assert r.status_code == 200
    assert "new budget (max_cost):" in r.content.decode()
    run = get_run(run.pk)
    assert (run.status, run.generation, run.max_cost) == ("failed", 1, Decimal("1.00"))
    assert not RunAudit.objects.filter(run=run).exists()


def test_retry_of_a_compensated_run_starts_at_its_first_undone_step(
    people: People, bell: Bell
) -> None:
    c = people.client(people.ops)
    run = start("test.saga", {"names": ["flight", "hotel"]})
    settle(bell)
    page = c.get(f"/runs/{run.pk}/")
    assert page.context["failed_position"] == 1  # step 3 failed, but 1 and 2 were undone
    assert page.context["positions"] == [1, 2, 3]  # undo entries are no restart points
    r = c.post(f"/runs/{run.pk}/actions/retry/", follow=True)
    assert "retrying from step 1" in r.content.decode()
    assert get_run(run.pk).generation == 2


def test_a_canceled_run_without_a_budget_shows_no_cost_card(people: People, bell: Bell) -> None:
    """Found by review: a cancel opens a generation too, so a run only canceled showed "Cost
    per generation" with two rows of $0: the card is for a budget, or a restarted run."""
    c = people.client(people.ops)
    run = start("test.event", {}, tenant="acme")
    settle(bell)
    cancel(run.pk)
    assert get_run(run.pk).generation == 2
    assert "Cost per generation" not in c.get(f"/runs/{run.pk}/").content.decode()
    restart(run.pk)
    assert "Cost per generation" in c.get(f"/runs/{run.pk}/").content.decode()
