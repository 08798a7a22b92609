"""Liveness and readiness: ``/healthz``, ``/readyz`` and ``manage.py sluice_check``.

``/healthz`` says the web process answers; it touches nothing else, so a database outage never
makes an orchestrator restart every web process. ``/readyz`` checks what Sluice needs to make
progress, each part on its own:

- ``database``: a ``SELECT 1``;
- ``broker``: a connection to the Celery broker;
- ``migrations``: none pending (a web process of a release whose migrations have not run yet is
  not ready);
- ``beat``: the last sweep pass (the ``sweep`` heartbeat row, written after every pass) is
  recent, so timers fire, leases are reclaimed and lost doorbells ring again;
- ``queues``: every queue a pool needs has at least one worker consuming it (Celery's
  ``inspect().active_queues()``, answered by the workers themselves). A queue nobody consumes is
  the classic silent Celery outage: messages pile up and runs wait forever.

The answers name no host, address, DSN or password: only what is wrong, in words. The broker
and queue checks cost a round trip to every worker, so their result is kept for a few seconds
in the process (``CACHE_SECONDS``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

log = logging.getLogger("sluice.health")

CACHE_SECONDS = 5.0
INSPECT_TIMEOUT = 1.0
HEARTBEAT = "sweep"

_cached: dict[str, tuple[float, Any]] = {}


@dataclass
class Check:
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)
    problem: str | list[str] = ""

    @property
    def problems(self) -> list[str]:
        """What is wrong, one sentence each."""
        if isinstance(self.problem, list):
            return list(self.problem)
        return [self.problem] if self.problem else []

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, **self.detail}
        if self.problems:
            out["problems"] = self.problems
        return out


def _memo(key: str, compute: Callable[[], Any], seconds: float = CACHE_SECONDS) -> Any:
    now = time.monotonic()
    hit = _cached.get(key)
    if hit is not None and now - hit[0] < seconds:
        return hit[1]
    value = compute()
    _cached[key] = (time.monotonic(), value)
    return value


def clear_cache() -> None:
    _cached.clear()


# --- the parts ---------------------------------------------------------------------------------


def check_database() -> Check:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    except Exception as exc:
        # The exception text may carry the host or the user: give its kind only.
        return Check(False, problem=f"the database does not answer ({type(exc).__name__})")
    return Check(True)


def check_migrations() -> Check:
    from django.db.migrations.executor import MigrationExecutor

    def pending() -> list[str]:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        return [f"{m.app_label}.{m.name}" for m, _ in plan]

    try:
        # Reading the migration files costs tens of milliseconds: once per CACHE_SECONDS.
        names = _memo("migrations", pending)
    except Exception as exc:
        return Check(False, problem=f"could not read the migration state ({type(exc).__name__})")
    if names:
        return Check(
            False,
            {"pending": len(names), "names": names[:20]},
            f"{len(names)} migration(s) not applied: run `manage.py migrate`",
        )
    return Check(True, {"pending": 0})


def max_sweep_age() -> float:
    """Seconds after which a missing sweep means beat (or every worker) is down."""
    interval = float(settings.SLUICE_SWEEP_INTERVAL)
    return float(getattr(settings, "SLUICE_READY_SWEEP_MAX_AGE", 0) or max(30.0, 10 * interval))


def check_beat(now: datetime | None = None) -> Check:
    from workflows.models import Heartbeat

    now = now or timezone.now()
    try:
        beat = Heartbeat.objects.filter(name=HEARTBEAT).values_list("at", flat=True).first()
    except Exception as exc:
        return Check(False, problem=f"could not read the sweep heartbeat ({type(exc).__name__})")
    limit = max_sweep_age()
    if beat is None:
        return Check(
            False,
            {"last_sweep": None, "max_age_seconds": limit},
            "no sweep has run yet: is `celery -A config beat` running, and a worker of the "
            "default queue?",
        )
    age = max(0.0, (now - beat).total_seconds())
    detail = {
        "last_sweep": beat.isoformat(),
        "age_seconds": round(age, 1),
        "max_age_seconds": limit,
    }
    if age > limit:
        return Check(
            False,
            detail,
            f"the last sweep ran {age:.0f} s ago: is `celery -A config beat` running, and a "
            "worker of the default queue?",
        )
    return Check(True, detail)


def _broker_ok() -> tuple[bool, str]:
    from config.celery import app
    from workflows.core import broker

    if broker.usable_url() is not None:
        return _redis_ok()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=INSPECT_TIMEOUT)
    except Exception as exc:
        return False, f"the broker does not answer ({type(exc).__name__})"
    return True, ""


def _redis_ok() -> tuple[bool, str]:
    """A Redis broker, asked with a timeout of INSPECT_TIMEOUT for every read (Celery's own
    connection reads with its 30 s socket timeout: a Redis that accepts and never answers
    held the probe, and a web worker, for 30 s), and by a write: a Redis at its maxmemory
    with noeviction answers a ping but refuses every doorbell."""
    import redis

    from workflows.core import broker

    url = broker.usable_url()
    assert url is not None
    conn = redis.Redis.from_url(
        url, socket_timeout=INSPECT_TIMEOUT, socket_connect_timeout=INSPECT_TIMEOUT
    )
    try:
        conn.set("sluice:readyz", "1", ex=60)
    except redis.ResponseError as exc:
        if "OOM" in str(exc):
            return False, "the broker's Redis refuses writes: it is at its maxmemory"
        return False, f"the broker's Redis refuses writes ({str(exc)[:80]})"
    except redis.RedisError as exc:
        return False, f"the broker does not answer ({type(exc).__name__})"
    finally:
        conn.close()
    return True, ""


def check_broker() -> Check:
    ok, problem = _memo("broker", _broker_ok)
    return Check(ok, problem=problem)


def pool_queues() -> dict[str, list[str]]:
    """Queue name -> the pools whose steps it carries. The default queue also carries every
    run's doorbell (``workflows.advance``), the sweep and the outbox."""
    from workflows.core.pools import queue_for

    default = str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default"))
    queues: dict[str, list[str]] = {default: []}
    for pool in settings.SLUICE_POOLS:
        queues.setdefault(queue_for(pool), []).append(pool)
    return queues


