"""advance_many: a burst of runs advanced with one lease statement and one journal query."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import cancel, get_run, send_event, start
from workflows.core.executor import advance_many
from workflows.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def test_it_resumes_a_burst_and_ends_them_in_one_transaction(bell: Bell) -> None:
    runs = [start(samples.waiter, {}) for _ in range(6)]
    bell.drain()
    for run in runs:
        send_event(run.pk, "approved", {"by": str(run.pk)[:4]})
    bell.lose_all()  # the burst is resumed by one call, not by six doorbells
    with CaptureQueriesContext(connection) as queries:
        counts = advance_many([(r.pk, r.generation) for r in runs])
    assert counts == {"succeeded": 6}
    for run in runs:
        fresh = get_run(run.pk)
        assert fresh.status == "succeeded"
        assert fresh.output["event"] == {"by": str(run.pk)[:4]}
    # leases + journals + one end per run, not six queries per run
    assert len(queries) < 6 * 4


def test_it_skips_stale_generations_and_runs_it_cannot_take(bell: Bell) -> None:
    a = start(samples.waiter, {})
    b = start(samples.waiter, {})
    bell.drain()
    send_event(a.pk, "approved", {})
    cancel(b.pk)  # generation 2 now; the message below carries generation 1
    bell.lose_all()
    counts = advance_many([(a.pk, 1), (b.pk, 1)])
    assert counts == {"succeeded": 1}
    assert get_run(b.pk).status == "canceled"


def test_runs_that_must_wait_again_suspend(bell: Bell) -> None:
    run = start(samples.waiter, {})
    counts = advance_many([(run.pk, 1)])
    assert counts == {"suspended": 1}
    assert get_run(run.pk).status == "suspended"


def _burst(bell: Bell, n: int, on_complete: str = "") -> list[Run]:
    runs = [start(samples.waiter, {}, on_complete=on_complete) for _ in range(n)]
    bell.drain()
    for run in runs:
        send_event(run.pk, "approved", {})
    bell.lose_all()
    return runs


def test_a_burst_of_plain_ends_costs_the_same_statements_whatever_its_size(bell: Bell) -> None:
    """The runs that only have their run row to write end in one statement (PostgreSQL's
    ``end_runs``), with their hooks, in one transaction: no statement per run."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite ends each run with its own statement")
    counted = []
    for n in (3, 9):
        runs = _burst(bell, n)
        with CaptureQueriesContext(connection) as queries:
            assert advance_many([(r.pk, r.generation) for r in runs]) == {"succeeded": n}
        counted.append(len(queries))
        assert all(get_run(r.pk).status == "succeeded" for r in runs)
    assert counted[0] == counted[1]


def test_a_burst_whose_ends_fail_together_ends_its_runs_one_by_one(
    bell: Bell, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error while the burst's ends are written rolls that transaction back
    whole; each run then ends in its own savepoint, its on_complete once."""
    from tests.workflows import hooks
    from workflows.core.context import Context

    hooks.SEEN.clear()
    runs = _burst(bell, 4, on_complete="tests.workflows.hooks.record")
    real = Context.ended
    failed: list[object] = []

    def ended_once_broken(self: Context, *args: object, **kwargs: object) -> None:
        if not failed:
            failed.append(self.run_id)
            raise RuntimeError("lost the database mid-burst")
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Context, "ended", ended_once_broken)
    assert advance_many([(r.pk, r.generation) for r in runs]) == {"succeeded": 4}
    assert "ending them one by one" in caplog.text
    assert sorted(hooks.SEEN) == sorted((str(r.pk), "succeeded") for r in runs)
    for run in runs:
        fresh = get_run(run.pk)
        assert fresh.status == "succeeded" and fresh.lease_owner == ""
