"""API keys remembered per process (workflows.keys.find_key): how soon a change to a key counts.

A process that authenticated a key remembers it for SLUICE_API_KEY_CACHE_SECONDS. A change made
through Django (save, delete, rotation, the admin's actions) counts at once in the process that
made it; any other process, simulated here by changing the row behind Django's back with
``update()``, sees it when its copy expires, and not before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.api.conftest import Api, Persona
from workflows import keys
from workflows.core import broker
from workflows.models import ApiKey

pytestmark = pytest.mark.django_db

TTL = 5.0


@pytest.fixture(autouse=True)
def _ttl(settings: Any) -> None:
    settings.SLUICE_API_KEY_CACHE_SECONDS = TTL


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """``clock(s)`` moves the key cache's clock ``s`` seconds on."""
    offset = [0.0]
    real = keys.monotonic
    monkeypatch.setattr(keys, "monotonic", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def _deactivate(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk).update(is_active=False)


def _new_secret(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk).update(key_hash=keys.hash_key(f"{key.prefix}.other"))


def _delete(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk)._raw_delete(ApiKey.objects.db)  # no post_delete


@pytest.mark.parametrize("revoke", [_deactivate, _new_secret, _delete])
def test_a_key_revoked_by_another_process_stops_working_within_the_bound(
    api: Api, service: Persona, clock: Callable[[float], None], revoke: Any
) -> None:
    assert api.get("/runs", as_=service).status_code == 200
    revoke(service.key)
    clock(TTL - 0.5)
    # This process's copy is still fresh, so the key still works; except a deleted key without
    # Redis, which the key row's rate counter finds gone at once.
    early = 401 if revoke is _delete and broker.client() is None else 200
    assert api.get("/runs", as_=service).status_code == early
    clock(1.0)
    assert api.get("/runs", as_=service).status_code == 401


def test_a_scope_taken_away_by_another_process_counts_within_the_bound(
    api: Api, service: Persona, clock: Callable[[float], None]
) -> None:
    assert api.get("/runs", as_=service).status_code == 200
    ApiKey.objects.filter(pk=service.key.pk).update(scopes=["gates:decide"])
    clock(TTL + 0.5)
    assert api.get("/runs", as_=service).status_code == 403


def test_a_change_made_through_django_counts_at_once_in_its_process(
    api: Api, service: Persona
) -> None:
    assert api.get("/runs", as_=service).status_code == 200
    key = ApiKey.objects.get(pk=service.key.pk)
    key.is_active = False
    key.save()
    assert api.get("/runs", as_=service).status_code == 401


def test_a_rotated_key_stops_working_at_once_in_the_rotating_process(
    api: Api, service: Persona
) -> None:
    assert api.get("/runs", as_=service).status_code == 200
    raw = keys.assign_new_secret(ApiKey.objects.get(pk=service.key.pk))
    assert api.get("/runs", as_=service).status_code == 401
    assert api.get("/runs", headers={"X-API-Key": raw}).status_code == 200


def test_the_admins_deactivate_action_counts_at_once_in_its_process(
    api: Api, service: Persona
) -> None:
    assert api.get("/runs", as_=service).status_code == 200
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-1234567")
    browser = Client()
    browser.force_login(admin)
    r = browser.post(
        "/admin/workflows/apikey/",
        {"action": "deactivate_keys", "_selected_action": [service.key.pk]},
    )
    assert r.status_code == 302
    assert api.get("/runs", as_=service).status_code == 401


def test_a_key_is_looked_up_again_once_its_copy_expires(
    api: Api, service: Persona, clock: Callable[[float], None]
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert api.get("/runs", as_=service).status_code == 200
    with CaptureQueriesContext(connection) as warm:
        assert api.get("/runs", as_=service).status_code == 200
    clock(TTL + 0.5)
    with CaptureQueriesContext(connection) as cold:
        assert api.get("/runs", as_=service).status_code == 200
    key_reads = [q for q in cold.captured_queries if 'FROM "workflows_apikey"' in q["sql"]]
    assert len(key_reads) == 1
    assert not [q for q in warm.captured_queries if 'FROM "workflows_apikey"' in q["sql"]]


def test_a_wrong_secret_is_refused_even_while_the_key_is_remembered(
    api: Api, service: Persona
) -> None:
    assert api.get("/runs", as_=service).status_code == 200
    forged = service.raw[:-4] + ("AAAA" if not service.raw.endswith("AAAA") else "BBBB")
    assert api.get("/runs", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_with_no_cache_time_every_request_looks_the_key_up(
    api: Api, service: Persona, settings: Any
) -> None:
    settings.SLUICE_API_KEY_CACHE_SECONDS = 0
    assert api.get("/runs", as_=service).status_code == 200
    _deactivate(service.key)
    assert api.get("/runs", as_=service).status_code == 401


def test_each_request_gets_its_own_copy_of_the_key(service: Persona) -> None:
    first = keys.find_key(service.raw)
    assert first is not None
    first.tenant = "changed by a careless view"
    second = keys.find_key(service.raw)
    assert second is not None and second.tenant == "acme"