def consumers() -> dict[str, int] | None:
    """Queue name -> how many workers consume it, as the workers answer within
    INSPECT_TIMEOUT; None when the broker could not be asked."""
    from config.celery import app

    try:
        answers = app.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
    except Exception:
        return None
    counts: dict[str, int] = {}
    for queues in answers.values():
        for q in queues or []:
            name = q.get("name") if isinstance(q, dict) else None
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def worker_command(queue: str) -> str:
    return f"celery -A config worker -Q {queue} -n {queue}@%h"


def queue_problems(counts: dict[str, int]) -> list[str]:
    """A sentence per queue without a worker (empty when every queue has one)."""
    problems = []
    default = str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default"))
    for queue, pools in pool_queues().items():
        if counts.get(queue, 0):
            continue
        names = [f"pool {p!r}" for p in pools]
        if queue == default:
            names.append("every run's doorbell, the sweep and the outbox")
        what = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
        problems.append(
            f"{what} (queue {queue}) has no worker: runs that need it will wait forever; "
            f"start: {worker_command(queue)}"
        )
    return problems


def check_queues() -> Check:
    counts = _memo("consumers", consumers)
    if counts is None:
        return Check(False, problem="could not ask the workers which queues they consume")
    expected = pool_queues()
    detail = {
        "queues": {
            q: {"pools": pools, "workers": counts.get(q, 0)} for q, pools in expected.items()
        }
    }
    problems = queue_problems(counts)
    return Check(not problems, detail, problems)


CHECKS: dict[str, Callable[[], Check]] = {
    "database": check_database,
    "broker": check_broker,
    "migrations": check_migrations,
    "beat": check_beat,
    "queues": check_queues,
}


def readiness() -> tuple[bool, dict[str, Any]]:
    """Every part, checked; (all ok, the JSON body)."""
    results: dict[str, Check] = {}
    for name, check in CHECKS.items():
        if name in ("migrations", "beat") and not results["database"].ok:
            results[name] = Check(False, problem="skipped: the database does not answer")
            continue
        if name == "queues" and "broker" in results and not results["broker"].ok:
            # Asking the workers goes through the broker: against a dead one it retries for
            # seconds, and the probe would hold a web worker that long.
            results[name] = Check(False, problem="skipped: the broker does not answer")
            continue
        results[name] = check()
    ready = all(c.ok for c in results.values())
    return ready, {
        "status": "ready" if ready else "not ready",
        "failing": [n for n, c in results.items() if not c.ok],
        "checks": {n: c.as_json() for n, c in results.items()},
    }


# --- the heartbeat the sweep leaves ----------------------------------------------------------


def record_sweep(name: str, **fields: Any) -> None:
    """Instrumentation observer: after each sweep pass, stamp the ``sweep`` heartbeat (one
    UPSERT per pass, every SLUICE_SWEEP_INTERVAL seconds)."""
    if name != "sweep_finished":
        return
    from workflows.models import Heartbeat

    at = fields.get("at") or timezone.now()
    Heartbeat.objects.update_or_create(
        name=HEARTBEAT, defaults={"at": at, "detail": dict(fields.get("result") or {})}
    )


# --- the endpoints -----------------------------------------------------------------------------


# GET or HEAD: load balancers often probe with HEAD, and a 405 marked the process down.
@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is touched (no database, no broker)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """200 with every part when Sluice can make progress; 503 naming the failing parts.

    A 503 here is an answer, not a server error: it is logged once as a warning naming the
    failing parts, not by ``django.request`` as an ERROR with a stack (a probe every few
    seconds during an outage would fill the error log and page whoever watches it)."""
    ready, body = readiness()
    response = JsonResponse(body, status=200 if ready else 503)
    if not ready:
        log.warning("not ready: %s", ", ".join(body["failing"]))
        response._has_been_logged = True  # type: ignore[attr-defined]  # django.utils.log
    return response
