"""Minimal stand-alone Celery app for the plain-Celery peer (not the project's config).

Configured entirely from environment variables set by ``celery_peer`` for its worker
subprocess (and read the same way in the driver):

  BENCH_CELERY_BROKER   Redis URL, e.g. redis://127.0.0.1:6379/9
  BENCH_CELERY_MODE     "signal" (no result backend; the chain's last task RPUSHes its
                        value to a Redis list) or "backend" (Redis result backend, every
                        task's result stored, driver waits with AsyncResult.get())
  BENCH_CELERY_ACKS     "early" (Celery defaults: ack on receipt, prefetch multiplier 4)
                        or "late" (acks_late, prefetch 1, reject on worker lost - the
                        settings the Sluice project runs its own Celery with)
"""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/9")
MODE = os.environ.get("BENCH_CELERY_MODE", "signal")
ACKS = os.environ.get("BENCH_CELERY_ACKS", "early")
QUEUE = "bench_peer"

app = Celery("bench_peer", broker=BROKER, backend=BROKER if MODE == "backend" else None)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=(MODE != "backend"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
if ACKS == "late":
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
    )

_redis = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    return _redis


@app.task(name="bench_peer.inc")
def inc(x: int) -> int:
    return x + 1


@app.task(name="bench_peer.inc_last")
def inc_last(x: int, done_key: str) -> int:
    """The chain's last step: returns x + 1 like the others and reports it on ``done_key``."""
    v = x + 1
    _r().rpush(done_key, v)
    return v
