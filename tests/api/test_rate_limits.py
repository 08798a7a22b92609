"""API rate limits (workflows.keys.take_request): a fixed window per key that opens at its first
request, counted in the broker's Redis (exact across processes, no row lock), or on the key's
row without a Redis broker or while Redis fails. Both stores give the same answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.api.conftest import Api, end_window
from workflows import keys
from workflows.core import broker
from workflows.models import ApiKey

pytestmark = pytest.mark.django_db

PERIOD = 60.0


def _has_redis() -> bool:
    return str(django_settings.CELERY_BROKER_URL).startswith("redis")


@pytest.fixture(autouse=True)
def _period(settings: Any) -> Iterator[None]:
    settings.SLUICE_API_RATE_PERIOD = PERIOD
    broker.reset()
    yield
    broker.reset()


@pytest.fixture(params=["redis", "row"])
def store(request: Any, settings: Any) -> str:
    """Each test runs against both stores: Redis (needs the services) and the key's row."""
    if request.param == "redis" and not _has_redis():
        pytest.skip("needs a Redis broker (CELERY_BROKER_URL)")
    if request.param == "row":
        settings.CELERY_BROKER_URL = "filesystem://localhost/"
    assert (broker.client() is not None) == (request.param == "redis")
    return str(request.param)


def _key(rate_limit: int | None) -> ApiKey:
    key, _ = keys.create_api_key("limited", scopes=["runs:read"], rate_limit=rate_limit)
    return key


def test_it_allows_the_limit_then_refuses_until_the_window_ends(store: str) -> None:
    key = _key(3)
    assert [keys.take_request(key).allowed for _ in range(4)] == [True, True, True, False]
    refused = keys.take_request(key)
    assert not refused.allowed and refused.limit == 3
    assert 1 <= refused.retry_after <= PERIOD
    end_window(key)
    assert keys.take_request(key).allowed


def test_it_counts_each_key_apart(store: str) -> None:
    one, other = _key(1), _key(1)
    assert keys.take_request(one).allowed
    assert not keys.take_request(one).allowed
    assert keys.take_request(other).allowed


def test_a_rotated_key_keeps_its_window(store: str) -> None:
    key = _key(1)
    assert keys.take_request(key).allowed
    rotated = ApiKey.objects.get(pk=key.pk)
    keys.assign_new_secret(rotated)
    assert not keys.take_request(rotated).allowed


def test_the_settings_limit_applies_to_a_key_without_its_own(store: str, settings: Any) -> None:
    settings.SLUICE_API_RATE_LIMIT = 2
    key = _key(None)
    assert [keys.take_request(key).allowed for _ in range(3)] == [True, True, False]


def test_a_limit_of_zero_never_refuses(store: str) -> None:
    key = _key(0)
    assert all(keys.take_request(key).allowed for _ in range(20))


def test_a_remembered_copy_of_the_key_counts_like_a_fresh_one(store: str) -> None:
    """The API hands take_request the copy find_key remembered, read before earlier requests
    moved the window: the count must come from the store, never from the copy."""
    key = _key(2)
    stale = ApiKey.objects.get(pk=key.pk)
    assert keys.take_request(key).allowed
    assert keys.take_request(stale).allowed
    assert not keys.take_request(stale).allowed


def test_the_row_store_says_when_the_key_is_gone(settings: Any) -> None:
    """A key deleted while a process still remembers it is unknown (401), not rate limited."""
    settings.CELERY_BROKER_URL = "filesystem://localhost/"
    key = _key(1)
    assert keys.take_request(key).allowed
    ApiKey.objects.filter(pk=key.pk)._raw_delete(ApiKey.objects.db)
    with pytest.raises(keys.KeyGone):
        keys.take_request(key)


def test_the_api_answers_429_with_retry_after(api: Api, store: str) -> None:
    _, raw = keys.create_api_key("limited", scopes=["runs:read"], rate_limit=2)
    headers = {"X-API-Key": raw}
    assert [api.get("/runs", headers=headers).status_code for _ in range(3)] == [200, 200, 429]
    r = api.get("/runs", headers=headers)
    assert r.status_code == 429 and 1 <= int(r["Retry-After"]) <= PERIOD
    assert r.json()["error"]["details"]["limit"] == 2


