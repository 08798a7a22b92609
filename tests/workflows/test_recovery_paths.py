"""Recovery after a fault: what the sweep rings for goes ahead of fresh work, and a worker
whose database went away waits for it instead of dropping its doorbell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.test import override_settings
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start
from workflows.core import dbconn, tasks, transitions
from workflows.core.executor import advance
from workflows.core.leases import owner_id
from workflows.core.sweeper import sweep
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


class Broker:
    """Records what the doorbell sends, with the priority it asked for."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], Any]] = []
        self.options: list[dict[str, Any]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Stand in for Celery, with the raw Redis path off (it would carry fresh doorbells
        past this recorder): every message then goes through ``send_task``."""
        monkeypatch.setattr("workflows.core.doorbell.current_app", self)
        monkeypatch.setattr("workflows.core.broker.publish", lambda *args, **kwargs: False)

    @contextmanager
    def producer_or_acquire(self) -> Iterator[None]:
        yield None

    def send_task(self, name: str, args: tuple[Any, ...] = (), **options: Any) -> None:
        options.pop("producer", None)
        self.sent.append((name, tuple(args), options.get("priority")))
        self.options.append(options)


@override_settings(SLUICE_OVERDUE_PRIORITY=3)
def test_the_sweep_rings_for_late_work_ahead_of_fresh_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = Broker()
    broker.install(monkeypatch)
    run = start(samples.chain, {"n": 2})
    # Fresh work takes the route's priority (none asked here).
    assert broker.sent == [("workflows.advance", (str(run.pk), 1), None)]
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(seconds=60))
    assert sweep()["rung"] == 1
    assert broker.sent[1] == ("workflows.advance", (str(run.pk), 1), 3)
    # The sweep cannot tell a lost doorbell from one queued behind a backlog: its copy expires
    # (after two graces) rather than pile up behind it.
    assert broker.options[1]["expires"] == 2 * 5.0


@override_settings(SLUICE_OVERDUE_PRIORITY=3)
def test_a_due_timer_rings_ahead_of_fresh_work_and_does_not_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = Broker()
    broker.install(monkeypatch)
    run = start(samples.sleeper, {"seconds": 60})
    assert advance(run.pk, 1) == "suspended"
    Step.objects.filter(run=run, kind="sleep").update(wake_at=timezone.now() - timedelta(seconds=1))
    assert sweep()["timers"] == 1
    assert broker.sent[-1] == ("workflows.advance", (str(run.pk), 1), 3)
    assert "expires" not in broker.options[-1]  # nothing else will ring for it


@override_settings(SLUICE_OVERDUE_PRIORITY=None)
def test_no_priority_is_asked_of_a_broker_without_priorities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = Broker()
    broker.install(monkeypatch)
    run = start(samples.chain, {"n": 2})
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(seconds=60))
    sweep()
    assert [priority for _, _, priority in broker.sent] == [None, None]


def test_on_redis_the_sweeps_go_first_and_fresh_doorbells_last() -> None:
    """Celery's own router, with the settings a Redis deployment gets (no broker needed)."""
    code = (
        "import django, json; django.setup(); from config.celery import app; "
        "r = app.amqp.router; "
        "print(json.dumps({n: r.route(dict(o), n).get('priority') for n, o in ["
        "('workflows.sweep', {}), ('reviews.expire_gates', {}), ('workflows.advance', "
        "{'queue': 'default'}), ('workflows.execute_step', {'queue': 'llm'}), "
        "('workflows.advance', {'queue': 'default', 'priority': 3})]}))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # Keys repeat ("workflows.advance" twice): the last one, the overdue ring, wins in the dict.
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "workflows.sweep": 0,
        "reviews.expire_gates": 0,
        "workflows.advance": 3,
        "workflows.execute_step": 6,
    }


def _broken(exc_message: str = "server closed the connection unexpectedly") -> OperationalError:
    connection.close()  # what a restart leaves behind: no usable connection
    return OperationalError(exc_message)


def test_a_doorbell_waits_out_a_lost_database_connection_and_runs(bell: Bell) -> None:
    """The attempt took the run's lease and then lost its connection: it could not release the
    lease. After the database answers, the task lets go of it and advances the run, instead of
    dropping the message and leaving the run to the lease and the sweep. (A database server's
    connection: SQLite's test database is in memory.)"""
    if connection.vendor != "postgresql":
        pytest.skip("a connection to a database server")
    run = start(samples.chain, {"n": 2})
    bell.lose_all()
    calls = []
    real = tasks.advance_run

    def flaky(run_id: str, generation: int) -> str:
        calls.append(run_id)
        if len(calls) == 1:
            assert transitions.take(run_id, generation, owner_id(), timezone.now())
            raise _broken()
        return real(run_id, generation)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks, "advance_run", flaky)
        tasks.advance(str(run.pk), 1)
    assert len(calls) == 2
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


def test_an_error_with_the_connection_alive_is_not_retried(bell: Bell) -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise OperationalError("deadlock detected")

    connection.ensure_connection()
    with pytest.raises(OperationalError):
        tasks._patiently(failing)
    assert calls == [1]


@override_settings(SLUICE_DATABASE_WAIT_SECONDS=0.3)
def test_a_database_that_stays_away_fails_the_task_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise _broken("connection refused")

    def refused(self: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(type(connections["default"]), "ensure_connection", refused)
    with pytest.raises(OperationalError):
        tasks._patiently(failing)
    assert calls == [1]


# --- the health check between a worker thread's tasks (workflows.core.dbconn) -----------------


def _checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count Django's health checks (``is_usable``: a ``SELECT 1``) on this thread."""
    calls: list[int] = []
    real = type(connections["default"]).is_usable

    def counted(self: Any) -> bool:
        calls.append(1)
        return bool(real(self))

    monkeypatch.setattr(type(connections["default"]), "is_usable", counted)
    return calls


def test_a_connection_used_moments_ago_is_not_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("health checks are for a database server's connections")
    db = connections["default"]
    db.health_check_enabled = True  # type: ignore[attr-defined]
    checks = _checks(monkeypatch)
    db.ensure_connection()
    dbconn.used()
    dbconn.recycle()
    Run.objects.exists()
    assert checks == []  # used a moment ago: no SELECT 1 before this task's first query
    # Idle longer than the window: the check is asked again before the first query.
    db.__dict__["_sluice_used_at"] -= dbconn.FRESH_SECONDS + 1
    dbconn.recycle()
    Run.objects.exists()
    assert checks == [1]
    # A task that ended with a database error: checked whatever the time.
    dbconn.used()
    db.errors_occurred = True
    dbconn.recycle()
    assert checks == [1, 1]


def test_a_connection_the_server_dropped_inside_the_window_costs_one_retry(bell: Bell) -> None:
    """The skipped check would have found this: the server ended the connection right after the
    last task. The next task's first query fails, and the engine's task waits for the database
    and runs again, as it does for any lost connection."""
    if connection.vendor != "postgresql":
        pytest.skip("a connection to a database server")
    run = start(samples.chain, {"n": 2})
    bell.lose_all()
    connection.health_check_enabled = True  # type: ignore[attr-defined]
    connection.ensure_connection()
    dbconn.used()
    pid = connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    dbconn.recycle()
    assert connection.health_check_done  # type: ignore[attr-defined]  # not asked
    assert tasks.advance(str(run.pk), 1) == "succeeded"
    assert get_run(run.pk).status == "succeeded"
    assert connection.connection.info.backend_pid != pid
