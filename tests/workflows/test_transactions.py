"""``start()`` inside the caller's transaction: a run started in a transaction that rolls back
never runs (no row, no doorbell), one that commits always runs (the doorbell rings on commit,
and if that message is lost the sweep rings again: nothing stays pending).

The core tests run on SQLite (and on PostgreSQL when the suite does); the integration test at
the end uses PostgreSQL with a real worker, holding the transaction open while the worker
polls, so a doorbell rung before the commit would be seen to do harm.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

import tests.workflows.hooks_tx  # noqa: F401  (the on_complete hooks)
from tests import sample_workflows as samples
from tests.live import wait_until
from tests.support import Bell
from workflows import get_run, start
from workflows.core.sweeper import sweep
from workflows.models import Run


class Boom(Exception):
    pass


def advances(bell: Bell) -> list[Any]:
    return [args for kind, args in bell.sent if kind == "advance"]


@pytest.mark.core
@pytest.mark.django_db(transaction=True)
def test_a_start_in_a_transaction_that_rolls_back_never_runs(bell: Bell) -> None:
    ids = []
    with pytest.raises(Boom), transaction.atomic():
        ids.append(start(samples.chain, {"n": 2}).pk)
        assert Run.objects.filter(pk=ids[0]).exists()  # visible inside, as usual
        assert bell.sent == []  # nothing rung before the commit
        raise Boom
    assert not Run.objects.filter(pk=ids[0]).exists()
    assert bell.sent == []  # and nothing after the rollback either
    bell.settle()  # the sweep finds nothing to run
    assert Run.objects.count() == 0


@pytest.mark.core
@pytest.mark.django_db(transaction=True)
def test_a_start_in_a_savepoint_that_rolls_back_never_runs(bell: Bell) -> None:
    with transaction.atomic():
        kept = start(samples.chain, {"n": 1})
        try:
            with transaction.atomic():
                start(samples.chain, {"n": 5}, idempotency_key="rolled-back")
                raise Boom
        except Boom:
            pass
    assert advances(bell) == [(str(kept.pk), 1)]
    bell.settle()
    assert get_run(kept.pk).status == "succeeded"
    assert list(Run.objects.values_list("pk", flat=True)) == [kept.pk]
    # The key of the rolled-back start is free again.
    again = start(samples.chain, {"n": 5}, idempotency_key="rolled-back")
    bell.settle()
    assert get_run(again.pk).output == 5


@pytest.mark.core
@pytest.mark.django_db(transaction=True)
def test_a_committed_start_always_runs_even_when_its_doorbell_is_lost(bell: Bell) -> None:
    with transaction.atomic():
        run = start(samples.chain, {"n": 3})
        assert bell.sent == []
    assert advances(bell) == [(str(run.pk), 1)]  # rung once, on commit
    bell.lose_all()  # the broker lost it (flushed, down at commit)
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(minutes=5))
    sweep()  # the sweep finds the pending run in the table and rings again
    bell.settle()
    run = get_run(run.pk)
    assert (run.status, run.output) == ("succeeded", 3)


@pytest.mark.core
@pytest.mark.django_db(transaction=True)
def test_a_run_started_by_on_complete_commits_with_the_runs_end(bell: Bell) -> None:
    """on_complete runs in the transaction that ends the run (in a savepoint): a run it starts
    exists exactly when the hook succeeded."""
    ok = start(samples.chain, {"n": 1}, on_complete="tests.workflows.hooks_tx.start_follow_up")
    bad = start(
        samples.chain, {"n": 1}, on_complete="tests.workflows.hooks_tx.start_follow_up_then_fail"
    )
    bell.settle()
    assert get_run(ok.pk).status == "succeeded"
    assert get_run(bad.pk).status == "succeeded"
    assert "the hook failed" in get_run(bad.pk).error["on_complete"]
    follow_up = Run.objects.get(idempotency_key=f"follow-up-{ok.pk}")
    assert get_run(follow_up.pk).status == "succeeded"
    assert not Run.objects.filter(idempotency_key=f"follow-up-{bad.pk}").exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_on_real_workers_a_rolled_back_start_never_runs_and_a_committed_one_does(
    live: Any,
) -> None:
    live.worker()
    live.beat()  # the sweep runs too: it must not find the rolled-back run either
    with pytest.raises(Boom), transaction.atomic():
        doomed = start(samples.chain, {"n": 2})
        time.sleep(1.5)  # the worker and the sweep are polling meanwhile
        raise Boom
    with transaction.atomic():
        run = start(samples.chain, {"n": 4})
        time.sleep(1.5)
        # Uncommitted: no worker could have taken it (the doorbell waits for the commit).
        assert Run.objects.get(pk=run.pk).status == "pending"
    run = wait_until(lambda: get_run(run.pk).is_terminal and get_run(run.pk), 60, message="run")
    assert (run.status, run.output) == ("succeeded", 4)
    time.sleep(2)  # a sweep pass or two after the commit
    assert not Run.objects.filter(pk=doomed.pk).exists()
    assert Run.objects.count() == 1
    assert str(doomed.pk) not in live.logs()
