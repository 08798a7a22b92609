"""A transient database failure (a deadlock with a release's migration, a lost connection) is a
503 with Retry-After, not a 500 "unexpected error": the client can tell that sending the
request again is the thing to do, and nothing was half done."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError

from tests.api.conftest import Api, Persona, error_code
from workflows.core import services
from workflows.models import Run


@pytest.mark.parametrize(
    "message", ["deadlock detected", "canceling statement due to lock timeout", "server closed"]
)
def test_a_start_the_database_could_not_complete_is_a_503_to_retry(
    api: Api, service: Persona, monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    real = services.start_or_find

    def busy(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError(message)

    monkeypatch.setattr(services, "start_or_find", busy)
    body = {"pipeline": "test.chain", "input": {"n": 1}}
    r = api.post("/runs", body, as_=service, headers={"Idempotency-Key": "k-503"})
    assert r.status_code == 503
    assert error_code(r) == "database_unavailable"
    assert r.headers["Retry-After"] == "1"
    assert "send it again" in r.json()["error"]["message"]
    assert not Run.objects.exists()
    # Sent again, it starts the run.
    monkeypatch.setattr(services, "start_or_find", real)
    r = api.post("/runs", body, as_=service, headers={"Idempotency-Key": "k-503"})
    assert r.status_code == 201
    assert Run.objects.count() == 1
