"""Cancel and restart over the API record the key and the reason in the run's audit trail,
and the run detail shows the trail."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import start
from workflows.models import RunAudit

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_cancel_records_the_key_and_the_reason(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/cancel", {"reason": "duplicate ticket"}, as_=service)
    assert r.status_code == 200
    (entry,) = r.json()["audit"]
    assert entry["action"] == "cancel" and entry["generation"] == 1
    assert entry["actor"] == f"api:{service.key.prefix}" and entry["reason"] == "duplicate ticket"
    assert entry["from_step"] is None and entry["created_at"]
    assert RunAudit.objects.get(run=run).api_key == service.key
    assert r.json()["error"]["message"].endswith(": duplicate ticket")


def test_a_restart_records_the_key_the_position_and_the_reason(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.chain", {"n": 3}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 2, "reason": "new model"}, as_=service)
    assert r.status_code == 200
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", as_=service)  # no body, no reason
    assert r.status_code == 200
    trail = api.get(f"/runs/{run.pk}", as_=service).json()["audit"]
    assert [(e["action"], e["generation"], e["from_step"], e["reason"]) for e in trail] == [
        ("restart", 1, 2, "new model"),
        ("restart", 2, 1, ""),
    ]
    assert {e["actor"] for e in trail} == {f"api:{service.key.prefix}"}


def test_a_cancel_without_a_body_still_records_the_key(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    assert api.post(f"/runs/{run.pk}/cancel", as_=service).status_code == 200
    assert RunAudit.objects.get(run=run).actor == f"api:{service.key.prefix}"


def test_a_reason_is_bounded_and_refused_actions_leave_no_entry(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/cancel", {"reason": "x" * 2001}, as_=service)
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    r = api.post(f"/runs/{run.pk}/cancel", {"why": "extra field"}, as_=service)
    assert r.status_code == 422
    r = api.post(f"/runs/{run.pk}/restart", {"reason": "still running"}, as_=service)
    assert r.status_code == 409
    assert not RunAudit.objects.exists()


@pytest.mark.parametrize("reason", ["a\x00b", "lone \ud800"], ids=["nul", "surrogate"])
def test_a_reason_that_cannot_be_stored_is_a_4xx(
    api: Api, service: Persona, bell: Bell, reason: str
) -> None:
    waiting = start("test.event", {}, tenant="acme")
    done = start("test.chain", {"n": 1}, tenant="acme")
    bell.drain()
    body = json.dumps({"reason": reason})  # \u0000 and \ud800 as JSON escapes
    for run, action in ((waiting, "cancel"), (done, "restart")):
        r = api.post(f"/runs/{run.pk}/{action}", raw=body, as_=service)
        assert r.status_code in (400, 422), (action, r.status_code)
        error_code(r)
    assert not RunAudit.objects.exists()
    assert api.get(f"/runs/{waiting.pk}", as_=service).json()["status"] == "suspended"
