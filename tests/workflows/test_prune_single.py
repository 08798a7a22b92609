"""One prune at a time, for a bounded time, and expired sessions go with it (found by review):
a prune drained its whole backlog in one task while the beat sent the next every hour, so two
or more ran at once, holding the default queue's worker slots; and nothing deleted expired web
sessions."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.test import override_settings
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import start
from workflows.core import sweeper
from workflows.core.sweeper import PRUNE_LEASE, prune, take_lease
from workflows.models import Lease, Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def _old_runs(bell: Bell, n: int) -> list[Run]:
    runs = [start(samples.chain, {"n": 1}) for _ in range(n)]
    bell.drain()
    Run.objects.update(finished_at=timezone.now() - timedelta(days=2))
    return runs


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_second_prune_returns_at_once_saying_so(
    bell: Bell, caplog: pytest.LogCaptureFixture
) -> None:
    _old_runs(bell, 2)
    assert take_lease(PRUNE_LEASE, "another-worker") is None  # a prune going on elsewhere
    with caplog.at_level(logging.INFO, logger="workflows.core.sweeper"):
        assert prune() == 0
    assert Run.objects.count() == 2
    assert "another prune (another-worker) holds the lease" in caplog.text
    # Its lease ran out (its worker died): the next prune takes it over.
    Lease.objects.filter(name=PRUNE_LEASE).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert prune() == 2
    assert Lease.objects.get(name=PRUNE_LEASE).owner == ""  # released


@override_settings(SLUICE_RETENTION_DAYS=1, SLUICE_PRUNE_BATCH=1, SLUICE_PRUNE_DUTY=1)
def test_two_prunes_at_once_do_not_overlap(bell: Bell, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    _old_runs(bell, 3)
    store = sweeper.storage()
    real = type(store).prune
    inside, go = threading.Event(), threading.Event()

    def slow(self: Any, *args: Any, **kwargs: Any) -> int:
        inside.set()
        go.wait(10)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(store), "prune", slow)
    first: list[int] = []

    def beat() -> None:
        try:
            first.append(prune())
        finally:
            connection.close()

    worker = threading.Thread(target=beat)
    worker.start()
    try:
        assert inside.wait(10)
        assert prune() == 0  # the next hour's beat, while the first still works
    finally:
        go.set()
        worker.join()
    assert first == [3]
    assert not Run.objects.exists()


@override_settings(SLUICE_RETENTION_DAYS=1, SLUICE_PRUNE_BATCH=1, SLUICE_PRUNE_DUTY=0.5)
def test_a_prune_stops_after_its_budget_and_the_next_goes_on(
    bell: Bell, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _old_runs(bell, 5)
    clock = iter(float(i) for i in range(1000))  # each batch "takes" one second
    monkeypatch.setattr(sweeper, "_clock", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr(sweeper, "_rest", slept.append)
    # A batch (1 s) and its rest (1 s): two batches fit in 5 s, not a third and its rest.
    with override_settings(SLUICE_PRUNE_MAX_SECONDS=5), caplog.at_level(logging.INFO):
        assert prune() == 2
        assert "the next prune goes on" in caplog.text
        assert slept == [1.0]  # no rest after the last batch: it stopped instead
        assert prune() == 2
        assert prune() == 1
    assert not Run.objects.exists()


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_failing_prune_lets_go_of_its_lease(bell: Bell, monkeypatch: pytest.MonkeyPatch) -> None:
    _old_runs(bell, 1)

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("database trouble")

    monkeypatch.setattr(type(sweeper.storage()), "prune", broken)
    with pytest.raises(RuntimeError):
        prune()
    monkeypatch.undo()
    assert prune() == 1  # not locked out until the lease runs out


def test_the_prune_deletes_expired_sessions_in_batches(settings: Any) -> None:
    settings.SLUICE_PRUNE_BATCH = 2
    now = timezone.now()
    for i in range(5):
        Session.objects.create(
            session_key=f"gone{i}", session_data="x", expire_date=now - timedelta(days=1)
        )
    Session.objects.create(session_key="live", session_data="x", expire_date=now + timedelta(1))
    prune()
    assert list(Session.objects.values_list("session_key", flat=True)) == ["live"]
