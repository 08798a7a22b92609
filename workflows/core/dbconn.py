"""Database connections between a worker thread's tasks.

Before each task (Celery's ``task_prerun``, and each job of a branch thread) a worker does what
Django does between two requests: ``close_old_connections`` closes a connection that is too old
(``CONN_MAX_AGE``) or that failed. With ``CONN_HEALTH_CHECKS`` on, Django then also asks the
server ``SELECT 1`` before the connection's first query: one more round trip per task, which in
W1 is one statement in every thirteen (the take, ten checkpoints, the end, and that check).

A connection the same thread used moments ago, in a task that ended without a database error,
is as good as checked: it answered then. So the check is skipped for ``FRESH_SECONDS`` after a
task; after a longer idle spell (the server may have restarted meanwhile) it is asked as
before. What the check would have caught inside that window is a connection the server dropped
a moment ago; the task's first query then fails instead, and the engine's tasks already wait
for the database and run again (``tasks._patiently``); any other task fails once and its next
tick runs.
"""

from __future__ import annotations

import time

from django.db import close_old_connections, connections

# How long after a task a connection's health counts as checked.
FRESH_SECONDS = 1.0


def recycle() -> None:
    """Before a task: close what is old or broken (Django's ``close_old_connections``), then
    mark as checked what this thread used in a task that just ended cleanly."""
    close_old_connections()
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        used = conn.__dict__.get("_sluice_used_at")
        if (
            used is not None
            and conn.connection is not None
            and not conn.errors_occurred
            and now - used < FRESH_SECONDS
        ):
            conn.health_check_done = True  # type: ignore[attr-defined]


def used() -> None:
    """After a task: note when this thread's connections were last used."""
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        conn.__dict__["_sluice_used_at"] = now if conn.connection is not None else None
