"""The doorbell's raw LPUSH (workflows.core.broker): the message Celery would have sent, or
Celery itself where a raw message cannot be sent."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import current_app

from tests import sample_workflows as samples
from tests.live import wait_until
from workflows import get_run, start
from workflows.core import broker, doorbell

QUEUE = "test-broker-format"


@pytest.fixture(autouse=True)
def _fresh_client() -> Iterator[None]:
    broker.reset()
    yield
    broker.reset()


def _pop(conn: Any, key: str = QUEUE) -> dict[str, Any]:
    raw = conn.rpop(key)
    assert raw is not None
    message: dict[str, Any] = json.loads(raw)
    return message


@pytest.mark.integration
@pytest.mark.parametrize(
    "name,args",
    [
        (doorbell.ADVANCE, ["0b3c7f0e-1111-2222-3333-444455556666", 3]),
        (doorbell.ADVANCE_MANY, [[["0b3c7f0e-1111-2222-3333-444455556666", 1]]]),
        (doorbell.EXECUTE_STEP, [42]),
        # An app's burst through ``doorbell.send_tasks`` (reviews' resume chunks).
        ("reviews.resume_runs", [[["0b3c7f0e-1111-2222-3333-444455556666", 1]]]),
    ],
)
def test_a_raw_message_is_the_one_celery_sends(name: str, args: list[Any]) -> None:
    """Field by field, except what is unique to each message (ids, delivery tag): a Celery or
    kombu upgrade that changes the format fails here, not in production."""
    conn = broker.client()
    assert conn is not None
    # Celery's task routes give every doorbell the work priority (kombu keeps a Redis list per
    # priority step): the raw message must land in the same list, saying the same priority.
    priority = doorbell._work_priority()
    key = broker.queue_key(QUEUE, priority)
    conn.delete(key)
    try:
        current_app.send_task(name, tuple(args), queue=QUEUE)
        assert broker.publish([(name, args, QUEUE)], priority=priority)
        celery, raw = _pop(conn, key), _pop(conn, key)
    finally:
        conn.delete(key)
    unique_headers = {"id", "root_id", "origin"}
    unique_properties = {"correlation_id", "delivery_tag"}
    assert set(raw) == set(celery)
    assert set(raw["headers"]) == set(celery["headers"])
    assert set(raw["properties"]) == set(celery["properties"])
    for field in set(celery) - {"headers", "properties", "body"}:
        assert raw[field] == celery[field], field
    for field in set(celery["headers"]) - unique_headers:
        assert raw["headers"][field] == celery["headers"][field], field
    for field in set(celery["properties"]) - unique_properties:
        assert raw["properties"][field] == celery["properties"][field], field
    assert json.loads(base64.b64decode(raw["body"])) == json.loads(base64.b64decode(celery["body"]))
    assert raw["headers"]["root_id"] == raw["headers"]["id"] == raw["properties"]["correlation_id"]


@pytest.mark.parametrize(
    "url,options",
    [
        ("filesystem://localhost/", {}),
        ("memory://", {}),
        ("redis://127.0.0.1:6379/0", {"global_keyprefix": "sluice:"}),
    ],
)
def test_without_a_plain_redis_broker_messages_go_through_celery(
    settings: Any, url: str, options: dict[str, Any]
) -> None:
    settings.CELERY_BROKER_URL = url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    assert broker.client() is None
    assert not broker.publish([(doorbell.ADVANCE, ["x", 1], "default")])


def test_a_failing_redis_is_rested_and_the_message_goes_through_celery(
    settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, Any, str]] = []
    monkeypatch.setattr(
        current_app, "send_task", lambda name, args, queue, **kw: sent.append((name, args, queue))
    )
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    doorbell.send_advance("0b3c7f0e-1111-2222-3333-444455556666", 1)
    assert "resting" in caplog.text
    assert sent == [(doorbell.ADVANCE, ["0b3c7f0e-1111-2222-3333-444455556666", 1], "default")]
    assert broker.client() is None  # resting: Celery carries the next ones at once


def test_a_broker_with_tls_options_is_left_to_celery(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "rediss://127.0.0.1:6379/0"
    settings.CELERY_BROKER_USE_SSL = {"ssl_cert_reqs": "required"}
    assert broker.client() is None


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_a_run_rung_by_a_raw_message(live: Any) -> None:
    """No beat here, so no sweep to ring again: only the start's own doorbell can get the
    run going."""
    live.worker()
    run = start(samples.chain, {"n": 3})
    done = wait_until(lambda: get_run(run.pk) if get_run(run.pk).is_terminal else None, 60)
    assert (done.status, done.output) == ("succeeded", 3)
