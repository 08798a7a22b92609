"""advance_many: a burst of runs advanced with one lease statement and one journal query."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import cancel, get_run, send_event, start
from workflows.core.executor import advance_many

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
