"""POST /api/runs with ``review_timeout``: seconds or a duration string, 1 minute to 30 days."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.api.conftest import Api, Persona, error_code
from workflows.models import Run

pytestmark = pytest.mark.django_db

CHAIN = {"pipeline": "test.chain", "input": {"n": 2, "start": 1}}


def test_it_starts_a_run_with_a_review_timeout(api: Api, service: Persona) -> None:
    r = api.post("/runs", {**CHAIN, "review_timeout": "36h"}, as_=service)
    assert r.status_code == 201
    assert r.json()["review_timeout"] == 36 * 3600
    assert Run.objects.get().review_timeout == timedelta(hours=36)
    seconds = api.post("/runs", {**CHAIN, "review_timeout": 600}, as_=service)
    assert seconds.status_code == 201 and seconds.json()["review_timeout"] == 600


def test_without_a_review_timeout_the_run_keeps_the_default(api: Api, service: Persona) -> None:
    r = api.post("/runs", CHAIN, as_=service)
    assert r.status_code == 201 and r.json()["review_timeout"] is None
    assert Run.objects.get().review_timeout is None


@pytest.mark.parametrize("bad", ["59s", 59, "31d", 2_592_001, "tomorrow", "", "1e9", -60, True])
def test_a_review_timeout_outside_the_range_is_a_clear_422(
    api: Api, service: Persona, bad: object
) -> None:
    r = api.post("/runs", {**CHAIN, "review_timeout": bad}, as_=service)
    assert r.status_code == 422, r.content
    code = error_code(r)
    assert code in ("invalid_review_timeout", "invalid_request"), code
    assert "review_timeout" in r.content.decode()
    assert not Run.objects.exists()


def test_the_idempotency_key_compares_the_review_timeout(api: Api, service: Persona) -> None:
    key = {"Idempotency-Key": "rt-1"}
    first = api.post("/runs", {**CHAIN, "review_timeout": "2h"}, as_=service, headers=key)
    same = api.post("/runs", {**CHAIN, "review_timeout": 7200}, as_=service, headers=key)
    other = api.post("/runs", {**CHAIN, "review_timeout": "3h"}, as_=service, headers=key)
    assert (first.status_code, same.status_code, other.status_code) == (201, 200, 422)
    assert error_code(other) == "idempotency_key_reused"
