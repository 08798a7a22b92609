"""Every timestamp Sluice sends a service is written one way: the API's (ISO 8601, UTC, to the
millisecond, ``Z``). The webhook body, a 409's ``details`` and the dataset lines are built by
hand; they must read as the API's responses do."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.test import Client

from reviews.models import Gate
from tests.api.conftest import Api, Persona, error_code
from tests.api.receiver import receiver
from tests.support import Bell
from workflows import start
from workflows.core.outbox import deliver_due
from workflows.timefmt import api_datetime

pytestmark = pytest.mark.django_db(transaction=True)

API_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")


def _api_format(value: object) -> bool:
    return isinstance(value, str) and API_FORMAT.fullmatch(value) is not None


def test_api_datetime_is_the_apis_format() -> None:
    assert api_datetime(None) is None
    at = datetime(2026, 12, 7, 13, 22, 1, 732107, tzinfo=UTC)
    assert api_datetime(at) == "2026-12-07T13:22:01.732Z"
    assert api_datetime(at.replace(microsecond=0)) == "2026-12-07T13:22:01Z"
    east = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert api_datetime(east) == "2026-12-07T13:22:01.732Z"


def test_the_webhook_body_uses_the_apis_format(api: Api, service: Persona, bell: Bell) -> None:
    with receiver() as hook:
        r = api.post(
            "/runs",
            {"pipeline": "test.chain", "input": {"n": 2}, "callback_url": hook.url},
            as_=service,
        )
        assert r.status_code == 201, r.content
        bell.drain()
        deliver_due()
    (req,) = hook.requests
    body = req.json
    assert _api_format(body["created_at"]), body["created_at"]
    shown = api.get(f"/runs/{body['run']['id']}", as_=service).json()
    for name in ("created_at", "started_at", "finished_at"):
        assert _api_format(shown[name]), shown[name]
        assert body["run"][name] == shown[name]


def _gate(bell: Bell) -> Gate:
    run = start("api.review", {"text": "Revenue rose 4%."}, tenant="acme")
    bell.drain()
    return Gate.objects.get(run=run, status="open")


def test_a_409s_decided_at_and_the_dataset_use_the_apis_format(
    api: Api, service: Persona, bell: Bell
) -> None:
    gate = _gate(bell)
    decided = api.post(f"/gates/{gate.pk}/decision", {"outcome": "approve"}, as_=service)
    assert decided.status_code == 200, decided.content
    r = api.post(f"/gates/{gate.pk}/decision", {"outcome": "reject"}, as_=service)
    assert r.status_code == 409 and error_code(r) == "conflict"
    details = r.json()["error"]["details"]
    assert _api_format(details["decided_at"]), details["decided_at"]
    assert details["decided_at"] == decided.json()["decided_at"]
    gate.refresh_from_db()
    assert details["decided_at"] == api_datetime(gate.decided_at)

    bell.drain()
    response: Any = Client().get("/api/gates/dataset", headers=service.headers)
    assert response.status_code == 200
    (line,) = [json.loads(t) for t in b"".join(response.streaming_content).splitlines()]
    assert line["gate_id"] == gate.pk
    assert _api_format(line["opened_at"]) and _api_format(line["decided_at"]), line
    assert line["decided_at"] == decided.json()["decided_at"]
    assert line["opened_at"] == api_datetime(gate.created_at)
