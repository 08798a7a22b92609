"""The doorbell's raw LPUSH (workflows.core.broker): the message Celery would have sent, or
Celery itself where a raw message cannot be sent."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
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


@pytest.mark.integration
@pytest.mark.parametrize("priority,expires", [(9, 4.0), (3, None), (0, 120.5)])
def test_an_overdue_raw_message_is_the_one_celery_sends(
    priority: int, expires: float | None
) -> None:
    """The sweep's overdue rings (a priority, an expiry) went through Celery, which waited its
    30 s on a Redis that accepts and never answers; now they are raw messages too. The
    expiry is a time: the two must agree to within the test's own duration."""
    conn = broker.client()
    assert conn is not None
    key = broker.queue_key(QUEUE, priority)
    conn.delete(key)
    options: dict[str, Any] = {"priority": priority}
    if expires is not None:
        options["expires"] = expires
    args = ["0b3c7f0e-1111-2222-3333-444455556666", 3]
    try:
        current_app.send_task(doorbell.ADVANCE, tuple(args), queue=QUEUE, **options)
        assert broker.publish([(doorbell.ADVANCE, args, QUEUE)], priority, expires)
        celery, raw = _pop(conn, key), _pop(conn, key)
    finally:
        conn.delete(key)
    assert raw["properties"]["priority"] == celery["properties"]["priority"] == priority
    for field in set(celery["headers"]) - {"id", "root_id", "origin", "expires"}:
        assert raw["headers"][field] == celery["headers"][field], field
    if expires is None:
        assert raw["headers"]["expires"] is celery["headers"]["expires"] is None
    else:
        theirs = datetime.fromisoformat(celery["headers"]["expires"])
        ours = datetime.fromisoformat(raw["headers"]["expires"])
        assert ours.utcoffset() == theirs.utcoffset()
        assert abs((ours - theirs).total_seconds()) < 1.0


def test_the_sweeps_overdue_rings_leave_as_raw_messages(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.SLUICE_OVERDUE_PRIORITY = 9
    published: list[tuple[Any, ...]] = []
    monkeypatch.setattr(broker, "usable_url", lambda: "redis://127.0.0.1:6379/0")
    monkeypatch.setattr(
        broker,
        "publish",
        lambda messages, priority=0, expires=None: (
            published.append((messages, priority, expires)) or True
        ),
    )
    monkeypatch.setattr(
        current_app, "send_task", lambda *a, **kw: pytest.fail("sent through Celery")
    )
    with doorbell.overdue(expires=6.0):
        doorbell.send_step(7, "default")
    assert published == [([(doorbell.EXECUTE_STEP, [7], "default")], 9, 6.0)]


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


def test_a_failing_redis_is_rested_and_the_message_left_to_the_sweep(
    settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not handed to Celery, which would talk to the same Redis with its own timeouts (30 s of
    a web worker per doorbell on a hung Redis): the sweep rings again from the tables."""
    sent: list[tuple[str, Any, str]] = []
    monkeypatch.setattr(
        current_app, "send_task", lambda name, args, queue, **kw: sent.append((name, args, queue))
    )
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    doorbell.send_advance("0b3c7f0e-1111-2222-3333-444455556666", 1)
    assert "resting" in caplog.text
    assert "the sweep will" in caplog.text and "Traceback" not in caplog.text
    assert sent == []
    assert broker.client() is None  # resting: the next ones are not even tried
    with pytest.raises(broker.BrokerUnavailable, match="resting"):
        broker.publish([(doorbell.ADVANCE, ["x", 1], "default")])


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_redis_costs_a_doorbell_one_second_not_thirty(
    settings: Any, hung_redis: str
) -> None:
    settings.CELERY_BROKER_URL = hung_redis
    began = time.monotonic()
    doorbell.send_advance("0b3c7f0e-1111-2222-3333-444455556666", 1)
    doorbell.send_advance("0b3c7f0e-1111-2222-3333-444455556667", 1)  # resting: no wait
    assert time.monotonic() - began < 2.5


@pytest.mark.django_db
def test_readiness_on_a_hung_redis_answers_within_seconds(settings: Any, hung_redis: str) -> None:
    from workflows import health

    settings.CELERY_BROKER_URL = hung_redis
    health.clear_cache()
    began = time.monotonic()
    check = health.check_broker()
    assert time.monotonic() - began < 3
    assert not check.ok and "does not answer" in check.problem


@pytest.mark.integration
def test_readiness_says_when_redis_refuses_writes(settings: Any, tmp_path: Any) -> None:
    """At its maxmemory with noeviction, Redis answers a ping but refuses every doorbell."""
    from workflows import health

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "1",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _answers(url), 10)
        settings.CELERY_BROKER_URL = url
        health.clear_cache()
        check = health.check_broker()
        assert not check.ok and "maxmemory" in check.problem
    finally:
        server.terminate()
        server.wait(timeout=10)


def _answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


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
