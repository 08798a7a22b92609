"""POST /api/runs/{id}/events, /cancel and /restart: state changes through the engine."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import get_run, start

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_event_resumes_a_waiting_run(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    r = api.post(
        f"/runs/{run.pk}/events", {"name": "approved", "payload": {"by": "ops"}}, as_=service
    )
    assert r.status_code == 202
    assert r.json()["consumed"] is True and r.json()["name"] == "approved"
    bell.drain()
    assert get_run(run.pk).output == {"first": 1, "event": {"by": "ops"}}


def test_an_early_event_is_kept_for_the_wait(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    r = api.post(f"/runs/{run.pk}/events", {"name": "approved", "payload": 7}, as_=service)
    assert r.status_code == 202 and r.json()["consumed"] is False
    bell.drain()
    assert get_run(run.pk).output == {"first": 1, "event": 7}


def test_an_event_to_a_finished_run_is_a_409(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.chain", {"n": 1}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/events", {"name": "approved"}, as_=service)
    assert r.status_code == 409
    assert error_code(r) == "conflict"


def test_an_event_needs_a_name(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    r = api.post(f"/runs/{run.pk}/events", {"payload": 1}, as_=service)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "name"


def test_it_cancels_a_run_and_refuses_to_cancel_it_twice(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/cancel", as_=service)
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    assert f"api:{service.key.prefix}" in r.json()["error"]["message"]
    r = api.post(f"/runs/{run.pk}/cancel", as_=service)
    assert r.status_code == 409 and error_code(r) == "conflict"


def test_it_restarts_a_finished_run_from_a_step(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.chain", {"n": 3}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 2}, as_=service)
    assert r.status_code == 200
    assert r.json()["status"] == "pending" and r.json()["generation"] == 2
    bell.drain()
    assert get_run(run.pk).status == "succeeded"


def test_restart_without_a_step_resumes_at_the_first_unfinished_one(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.refuse", {}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", as_=service)  # no body at all
    assert r.status_code == 200 and r.json()["generation"] == 2
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", {}, as_=service)
    assert r.status_code == 200 and r.json()["generation"] == 3


def test_restarting_an_active_run_is_a_409(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 1}, as_=service)
    assert r.status_code == 409 and error_code(r) == "conflict"
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 0}, as_=service)
    assert r.status_code == 422


def test_a_wrong_method_is_a_405_in_the_error_shape(api: Api, service: Persona) -> None:
    r = api.request("delete", "/runs", as_=service)
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"
    assert "GET" in r["Allow"]


def test_head_is_answered_as_get_without_a_body(api: Api, service: Persona) -> None:
    """RFC 9110: HEAD on a GET route answers like GET, without the body (it was a 405 that
    listed GET in Allow: review finding). Its authentication is the same."""
    got = api.get("/runs", as_=service)
    head = api.request("head", "/runs", as_=service)
    assert head.status_code == got.status_code == 200
    assert head.content == b"" and head["Content-Type"] == got["Content-Type"]
    assert api.request("head", "/runs").status_code == 401
    r = api.request("head", "/runs/00000000-0000-0000-0000-000000000000/events", as_=service)
    assert r.status_code == 405 and "POST" in r["Allow"]
