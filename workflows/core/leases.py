"""Who is working: the lease owner id of this thread and the heartbeat that renews leases.

A lease is (owner, expires_at) on a run or step row, taken by compare-and-swap. While a worker
is alive its heartbeat pushes ``expires_at`` forward; when it dies (SIGKILL, OOM, deploy) the
leases run out and the sweep makes the work runnable again.

The owner is per thread, not per process: workers may run thread pools, and a thread whose
lease expired (it stalled) must be fenced out when another thread of the same process takes
the work over, which only works if the two hold different owner ids.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from workflows.core import clock
from workflows.core.models import Run, Step

log = logging.getLogger(__name__)

_local = threading.local()
_heartbeat: threading.Thread | None = None
# Steps this process is executing under a lease (branches, queued steps, inline steps of
# limited pools), each with the owner id of the thread that holds it. The heartbeat renews them
# by primary key: no scan, no extra index.
_held: dict[int, str] = {}
# Runs this process is advancing (with their thread's owner id). Only these are renewed: a run
# whose advance died with an exception (and let go of it) must not be kept alive.
_held_runs: dict[Any, str] = {}
_heartbeat_pid: int | None = None
_lock = threading.Lock()


def owner_id() -> str:
    """An id unique to this thread of this process (re-made after a fork)."""
    pid = os.getpid()
    mine: tuple[int, str] | None = getattr(_local, "owner", None)
    if mine is None or mine[0] != pid:
        thread = threading.get_ident()
        mine = (pid, f"{host_id()}:{pid}:{thread}:{uuid.uuid4().hex[:6]}")
        _local.owner = mine
    return mine[1]


def host_id() -> str:
    """This machine's part of an owner id (settings.SLUICE_HOST_ID): no colon, 50 chars."""
    host = str(getattr(settings, "SLUICE_HOST_ID", "") or socket.gethostname())
    return host.replace(":", "-")[:50]


def lease_seconds() -> float:
    return float(settings.SLUICE_LEASE_SECONDS)


def lease_until(now: datetime | None = None) -> datetime:
    return (now or clock.now()) + timedelta(seconds=lease_seconds())


def renew_all() -> int:
    """Push forward every lease this process holds. Returns the rows touched."""
    until = lease_until()
    n = 0
    for model, held in ((Run, dict(_held_runs)), (Step, dict(_held))):
        by_owner: dict[str, list[Any]] = {}
        for pk, owner in held.items():
            by_owner.setdefault(owner, []).append(pk)
        for owner, pks in by_owner.items():
            # A compensating run is advanced under its lease as a running one is.
            mine: Any = model.objects.filter(
                pk__in=pks, lease_owner=owner, status__in=("running", "compensating")
            )
            if connection.features.has_select_for_update_skip_locked:
                # A row another transaction holds is skipped, not waited for: a run ending in
                # a transaction whose on_complete hook is slow would otherwise hold up every
                # other lease of this process until their time ran out (and the sweep ran
                # their steps again). That row's own transaction is writing it; the next
                # beat renews it if it is still held.
                with transaction.atomic():  # the lock's own transaction (one statement)
                    n += model.objects.filter(
                        # NO KEY: a row that only refers to the run (an outbox row's
                        # foreign key) neither blocks this nor is blocked by it.
                        pk__in=mine.select_for_update(skip_locked=True, no_key=True).values("pk")
                    ).update(lease_expires_at=until)
                continue
            n += mine.update(lease_expires_at=until)
    return n


def job_owner() -> str:
    """A fresh owner id for one job run in a branch thread (``workflows.core.branches``): the
    steps of a batch are claimed together, before each is given to its thread, so the claim
    names the job, not the thread. As unique as a thread's, and the pid stays second."""
    return f"{host_id()}:{os.getpid()}:job:{uuid.uuid4().hex[:12]}"


def hold(step_id: int | None, owner: str | None = None) -> None:
    """``step_id`` is now executed under the lease of ``owner`` (this thread's by default):
    keep renewing it."""
    if step_id is not None:
        _held[step_id] = owner or owner_id()


def hold_run(run_id: Any, owner: str | None = None) -> None:
    """The run ``run_id`` is advanced under the lease of ``owner`` (this thread's by default; a
    job's when a branch of a batch closed its group and took the run): keep renewing it."""
    _held_runs[run_id] = owner or owner_id()


def drop_run(run_id: Any) -> None:
    _held_runs.pop(run_id, None)


def drop(step_id: int | None) -> None:
    _held.pop(step_id, None)  # type: ignore[arg-type]


def _beat(stop: threading.Event) -> None:
    interval = max(0.5, lease_seconds() / 3)
    try:
        clock.refresh()  # before the first wait: the leases it renews are on that clock
        while not stop.wait(interval):
            try:
                clock.refresh()  # at most once a minute: leases are on the database's clock
                renew_all()
            except Exception:  # A database hiccup must not kill the thread; retry next beat.
                log.exception("lease heartbeat failed")
                close_old_connections()
    finally:
        connection.close()


def ensure_heartbeat() -> None:
    """Start this process's heartbeat thread once (again after a fork)."""
    global _heartbeat, _heartbeat_pid
    pid = os.getpid()
    if _heartbeat is not None and _heartbeat_pid == pid and _heartbeat.is_alive():
        return
    with _lock:
        if _heartbeat is not None and _heartbeat_pid == pid and _heartbeat.is_alive():
            return
        stop = threading.Event()
        _heartbeat = threading.Thread(
            target=_beat, args=(stop,), name="sluice-heartbeat", daemon=True
        )
        _heartbeat.stop = stop  # type: ignore[attr-defined]
        _heartbeat_pid = pid
        _heartbeat.start()


def stop_heartbeat() -> None:
    """Stop this process's heartbeat (tests, shutdown); it restarts on the next lease."""
    global _heartbeat
    thread = _heartbeat
    if thread is not None and thread.is_alive():
        thread.stop.set()  # type: ignore[attr-defined]
        thread.join(timeout=5)
    _heartbeat = None