def test_last_used_at_is_written_at_most_once_a_minute_per_process(
    api: Api, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request used to write the key's row; now one writes it only when this process has
    not for a minute (for a key without limit here; the row store writes it with the count)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    key, raw = keys.create_api_key("busy", scopes=["runs:read"], rate_limit=0)
    headers = {"X-API-Key": raw}
    assert api.get("/runs", headers=headers).status_code == 200
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as ctx:
        assert api.get("/runs", headers=headers).status_code == 200
    assert not [q for q in ctx.captured_queries if 'UPDATE "workflows_apikey"' in q["sql"]]
    real = keys.monotonic
    monkeypatch.setattr(keys, "monotonic", lambda: real() + keys.LAST_USED_EVERY + 1)
    assert api.get("/runs", headers=headers).status_code == 200
    last = ApiKey.objects.get(pk=key.pk).last_used_at
    assert last is not None and last > first


@pytest.mark.integration
def test_four_processes_together_get_exactly_the_limit_from_redis() -> None:
    """What four gunicorn workers see: one counter, so together they allow the limit, not four
    times it, and not less. (Four threads here, each with a Redis connection of its own, as
    each worker process has.)"""
    if not _has_redis():
        pytest.skip("needs a Redis broker (CELERY_BROKER_URL)")
    import redis

    key = _key(250)
    barrier = threading.Barrier(4)

    def worker() -> int:
        conn = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
        barrier.wait()
        try:
            windows = keys.RedisWindows()  # each process has its own
            return sum(windows.take(conn, key, 250).allowed for _ in range(100))
        finally:
            conn.close()

    with ThreadPoolExecutor(4) as pool:
        allowed = [f.result() for f in [pool.submit(worker) for _ in range(4)]]
    assert sum(allowed) == 250, allowed


class CountingClient:
    """A Redis client that counts the scripts run through it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def evalsha(self, *args: Any) -> Any:
        self.calls += 1
        return self.conn.evalsha(*args)


@pytest.mark.integration
def test_processes_claim_a_busy_keys_requests_a_few_at_a_time_and_never_exceed_it() -> None:
    """A limit of 5,000 is claimed 5 requests at a time: one round trip per 5 requests. The
    first refusal comes at most (4 - 1) x (5 - 1) requests early (what the other three
    processes still hold), and processes that go on serving spend all of it, not more."""
    if not _has_redis():
        pytest.skip("needs a Redis broker (CELERY_BROKER_URL)")
    key = _key(5000)
    conn = CountingClient(broker.client())
    processes = [keys.RedisWindows() for _ in range(4)]
    allowed = 0
    first_refusal_at = None
    serving = list(processes)
    while serving:
        for windows in list(serving):
            if windows.take(conn, key, 5000).allowed:
                allowed += 1
            else:
                serving.remove(windows)
                first_refusal_at = first_refusal_at or allowed
    assert first_refusal_at is not None and first_refusal_at >= 5000 - 3 * 4
    assert allowed == 5000
    assert conn.calls <= 5000 // 5 + 4, conn.calls


@pytest.mark.integration
def test_a_counter_without_a_lifetime_gets_one(settings: Any) -> None:
    """A counter that somehow lost its expiry would refuse the key for good: the next request
    gives it the period again."""
    if not _has_redis():
        pytest.skip("needs a Redis broker (CELERY_BROKER_URL)")
    key = _key(1)
    conn = broker.client()
    assert conn is not None
    conn.set(keys.window_name(key), 5)  # over the limit, and no expiry
    refused = keys.take_request(key)
    assert not refused.allowed and refused.retry_after == PERIOD
    assert 0 < conn.pttl(keys.window_name(key)) <= PERIOD * 1000


@pytest.mark.integration
def test_while_redis_fails_the_row_counts_and_redis_rests(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    key = _key(1)
    assert keys.take_request(key).allowed
    assert "resting" in caplog.text
    assert broker.client() is None  # resting: the next requests go straight to the row
    assert not keys.take_request(key).allowed
    assert ApiKey.objects.get(pk=key.pk).window_count == 1
