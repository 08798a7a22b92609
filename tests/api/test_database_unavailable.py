"""A transient database failure (a deadlock with a release's migration, a lost connection) is a
503 with Retry-After, not a 500 "unexpected error": the client can tell that sending the
request again is the thing to do. Any other database error is a bug, and stays a 500."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
from django.db import OperationalError

from tests.api.conftest import Api, Persona, error_code
from workflows.core import services
from workflows.models import Run

BODY = {"pipeline": "test.chain", "input": {"n": 1}}


def failing(cause: BaseException) -> Any:
    def start_or_find(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError(str(cause)) from cause

    return start_or_find


@pytest.mark.parametrize(
    "cause",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        sqlite3.OperationalError("database is locked"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_start_the_database_could_not_complete_is_a_503_to_retry(
    api: Api, service: Persona, monkeypatch: pytest.MonkeyPatch, cause: BaseException
) -> None:
    real = services.start_or_find
    monkeypatch.setattr(services, "start_or_find", failing(cause))
    r = api.post("/runs", BODY, as_=service, headers={"Idempotency-Key": "k-503"})
    assert r.status_code == 503
    assert error_code(r) == "database_unavailable"
    assert r.headers["Retry-After"] == "1"
    assert "Idempotency-Key" in r.json()["error"]["message"]
    assert not Run.objects.exists()
    # Sent again, it starts the run.
    monkeypatch.setattr(services, "start_or_find", real)
    r = api.post("/runs", BODY, as_=service, headers={"Idempotency-Key": "k-503"})
    assert r.status_code == 201
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    "cause",
    [
        sqlite3.OperationalError("no such table: workflows_run"),
        psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_database_error_that_is_a_bug_stays_a_500(
    api: Api, service: Persona, monkeypatch: pytest.MonkeyPatch, cause: BaseException
) -> None:
    """Found by review: "no such table" on an unmigrated SQLite was a 503 "retry in 1 s"."""
    monkeypatch.setattr(services, "start_or_find", failing(cause))
    r = api.post("/runs", BODY, as_=service)
    assert r.status_code == 500
    assert error_code(r) == "internal_error"
