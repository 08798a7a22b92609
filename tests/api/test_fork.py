"""POST /api/runs/{id}/fork: a new run reusing the journal before ``from_step``; the tenant
rules of restart (another tenant's run is a 404); a position out of range is a clear 422."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import get_run, start
from workflows.models import Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_fork_starts_a_new_run_reusing_the_journal(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.chain", {"n": 3}, tenant="acme")
    bell.drain()
    r = api.post(f"/runs/{run.pk}/fork", {"from_step": 3, "reason": "try again"}, as_=service)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["id"] != str(run.pk) and body["status"] == "pending"
    assert body["forked_from"] == str(run.pk) and body["forked_at_step"] == 3
    assert body["pipeline"] == "test.chain" and body["input"] == {"n": 3}
    bell.drain()
    new = get_run(body["id"])
    assert new.status == "succeeded" and new.output == 3 and new.tenant == "acme"
    # Positions 1 and 2 are copies, with the original's start times (not compared with the
    # new run's ``created_at``: that is the host's clock, the start times the engine's); 3 ran
    # anew.
    copied = Step.objects.filter(run=new, position__lt=3).order_by("position")
    originals = Step.objects.filter(run=run, position__lt=3).order_by("position")
    assert [s.started_at for s in copied] == [s.started_at for s in originals]
    assert copied.count() == 2 and all(s.started_at is not None for s in copied)
    audit = api.get(f"/runs/{run.pk}", as_=service).json()["audit"]
    assert [(a["action"], a["from_step"], a["reason"]) for a in audit] == [("fork", 3, "try again")]
    assert audit[0]["actor"] == f"api:{service.key.prefix}"


def test_another_tenants_run_is_a_404_and_nothing_starts(
    api: Api, outsider: Persona, reader: Persona, bell: Bell
) -> None:
    run = start("test.chain", {"n": 1}, tenant="acme")
    bell.drain()
    runs = Run.objects.count()
    r = api.post(f"/runs/{run.pk}/fork", {"from_step": 1}, as_=outsider)
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = api.post(f"/runs/{run.pk}/fork", {"from_step": 1}, as_=reader)
    assert r.status_code == 403
    assert Run.objects.count() == runs


@pytest.mark.parametrize("body", [{"from_step": 9}, {"from_step": 0}, {}, {"from_step": "x"}])
def test_a_bad_position_is_a_422_naming_the_field(
    api: Api, service: Persona, bell: Bell, body: dict[str, object]
) -> None:
    run = start("test.chain", {"n": 2}, tenant="acme")
    bell.drain()
    runs = Run.objects.count()
    r = api.post(f"/runs/{run.pk}/fork", body, as_=service)
    assert r.status_code == 422, r.content
    assert r.json()["error"]["details"][0]["field"] == "from_step"
    assert Run.objects.count() == runs


def test_a_position_after_an_unfinished_step_is_a_422(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()  # waits at position 2
    r = api.post(f"/runs/{run.pk}/fork", {"from_step": 3}, as_=service)
    assert r.status_code == 422
    assert "is waiting" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"from_step": 10**30},
        {"from_step": -(10**30)},
        {"from_step": 1.5},
        {"from_step": True},
        {"from_step": None},
        {"from_step": "9" * 5000},
        {"from_step": [1]},
        {"from_step": {"$gt": 0}},
        {"from_step": 1, "extra": 1},
        {"from_step": 1, "reason": "a\x00b"},
        {"from_step": 1, "reason": "x" * 5000},
        {"from_step": 1, "reason": 7},
    ],
)
def test_odd_fork_bodies_are_4xx_and_start_nothing(
    api: Api, service: Persona, bell: Bell, body: dict[str, object]
) -> None:
    run = start("test.chain", {"n": 1}, tenant="acme")
    bell.drain()
    runs = Run.objects.count()
    r = api.post(f"/runs/{run.pk}/fork", body, as_=service)
    assert r.status_code in (400, 422), (body, r.status_code, r.content[:300])
    assert Run.objects.count() == runs


def test_a_fork_keeps_the_callback_only_for_the_key_that_started_the_run(
    api: Api, service: Persona, make_key: object, bell: Bell
) -> None:
    """Found by review: a fork by another key kept the original's callback_url, so its
    webhook reached the original's receiver signed with the forker's secret (which that
    receiver does not know, and rejects)."""
    url = "http://127.0.0.1:9/hook"
    body = {"pipeline": "test.chain", "input": {"n": 2}, "callback_url": url}
    run_id = api.post("/runs", body, as_=service).json()["id"]
    bell.drain()
    same = api.post(f"/runs/{run_id}/fork", {"from_step": 2}, as_=service).json()
    assert same["callback_url"] == url
    other = make_key("other", tenant="acme")  # type: ignore[operator]
    forked = api.post(f"/runs/{run_id}/fork", {"from_step": 2}, as_=other).json()
    assert forked["callback_url"] is None and get_run(forked["id"]).callback_url == ""


def test_a_fork_of_a_run_signed_with_the_default_secret_keeps_its_callback(bell: Bell) -> None:
    """Found by review of the change above: a run started without a key (Python, a page)
    signs with the deployment's secret, as a fork by a person does; the receiver can check
    it, so the callback stays."""
    from django.contrib.auth.models import User

    from workflows.core import forking
    from workflows.core.audit import Actor

    run = start("test.chain", {"n": 2}, callback_url="https://hooks.example/done")
    bell.drain()
    bob = User.objects.create_user("bob", is_staff=True)
    fork = forking.fork(run.pk, from_step=2, actor=Actor.of_user(bob))
    assert fork.callback_url == "https://hooks.example/done"
