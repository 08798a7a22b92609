"""GET /api/gates and POST /api/gates/{id}/decision: services decide gates too."""

from __future__ import annotations

import pytest

from reviews.models import Gate
from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import get_run, start
from workflows.timefmt import api_datetime

pytestmark = pytest.mark.django_db(transaction=True)


def _gate(bell: Bell, tenant: str = "acme") -> Gate:
    run = start("api.review", {"text": "Revenue rose 4%."}, tenant=tenant)
    bell.drain()
    return Gate.objects.get(run=run, status="open")


def test_it_lists_the_open_gates_of_the_keys_tenant(api: Api, service: Persona, bell: Bell) -> None:
    gate = _gate(bell)
    _gate(bell, tenant="globex")
    r = api.get("/gates", as_=service)
    assert r.status_code == 200
    (item,) = r.json()
    assert item["id"] == gate.pk and item["title"] == "Check the summary"
    assert item["payload"] == {"summary": "Revenue rose 4%."}
    assert item["choices"] == ["approve", "reject"] and item["status"] == "open"
    assert item["pipeline"] == "api.review" and item["deadline"]


def test_a_run_shows_its_open_gates(api: Api, service: Persona, bell: Bell) -> None:
    gate = _gate(bell)
    body = api.get(f"/runs/{gate.run_id}", as_=service).json()
    assert body["status"] == "suspended"
    (brief,) = body["open_gates"]
    assert brief["id"] == gate.pk and brief["decision_url"] == f"/api/gates/{gate.pk}/decision"


def test_a_service_decides_a_gate_and_the_run_resumes(
    api: Api, service: Persona, bell: Bell
) -> None:
    gate = _gate(bell)
    r = api.post(
        f"/gates/{gate.pk}/decision", {"outcome": "reject", "comment": "Wrong figure"}, as_=service
    )
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "decided" and r.json()["outcome"] == "reject"
    assert r.json()["decided_by"] == f"api:{service.key.prefix}"
    bell.drain()
    assert get_run(gate.run_id).output == {"outcome": "reject", "comment": "Wrong figure"}


def test_deciding_a_closed_gate_is_a_409(api: Api, service: Persona, bell: Bell) -> None:
    gate = _gate(bell)
    assert (
        api.post(f"/gates/{gate.pk}/decision", {"outcome": "approve"}, as_=service).status_code
        == 200
    )
    r = api.post(f"/gates/{gate.pk}/decision", {"outcome": "reject"}, as_=service)
    assert r.status_code == 409 and error_code(r) == "conflict"
    assert "decided" in r.json()["error"]["message"]
    # the facts, for a service: the message's time is local and without a date today
    details = r.json()["error"]["details"]
    assert (details["status"], details["outcome"]) == ("decided", "approve")
    assert details["decided_by"] == service.key.actor
    gate.refresh_from_db()
    assert details["decided_at"] == api_datetime(gate.decided_at)  # the API's own format


def test_an_outcome_outside_the_choices_is_a_422(api: Api, service: Persona, bell: Bell) -> None:
    gate = _gate(bell)
    r = api.post(f"/gates/{gate.pk}/decision", {"outcome": "maybe"}, as_=service)
    assert r.status_code == 422 and error_code(r) == "invalid_input"
    assert r.json()["error"]["details"][0]["field"] == "outcome"


def test_other_tenants_and_unknown_gates_are_404(
    api: Api, service: Persona, outsider: Persona, bell: Bell
) -> None:
    gate = _gate(bell)
    for path in (
        f"/gates/{gate.pk}/decision",
        "/gates/999999/decision",
        "/gates/x/decision",
        "/gates/-1/decision",
    ):
        who = outsider if str(gate.pk) in path else service
        r = api.post(path, {"outcome": "approve"}, as_=who)
        assert r.status_code == 404, path
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_deciding_needs_the_gates_scope(api: Api, reader: Persona, bell: Bell) -> None:
    gate = _gate(bell)
    assert api.get("/gates", as_=reader).status_code == 200  # reading is fine with runs:read
    r = api.post(f"/gates/{gate.pk}/decision", {"outcome": "approve"}, as_=reader)
    assert r.status_code == 403


@pytest.mark.parametrize(
    "prop", [{"type": "string", "pattern": "["}, {"type": "integer", "minimum": "x"}]
)
def test_a_gate_whose_schema_cannot_be_built_answers_422_not_500(
    api: Api, service: Persona, bell: Bell, prop: dict[str, object]
) -> None:
    import tests.reviews.workflows  # noqa: F401  (registers test.review)

    fields = {"type": "object", "properties": {"a": prop}}
    # Opening such a gate now fails its run, naming the field...
    run = start("test.review", {"fields": fields}, tenant="acme")
    bell.drain()
    assert get_run(run.pk).status == "failed" and not Gate.objects.filter(run=run).exists()
    # ...and one opened before that check (its schema stored as is) answers a 422.
    run = start("test.review", {"fields": {"properties": {"a": {}}}}, tenant="acme")
    bell.drain()
    gate = Gate.objects.get(run=run, status="open")
    Gate.objects.filter(pk=gate.pk).update(fields_schema=fields)
    url = f"/gates/{gate.pk}/decision"
    r = api.post(url, {"outcome": "approve", "edits": {"a": "x"}}, as_=service)
    assert r.status_code == 422 and error_code(r) == "invalid_input", r.content
    assert r.json()["error"]["details"][0]["field"] == "a"
    assert api.post(url, {"outcome": "approve"}, as_=service).status_code == 200
    bell.drain()
    assert get_run(run.pk).status == "succeeded"
