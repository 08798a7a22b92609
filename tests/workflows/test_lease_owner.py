"""Lease owners are per thread: two threads of one worker process hold different owner ids, so
a thread whose run lease expired (it stalled) is fenced out once another thread of the same
process took the run over; the heartbeat renews each thread's leases under its own owner."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import start
from workflows.core import leases, transitions
from workflows.core.context import Context
from workflows.core.errors import LeaseLost
from workflows.core.sweeper import reclaim_runs
from workflows.models import Run


def take_run(run_id: Any, generation: int, owner: str) -> Run | None:
    """The executor's take transition, now."""
    return transitions.take(run_id, generation, owner, timezone.now())


pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def in_thread(fn: Any) -> Any:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(fn())
        finally:
            connections.close_all()

    t = threading.Thread(target=body)
    t.start()
    t.join(timeout=30)
    return out[0]


def test_it_gives_each_thread_its_own_owner_id() -> None:
    mine = leases.owner_id()
    assert leases.owner_id() == mine  # stable within a thread
    other = in_thread(leases.owner_id)
    assert other != mine
    assert other.split(":")[1] == mine.split(":")[1]  # same process


def test_a_stalled_thread_is_fenced_out_by_another_thread_of_its_process(bell: Bell) -> None:
    run = start(samples.waiter, {})
    bell.drain()
    stalled_owner = leases.owner_id()
    stalled = take_run(run.pk, 1, stalled_owner)
    assert stalled is not None
    # The stalled thread's lease runs out; the sweep frees the run; another thread takes it.
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert reclaim_runs(timezone.now()) == 1
    taker = in_thread(lambda: take_run(run.pk, 1, leases.owner_id()))
    assert taker is not None and taker.lease_owner != stalled_owner
    # The stalled thread wakes up and tries to write: it must not pass the fence.
    with pytest.raises(LeaseLost):
        Context(stalled, [], stalled_owner).suspend()
    assert Run.objects.get(pk=run.pk).lease_owner == taker.lease_owner


def test_the_heartbeat_renews_each_threads_run_under_its_owner(bell: Bell) -> None:
    a, b = start(samples.waiter, {}), start(samples.waiter, {})
    bell.drain()
    soon = timezone.now() + timedelta(seconds=2)

    def take_and_hold(run_id: Any) -> str:
        owner = leases.owner_id()
        assert take_run(run_id, 1, owner) is not None
        leases.hold_run(run_id)
        return owner

    owners = [take_and_hold(a.pk), in_thread(lambda: take_and_hold(b.pk))]
    try:
        Run.objects.filter(pk__in=[a.pk, b.pk]).update(lease_expires_at=soon)
        assert leases.renew_all() == 2
        for run, owner in zip((a, b), owners, strict=True):
            fresh = Run.objects.get(pk=run.pk)
            assert fresh.lease_owner == owner and fresh.lease_expires_at > soon
    finally:
        leases.drop_run(a.pk)
        leases.drop_run(b.pk)


def test_the_owner_id_names_the_host_from_sluice_host_id(settings: Any) -> None:
    """Which machine holds a run: SLUICE_HOST_ID (colons replaced, the id splits on them)."""
    settings.SLUICE_HOST_ID = "rack-7:node-b"
    owner = in_thread(leases.owner_id)
    host, pid, _thread, _nonce = owner.split(":")
    assert (host, int(pid)) == ("rack-7-node-b", os.getpid())
    settings.SLUICE_HOST_ID = "x" * 80
    assert in_thread(leases.owner_id).split(":")[0] == "x" * 50


def test_the_heartbeat_skips_a_run_another_transaction_holds(bell: Bell) -> None:
    """Found by review: a run ending in a transaction whose on_complete hook is slow holds its
    row; the heartbeat waited for it, so every other lease of the process ran out meanwhile
    (and the sweep would run their steps again). Now that row is skipped, the others renewed."""
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    a, b = start(samples.waiter, {}), start(samples.waiter, {})
    bell.drain()
    owner = leases.owner_id()
    for run in (a, b):
        assert take_run(run.pk, 1, owner) is not None
        leases.hold_run(run.pk)
    soon = timezone.now() + timedelta(seconds=2)
    Run.objects.filter(pk__in=[a.pk, b.pk]).update(lease_expires_at=soon)
    locked, release = threading.Event(), threading.Event()

    def hold_a() -> None:  # the slow hook's transaction, on its own connection
        try:
            with transaction.atomic():
                Run.objects.filter(pk=a.pk).update(current_step="ending")
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_a)
    holder.start()
    try:
        assert locked.wait(5)
        started = time.monotonic()
        assert leases.renew_all() == 1  # b renewed; a skipped, not waited for
        assert time.monotonic() - started < 2
        assert Run.objects.get(pk=b.pk).lease_expires_at > soon
    finally:
        release.set()
        holder.join(10)
        leases.drop_run(a.pk)
        leases.drop_run(b.pk)
