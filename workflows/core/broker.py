"""A plain Redis client on the broker's Redis, for the two things said to it on every API start:
the doorbell and the API keys' rate counters.

Celery's ``send_task`` costs about 0.5 ms of CPU per message, most of it kombu building a new
``redis.Redis`` object for each publish and Celery assembling options; a start is ~5 ms in all
(W7, docs/performance.md). Here one client per process (its connection pool survives between
requests and is reset after a fork by redis-py itself) sends the same message with one LPUSH:
``publish`` writes Celery's task message protocol 2 in kombu's Redis envelope, exactly what
``send_task(name, args, queue=...)`` would have queued (tests/workflows/test_broker.py compares
the two field by field, so a Celery or kombu upgrade that changes the format fails there).

Only for a plain ``redis://``/``rediss://``/``unix://`` broker without a key prefix; anything else
(the filesystem broker of ``make run``, a prefixed Redis) returns ``None`` from ``client()`` and
callers go through Celery as before. After a Redis error the client rests for a few seconds, so
a Redis outage costs one timeout (a second at most), not one per request. Meanwhile ``publish``
raises ``BrokerUnavailable`` rather than hand the message to Celery: Celery would talk to the
same Redis with its own timeouts (30 s of a web worker per doorbell on a Redis that accepts and
never answers), and the sweep rings again from the tables anyway (invariant 1). The rate
counters fall back to the key's row.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from celery import current_app
from celery.utils.time import add_seconds_to_datetime, maybe_make_aware
from django.conf import settings
from kombu.transport.redis import PRIORITY_STEPS, Channel

log = logging.getLogger(__name__)

SCHEMES = ("redis://", "rediss://", "unix://")
# After an error, how long callers get no client (and take their fallback path).
REST_SECONDS = 5.0
TIMEOUT_SECONDS = 1.0

_client: redis.Redis | None = None
_client_url: str | None = None
_rest_until = 0.0
_origin = ""


def usable_url() -> str | None:
    """The broker URL when a raw client may speak to it, else None."""
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    if not url.startswith(SCHEMES):
        return None
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    # kombu prefixes every queue key with this; the raw LPUSH would miss the queue. TLS options
    # for the broker are Celery's to apply.
    if options.get("global_keyprefix") or getattr(settings, "CELERY_BROKER_USE_SSL", None):
        return None
    return url


def client() -> redis.Redis | None:
    """This process's client, or None: no usable Redis broker, or resting after an error."""
    global _client, _client_url
    url = usable_url()
    if url is None or time.monotonic() < _rest_until:
        return None
    if _client is None or _client_url != url:
        _client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )
        _client_url = url
    return _client


def failed(exc: BaseException) -> None:
    """A call on the client failed: rest, and drop its connections (they may be half-read)."""
    global _rest_until
    _rest_until = time.monotonic() + REST_SECONDS
    log.warning("Redis at the broker failed (%s); resting %.0f s", exc, REST_SECONDS)
    if _client is not None:
        _client.connection_pool.disconnect()


def reset() -> None:
    """Forget the client and any rest (tests that switch brokers)."""
    global _client, _client_url, _rest_until
    if _client is not None:
        _client.connection_pool.disconnect()
    _client, _client_url, _rest_until = None, None, 0.0


def _reply_to() -> str:
    return str(current_app.thread_oid)


def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu keeps ``queue``'s messages of ``priority`` in (one list per
    priority step; step 0 is the queue's own name)."""
    step = _priority_step(priority)
    return f"{queue}{Channel.sep}{step}" if step else queue


def _priority_step(priority: int) -> int:
    """kombu's rounding of a priority down to a step (0, 3, 6, 9)."""
    return max((step for step in PRIORITY_STEPS if step <= priority), default=PRIORITY_STEPS[0])


def task_message(
    name: str, args: Iterable[Any], queue: str, priority: int = 0, expires: float | None = None
) -> bytes:
    """One task message, as Celery's ``send_task(name, args, queue=queue)`` queues it on Redis
    (with ``priority`` from the task routes, and ``expires`` seconds from now, as Celery's
    ``expires=`` writes it: an ISO time in the app's time zone).

    Celery's protocol 2 (``headers`` name the task, ``body`` is ``[args, kwargs, embed]``)
    inside kombu's Redis envelope (the body base64-encoded, the routing in ``properties``).
    """
    global _origin
    if not _origin:
        _origin = f"gen{os.getpid()}@{socket.gethostname()}"
    args = list(args)
    task_id = str(uuid.uuid4())
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([args, {}, embed])
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": _expiry(expires),
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(tuple(args)),
            "kwargsrepr": "{}",
            "origin": _origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": _reply_to(),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


def _expiry(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    app = current_app
    return maybe_make_aware(
        add_seconds_to_datetime(app.now(), seconds), tz=app.timezone
    ).isoformat()


class BrokerUnavailable(Exception):
    """The broker's Redis failed, now or moments ago (resting): the message was not sent."""


def publish(
    messages: list[tuple[str, list[Any], str]], priority: int = 0, expires: float | None = None
) -> bool:
    """LPUSH ``(task name, args, queue)`` messages at ``priority`` (dropped unrun by the
    consuming worker after ``expires`` seconds, if given). False when the broker is not one a
    raw client may speak to (the caller sends them through Celery then);
    ``BrokerUnavailable`` when its Redis failed just now or is resting after a failure."""
    if usable_url() is None:
        return False
    conn = client()
    if conn is None:
        raise BrokerUnavailable(
            f"the broker's Redis failed moments ago (resting {REST_SECONDS:g} s)"
        )
    try:
        if len(messages) == 1:
            name, args, queue = messages[0]
            conn.lpush(
                queue_key(queue, priority), task_message(name, args, queue, priority, expires)
            )
        else:
            pipe = conn.pipeline(transaction=False)
            for name, args, queue in messages:
                pipe.lpush(
                    queue_key(queue, priority), task_message(name, args, queue, priority, expires)
                )
            pipe.execute()
    except redis.RedisError as exc:
        failed(exc)
        raise BrokerUnavailable(f"the broker's Redis failed: {exc}") from None
    return True
