"""Who is working: this process's lease owner id and the heartbeat that renews its leases.

A lease is (owner, expires_at) on a run or step row, taken by compare-and-swap. While a worker
is alive its heartbeat pushes ``expires_at`` forward; when it dies (SIGKILL, OOM, deploy) the
leases run out and the sweep makes the work runnable again.
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
from django.db import close_old_connections, connection
from django.utils import timezone

log = logging.getLogger(__name__)

_owner: tuple[int, str] | None = None
_heartbeat: threading.Thread | None = None
# Steps this process is executing under its own lease (branches, queued steps, inline steps of
# limited pools). The heartbeat renews them by primary key: no scan, no extra index.
_held: set[int] = set()
# Runs this process is advancing. Only these are renewed: a run whose advance died with an
# exception (and let go of it) must not be kept alive by the heartbeat.
_held_runs: set[Any] = set()
_heartbeat_pid: int | None = None
_lock = threading.Lock()


def owner_id() -> str:
    """An id unique to this process (re-made after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:6]}")
    return _owner[1]


def lease_seconds() -> float:
    return float(settings.SLUICE_LEASE_SECONDS)


def lease_until(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(seconds=lease_seconds())


def renew_all() -> int:
    """Push forward every lease this process holds. Returns the rows touched."""
    from workflows.models import Run, Step

    me = owner_id()
    until = lease_until()
    n = 0
    runs = list(_held_runs)
    if runs:
        n += Run.objects.filter(pk__in=runs, lease_owner=me, status="running").update(
            lease_expires_at=until
        )
    held = list(_held)
    if held:
        n += Step.objects.filter(pk__in=held, lease_owner=me, status="running").update(
            lease_expires_at=until
        )
    return n


def hold(step_id: int | None) -> None:
    """This process now executes ``step_id`` under its lease: keep renewing it."""
    if step_id is not None:
        _held.add(step_id)


def hold_run(run_id: Any) -> None:
    _held_runs.add(run_id)


def drop_run(run_id: Any) -> None:
    _held_runs.discard(run_id)


def drop(step_id: int | None) -> None:
    _held.discard(step_id)  # type: ignore[arg-type]


def _beat(stop: threading.Event) -> None:
    interval = max(0.5, lease_seconds() / 3)
    try:
        while not stop.wait(interval):
            try:
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
