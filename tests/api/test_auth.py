"""API keys: how a request proves who it is, what it may do, and how often."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, Persona, end_window, error_code
from workflows.keys import find_key, hash_key
from workflows.models import ApiKey

pytestmark = pytest.mark.django_db


def test_it_refuses_a_request_without_a_key(api: Api) -> None:
    r = api.get("/runs")
    assert r.status_code == 401
    assert error_code(r) == "unauthorized"
    assert r["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_an_unknown_key(api: Api, service: Persona) -> None:
    forged = service.raw[:-4] + "AAAA"
    r = api.get("/runs", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    r = api.get("/runs", headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401


def test_it_accepts_the_key_as_bearer_or_x_api_key(api: Api, service: Persona) -> None:
    assert api.get("/runs", headers={"Authorization": f"Bearer {service.raw}"}).status_code == 200
    assert api.get("/runs", headers={"X-API-Key": service.raw}).status_code == 200


def test_it_refuses_a_deactivated_key(api: Api, service: Persona) -> None:
    ApiKey.objects.filter(pk=service.key.pk).update(is_active=False)
    assert api.get("/runs", as_=service).status_code == 401


def test_it_stores_only_a_hash_and_a_visible_prefix(service: Persona) -> None:
    key = ApiKey.objects.get(pk=service.key.pk)
    assert service.raw.startswith(key.prefix + ".")
    assert key.key_hash == hash_key(service.raw) and service.raw not in key.key_hash
    assert find_key(service.raw) == key


def test_it_refuses_a_key_without_the_scope(api: Api, reader: Persona) -> None:
    r = api.post("/runs", {"pipeline": "test.chain", "input": {}}, as_=reader)
    assert r.status_code == 403
    assert error_code(r) == "forbidden"
    assert r.json()["error"]["details"] == {"required": ["runs:write"], "granted": ["runs:read"]}


def test_it_rate_limits_each_key_with_retry_after(api: Api, make_key: Any) -> None:
    limited = make_key("limited", rate_limit=2)
    other = make_key("other", rate_limit=2)
    assert api.get("/runs", as_=limited).status_code == 200
    assert api.get("/runs", as_=limited).status_code == 200
    r = api.get("/runs", as_=limited)
    assert r.status_code == 429
    assert error_code(r) == "rate_limited"
    assert 1 <= int(r["Retry-After"]) <= 60
    assert api.get("/runs", as_=other).status_code == 200  # per key, not global


def test_it_opens_a_new_window_when_the_period_is_over(api: Api, make_key: Any) -> None:
    limited = make_key("limited", rate_limit=1)
    assert api.get("/runs", as_=limited).status_code == 200
    assert api.get("/runs", as_=limited).status_code == 429
    end_window(limited.key)
    assert api.get("/runs", as_=limited).status_code == 200
    assert ApiKey.objects.get(pk=limited.key.pk).last_used_at is not None


def test_a_rate_limit_of_zero_means_unlimited(api: Api, make_key: Any) -> None:
    free = make_key("free", rate_limit=0)
    assert all(api.get("/runs", as_=free).status_code == 200 for _ in range(5))


def test_rotating_a_key_keeps_its_prefix_and_retires_the_old_secret(
    api: Api, service: Persona
) -> None:
    from workflows.keys import assign_new_secret

    key = ApiKey.objects.get(pk=service.key.pk)
    secret = key.webhook_secret
    raw = assign_new_secret(key)
    assert raw.startswith(service.key.prefix + ".") and raw != service.raw
    assert api.get("/runs", as_=service).status_code == 401
    assert api.get("/runs", headers={"X-API-Key": raw}).status_code == 200
    assert ApiKey.objects.get(pk=key.pk).webhook_secret == secret
