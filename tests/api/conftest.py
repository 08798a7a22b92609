"""Fixtures for the JSON API tests: API keys (personas) and a JSON client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

import tests.api.workflows  # noqa: F401  (registers the API tests' workflows)
from workflows.keys import SCOPES, create_api_key
from workflows.models import ApiKey


@dataclass
class Persona:
    key: ApiKey
    raw: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw}"}


class Api:
    """A JSON client for ``/api/``: ``api.get("/runs", as_=service)``."""

    def __init__(self) -> None:
        self.client = Client()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        as_: Persona | None = None,
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        all_headers = {**(as_.headers if as_ else {}), **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers}
        if raw is not None:
            kwargs.update(data=raw, content_type="application/json")
        elif body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        elif method == "post":  # what `curl -X POST` sends: no body at all
            kwargs.update(data=b"", content_type="application/json")
        return getattr(self.client, method)(f"/api{path}", **kwargs)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("get", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("post", path, body, **kw)


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture
def make_key(db: None) -> Any:
    def make(name: str = "svc", scopes: tuple[str, ...] = SCOPES, **kw: Any) -> Persona:
        key, raw = create_api_key(name, scopes=scopes, **kw)
        return Persona(key, raw)

    return make


@pytest.fixture
def service(make_key: Any) -> Persona:
    """A service key with every scope, for tenant ``acme``."""
    return make_key("acme-service", tenant="acme")


@pytest.fixture
def reader(make_key: Any) -> Persona:
    """A read-only key of the same tenant."""
    return make_key("acme-reader", scopes=("runs:read",), tenant="acme")


@pytest.fixture
def outsider(make_key: Any) -> Persona:
    """A key of another tenant, with every scope: it must see nothing of acme's."""
    return make_key("globex", tenant="globex")


@pytest.fixture(autouse=True)
def _no_webhook_dispatch(settings: Any) -> Iterator[None]:
    """Webhooks are delivered by calling the outbox in the test, not by a broker message."""
    settings.SLUICE_WEBHOOK_DISPATCH_ON_COMMIT = False
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = True
    yield


def end_window(key: ApiKey) -> None:
    """End ``key``'s rate window as if its period were over, in whichever store counts it:
    the counter in the broker's Redis, or the key's row (workflows.keys)."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from workflows.core import broker
    from workflows.keys import window_name

    conn = broker.client()
    if conn is not None:
        conn.delete(window_name(key))
    period = timedelta(seconds=float(settings.SLUICE_API_RATE_PERIOD))
    ApiKey.objects.filter(pk=key.pk).update(window_start=timezone.now() - period)


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return str(body["error"]["code"])


@pytest.fixture(autouse=True)
def _fresh_pool_cache() -> Iterator[None]:
    """workflows.core.pools caches pool rows for 5 s; the test database is flushed between tests,
    so a cached pool must not outlive its row."""
    from workflows.core.pools import clear_cache

    clear_cache()
    yield
    clear_cache()
