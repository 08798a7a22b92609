"""The run page says when a live run, or steps of it, have waited long for a worker.

Without it a run whose worker is down (or whose pool's queue nobody consumes) looked like a run
that is merely slow: "pending" and nothing else, while the ops overview and /readyz knew.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.operators.conftest import People
from tests.support import Bell
from workflows import restart, start
from workflows.models import Run, RunAudit, Step

pytestmark = pytest.mark.django_db(transaction=True)

URLS = ["https://example.test/a", "https://example.test/b", "https://example.test/c"]


def _page(people: People, user: object, run: Run) -> str:
    r = people.client(user).get(f"/runs/{run.pk}/")  # type: ignore[arg-type]
    assert r.status_code == 200
    return r.content.decode()


def _backdate_run(run: Run, minutes: float) -> None:
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=minutes))


def test_a_run_no_worker_took_says_so(bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": URLS}, tenant="acme")
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)  # just started

    _backdate_run(run, 3)
    page = _page(people, people.ops, run)
    assert 'data-testid="unstarted"' in page
    assert "Waiting for a worker for 3 min" in page
    assert "no worker has taken this run yet" in page
    # Operators are pointed at what tells them which queue has no worker.
    assert 'href="/ops/"' in page and 'href="/readyz"' in page

    # A reviewer of the tenant sees the run and the hint, not the operators' pages.
    reviewer = _page(people, people.ana, run)
    assert "no worker has taken this run yet" in reviewer
    assert 'href="/readyz"' not in reviewer and "tell an operator" in reviewer

    # The live poll carries it too (and drops it once a worker took the run).
    live = people.client(people.ops).get(
        f"/runs/{run.pk}/?partial=live", headers={"HX-Request": "true"}
    )
    assert 'data-testid="unstarted"' in live.content.decode()
    bell.drain(limit=1)
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)


def test_a_run_rung_again_and_not_taken_says_so(bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": URLS}, tenant="acme")
    bell.drain()  # to its first wave
    Run.objects.filter(pk=run.pk).update(
        status="running", wake_requested_at=timezone.now() - timedelta(minutes=2)
    )
    assert "Waiting for a worker for 2 min" in _page(people, people.ops, run)


def test_steps_nobody_started_are_counted(bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": URLS}, tenant="acme")
    bell.drain(limit=1)  # the run fans out; the branches' messages are never taken
    bell.lose_all()
    branches = Step.objects.filter(run=run, branch__gte=0, status="pending")
    assert branches.count() == 3
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)

    five = timezone.now() - timedelta(minutes=5)
    Step.objects.filter(run=run).update(created_at=five)
    Step.objects.filter(run=run, started_at__isnull=False).update(started_at=five)
    page = _page(people, people.ops, run)
    assert (
        "3 steps wait for a worker, and nothing of this run has started or finished for over 1 min"
        in page
    )
    assert "no worker has taken this run yet" not in page

    # Not counted: a branch held back by the run's parallelism cap.
    first, second, _third = branches.order_by("branch")
    Step.objects.filter(pk=first.pk).update(held=True)
    assert "2 steps wait for a worker" in _page(people, people.ops, run)

    # Nothing said while a step of the run runs (a long LLM call, its siblings queued behind a
    # pool's limit), or when one finished a moment ago (a branch released by it is just due).
    Step.objects.filter(pk=second.pk).update(
        status="running", started_at=timezone.now() - timedelta(minutes=10)
    )
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)
    Step.objects.filter(pk=second.pk).update(status="succeeded", finished_at=timezone.now())
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)


def test_a_restarted_run_counts_from_its_restart(bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": URLS, "sign_off": False}, tenant="acme")
    bell.settle()
    _backdate_run(run, 2 * 24 * 60)
    Step.objects.filter(run=run).update(created_at=timezone.now() - timedelta(days=2))
    restart(run.pk, from_step=1)
    assert Run.objects.get(pk=run.pk).status == "pending"
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)  # restarted just now
    RunAudit.objects.filter(run=run).update(created_at=timezone.now() - timedelta(minutes=3))
    assert "Waiting for a worker for 3 min" in _page(people, people.ops, run)


def test_a_run_a_worker_holds_is_not_waiting(bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": URLS}, tenant="acme")
    bell.drain()
    # An event rang for it while its worker works through long inline steps: rung, but held.
    Run.objects.filter(pk=run.pk).update(
        status="running",
        lease_owner="w1",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
        wake_requested_at=timezone.now() - timedelta(minutes=2),
    )
    assert "no worker has taken this run" not in _page(people, people.ops, run)
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert "Waiting for a worker for 2 min" in _page(people, people.ops, run)


def test_an_ended_run_says_nothing(bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": URLS, "sign_off": False}, tenant="acme")
    bell.settle()
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    _backdate_run(run, 10)
    Step.objects.filter(run=run).update(created_at=timezone.now() - timedelta(minutes=10))
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)


def test_a_long_grace_moves_the_threshold(bell: Bell, people: People, settings: object) -> None:
    settings.SLUICE_DOORBELL_GRACE_SECONDS = 60  # type: ignore[attr-defined]
    run = start("docs.analyze", {"urls": URLS}, tenant="acme")
    _backdate_run(run, 3)  # under four graces
    assert 'data-testid="unstarted"' not in _page(people, people.ops, run)
    _backdate_run(run, 5)
    assert "Waiting for a worker for 5 min" in _page(people, people.ops, run)
