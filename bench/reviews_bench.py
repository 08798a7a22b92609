"""W4 and W5: gate expiry at scale and the reviewer queue with a deep backlog.

Run alone with ``python -m bench.reviews_bench`` (prints JSON), or from ``bench/run.py``
(``run_w4()`` / ``run_w5()``). Both work in a PostgreSQL database of their own,
``bench_reviews`` on the server of ``BENCH_DATABASE_URL`` or ``DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/postgres``), created fresh and dropped afterwards; the
workers use Redis database ``BENCH_REVIEWS_BROKER_URL`` (default ``redis://127.0.0.1:6379/11``).

- **W4** — 10,000 runs suspended at a gate (written in bulk, exactly the rows ``ctx.review``
  writes), every deadline set to the same instant ``t0``; real Celery worker processes and
  beat (sweep interval 1 s). ``expire_s`` is the time from ``t0`` until every gate is expired
  *and* every run resumed past it and finished (the last ``finished_at``). ``expired_s`` (all
  gates closed) is reported alongside.
- **W5** — the queue page (``GET /reviews/``) as a reviewer, in-process through Django's full
  request stack (sessions, auth, middleware, template), with 10,000 open gates: p95 of the
  server-side time over 200 requests, and the number of queries per request with 100 and with
  10,000 open gates (the queue is paginated, so it must not grow). Then the backlog grows to
  100,000 open gates and the same is measured again (``p95_ms_100000``, ``queries_100000``):
  the page must cost the same at ten times the backlog.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.procs import CeleryProcesses
from workflows import workflow

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "bench_reviews"
DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/postgres"
BROKER = os.environ.get("BENCH_REVIEWS_BROKER_URL", "redis://127.0.0.1:6379/11")
LOGS = ROOT / "var" / "bench-reviews"
TITLE = "Verify the extracted figures"
PAYLOAD: dict[str, Any] = {
    "summary": "Quarterly report: revenue and headcount extracted by two models.",
    "analyses": [
        {
            "title": "Revenue",
            "result": "$4.2M",
            "confidence": 0.91,
            "evidence": [{"quote": "Revenue for the quarter was $4.2 million", "source": "p. 3"}],
        },
        {
            "title": "Headcount",
            "result": "118",
            "confidence": 0.62,
            "evidence": ["We ended the quarter with 118 employees"],
        },
    ],
}


@workflow(name="bench.review")
def bench_review(ctx: Any) -> str:
    """One gate, then done: resuming the run is all the work there is after the gate."""
    decision = ctx.review(
        TITLE,
        "Check the figures against the quotes.",
        PAYLOAD,
        timeout=timedelta(hours=24),
        on_timeout="approve",
    )
    return str(decision.outcome)


# --- the bench database --------------------------------------------------------------------------


def _server_url() -> str:
    for name in ("BENCH_DATABASE_URL", "DATABASE_URL"):
        url = os.environ.get(name, "")
        if url.startswith(("postgres://", "postgresql://")):
            return url
    return DEFAULT_SERVER


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _admin(sql: str) -> None:
    import psycopg

    url = _with_db(_server_url(), "postgres").replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


@contextmanager
def bench_database() -> Iterator[str]:
    """Create ``bench_reviews``, point Django's default connection at it, migrate; drop after.

    Works whether or not Django is already set up (``bench/run.py`` sets it up on its own
    database first): an existing connection is closed and re-pointed, then restored.
    """
    import django
    from django.apps import apps

    url = _with_db(_server_url(), DBNAME)
    _admin(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{DBNAME}"')
    saved: dict[str, Any] | None = None
    if not apps.ready:
        os.environ["DATABASE_URL"] = url
        os.environ["CELERY_BROKER_URL"] = BROKER
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        os.environ.setdefault("SLUICE_LOG_LEVEL", "WARNING")
        django.setup()
    else:
        from django.db import connections

        connections.close_all()
        conn = connections["default"]
        saved = dict(conn.settings_dict)
        parts = urlsplit(url)
        conn.settings_dict.update(
            ENGINE="django.db.backends.postgresql",
            NAME=DBNAME,
            USER=parts.username or "",
            PASSWORD=parts.password or "",
            HOST=parts.hostname or "",
            PORT=parts.port or "",
        )
    from django.core.management import call_command
    from django.db import connections

    try:
        call_command("migrate", verbosity=0)
        yield url
    finally:
        connections.close_all()
        if saved is not None:
            connections["default"].settings_dict.clear()
            connections["default"].settings_dict.update(saved)
        _admin(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')


# --- bulk setup ---------------------------------------------------------------------------------


def create_open_gates(
    n: int,
    *,
    deadline: Any,
    spread: timedelta | None = None,
    group: str = "reviewers",
    batch: int = 2000,
) -> None:
    """Write ``n`` runs suspended at an open gate: the rows ``ctx.review`` would have written
    (run, waiting ``gate`` journal row, gate, its "opened" event), in bulk."""
    from django.db import transaction
    from django.utils import timezone

    from reviews.models import Gate, GateEvent
    from workflows.models import Run, Step

    now = timezone.now()
    pipelines = ["finance.quarterly_figures", "contracts.clause_check", "support.ticket_triage"]
    for start in range(0, n, batch):
        size = min(batch, n - start)
        with transaction.atomic():
            runs = Run.objects.bulk_create(
                [
                    Run(
                        id=uuid.uuid4(),
                        workflow="bench.review",
                        status="suspended",
                        input={},
                        started_at=now,
                        current_step=TITLE,
                    )
                    for _ in range(size)
                ]
            )
            steps = Step.objects.bulk_create(
                [
                    Step(
                        run=r,
                        position=1,
                        kind="gate",
                        name=TITLE,
                        status="waiting",
                        args={"default": None},
                        started_at=now,
                    )
                    for r in runs
                ]
            )
            gates = Gate.objects.bulk_create(
                [
                    Gate(
                        run=r,
                        step=s,
                        pipeline=pipelines[(start + i) % 3],
                        title=TITLE,
                        instruction="Check the figures against the quotes.",
                        payload=PAYLOAD,
                        choices=["approve", "reject"],
                        on_timeout="approve",
                        group=group,
                        deadline=deadline + (spread * (start + i) / n if spread else timedelta(0)),
                    )
                    for i, (r, s) in enumerate(zip(runs, steps, strict=True))
                ]
            )
            GateEvent.objects.bulk_create(
                [GateEvent(gate=g, kind="opened", at=now, detail={}) for g in gates]
            )


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE")


def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "TRUNCATE reviews_gateevent, reviews_gate, workflows_run, workflows_step, "
            "workflows_event, workflows_blob CASCADE"
        )


# --- processes ------------------------------------------------------------------------------------


class Processes(CeleryProcesses):
    def __init__(self, url: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": BROKER,
            "SLUICE_WORKFLOW_MODULES": "bench.reviews_bench",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SLUICE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("SLUICE_TEST_DB_NAME", None)
        super().__init__(LOGS, env)

    def worker(self, name: str, pool: str = "solo", concurrency: int = 1) -> None:
        self.start(name, pool=pool, concurrency=concurrency)


def _flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER).flushdb()


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


# --- W4 ----------------------------------------------------------------------------------------


def _w4(url: str, n: int, workers: int, concurrency: int) -> dict[str, Any]:
    from celery import Celery
    from django.db.models import Max
    from django.utils import timezone

    from reviews.models import Gate
    from workflows.models import Run

    _flush_broker()
    far = timezone.now() + timedelta(days=1)
    create_open_gates(n, deadline=far)
    _analyze()
    sender = Celery("bench-reviews", broker=BROKER)
    procs = Processes(url)
    try:
        for i in range(workers):
            procs.worker(
                f"w4-{i}", pool="prefork" if concurrency > 1 else "solo", concurrency=concurrency
            )
        procs.beat()
        # Warm-up, untimed: a burst of gates expires and their runs resume, so every worker
        # process has imported its code and opened its connections before the clock starts.
        create_open_gates(workers * concurrency * 60, deadline=far)
        warm = list(
            Gate.objects.order_by("-pk").values_list("run_id", flat=True)[
                : workers * concurrency * 60
            ]
        )
        Gate.objects.filter(run_id__in=warm).update(deadline=timezone.now())
        sender.send_task("reviews.expire_gates", queue="default")
        _wait(
            lambda: Run.objects.filter(pk__in=warm, status="succeeded").count() == len(warm),
            120,
            "warm-up runs",
        )
        bench = Run.objects.filter(workflow="bench.review").exclude(pk__in=warm)
        time.sleep(1)
        # Every deadline passes at the same instant; the expiry is triggered right then, as
        # the beat would (it keeps ticking too, and its sweeps share the work).
        t0 = timezone.now()
        Gate.objects.filter(status="open").update(deadline=t0)
        sender.send_task("reviews.expire_gates", queue="default")
        _wait(
            lambda: not Gate.objects.filter(status="open").exists(),
            120,
            "all gates expired",
            interval=0.02,
        )
        _wait(
            lambda: not bench.exclude(status="succeeded").exists(),
            300,
            "all runs resumed",
            interval=0.05,
        )
        last = bench.aggregate(m=Max("finished_at"))["m"]
        last_gate = Gate.objects.exclude(run_id__in=warm).aggregate(m=Max("decided_at"))["m"]
        assert bench.count() == n
        assert Gate.objects.filter(status="expired", timed_out=True).count() == n + len(warm)
    finally:
        procs.stop()
        sender.close()
    _reset()
    return {
        "expire_s": round((last - t0).total_seconds(), 3),
        "expired_s": round((last_gate - t0).total_seconds(), 3),
        "gates": n,
        "worker_processes": workers * concurrency,
    }


def run_w4(n: int = 10_000, workers: int = 2, concurrency: int = 2) -> dict[str, Any]:
    """W4: seconds from the shared deadline until all ``n`` gates expired and runs resumed,
    with ``workers`` worker processes of ``concurrency`` pool processes each."""
    with bench_database() as url:
        return _w4(url, n, workers, concurrency)


# --- W5 ----------------------------------------------------------------------------------------


def _queue_user() -> Any:
    from django.contrib.auth.models import Group, User

    user, _ = User.objects.get_or_create(username="bench-reviewer")
    user.groups.add(Group.objects.get_or_create(name="reviewers")[0])
    return user


def _measure(client: Any, requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        response = client.get("/reviews/", secure=True)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, response.status_code
    return times


def _queries(client: Any) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert client.get("/reviews/", secure=True).status_code == 200
    return len(ctx.captured_queries)


def _w5(n: int, requests: int, big: int) -> dict[str, float]:
    from django.test import Client
    from django.utils import timezone

    client = Client()
    client.force_login(_queue_user())
    soon = timezone.now() + timedelta(minutes=5)
    create_open_gates(100, deadline=soon, spread=timedelta(hours=20))
    _analyze()
    _measure(client, 20)
    q100 = _queries(client)
    create_open_gates(n - 100, deadline=soon, spread=timedelta(hours=20))
    _analyze()
    _measure(client, 20)  # warm-up, untimed
    q_n = _queries(client)
    times = sorted(_measure(client, requests))
    result: dict[str, float] = {
        "p95_ms": _p95(times),
        "median_ms": round(statistics.median(times), 2),
        "queries_100": q100,
        f"queries_{n}": q_n,
        "gates": n,
        "requests": requests,
    }
    if big > n:
        # Ten times the backlog: the same page must cost the same.
        create_open_gates(big - n, deadline=soon, spread=timedelta(hours=20), batch=5000)
        _analyze()
        _measure(client, 20)  # warm-up, untimed
        result[f"queries_{big}"] = _queries(client)
        result[f"p95_ms_{big}"] = _p95(sorted(_measure(client, requests)))
    _reset()
    return result


def _p95(times: list[float]) -> float:
    return round(times[max(0, int(round(0.95 * len(times))) - 1)], 2)


def run_w5(n: int = 10_000, requests: int = 200, big: int = 100_000) -> dict[str, float]:
    """W5: queue page p95 with ``n`` open gates, then with ``big``; queries at 100, ``n`` and
    ``big`` gates."""
    with bench_database():
        return _w5(n, requests, big)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="W4,W5")
    parser.add_argument("-n", type=int, default=10_000, help="gates")
    parser.add_argument("--workers", type=int, default=2, help="W4 worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="W4 pool size per worker")
    parser.add_argument("--big", type=int, default=100_000, help="W5's second, larger backlog")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results: dict[str, Any] = {}
    if "W4" in args.only:
        results["W4"] = run_w4(args.n, workers=args.workers, concurrency=args.concurrency)
    if "W5" in args.only:
        results["W5"] = run_w5(args.n, big=args.big)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
