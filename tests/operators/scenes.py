"""Realistic runs for the operator pages: real journals written by the engine (through the
in-memory doorbell), with timestamps then spread out to look like minutes of work, and a day
of synthetic history for the ops overview.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from tests.operators.workflows import ATTEMPTS
from tests.support import Bell
from workflows import send_event, start
from workflows.core.sweeper import sweep
from workflows.models import Run, Step

DURATIONS = {
    "fetch_document": 1.8,
    "summarize": 7.5,
    "classify": 2.4,
    "compose_report": 0.35,
    "signed_off": 1500.0,
    "Approve the contract summary": 900.0,
}


def settle(bell: Bell, rounds: int = 30) -> None:
    """Drain and sweep until quiet, making due any retry backoff (instead of sleeping)."""
    for _ in range(rounds):
        bell.drain()
        Step.objects.filter(status="retrying").update(wake_at=timezone.now() - timedelta(seconds=1))
        sweep()
        if not bell.messages:
            return


def spread(run: Run, started: datetime, scale: float = 1.0) -> Run:
    """Give the run's journal plausible timings, in journal order, starting at ``started``."""
    run.refresh_from_db()
    rows = list(Step.objects.filter(run=run, superseded=False).order_by("position", "branch"))
    heads = [r for r in rows if r.branch < 0]
    t = started
    for head in heads:
        if head.kind == "parallel":
            latest = t
            for b in (r for r in rows if r.position == head.position and r.branch >= 0):
                b.started_at = t + timedelta(seconds=0.12 * b.branch)
                took = DURATIONS.get(b.name, 1.0) * scale * (1 + 0.35 * (b.branch % 3))
                took += 4.0 * (b.attempt - 1)  # earlier attempts and their backoff
                if b.status in ("succeeded", "failed"):
                    b.finished_at = b.started_at + timedelta(seconds=took)
                    latest = max(latest, b.finished_at)
                else:
                    b.finished_at = None
                b.save(update_fields=["started_at", "finished_at"])
            head.started_at = t
            head.finished_at = latest if head.status in ("succeeded", "failed") else None
        else:
            head.started_at = t
            took = DURATIONS.get(head.name, 1.0) * scale + 4.0 * max(0, head.attempt - 1)
            head.finished_at = (
                t + timedelta(seconds=took) if head.status in ("succeeded", "failed") else None
            )
        head.save(update_fields=["started_at", "finished_at"])
        t = (head.finished_at or t) + timedelta(seconds=0.08)
    run.created_at = started - timedelta(seconds=0.6)
    run.started_at = started
    if run.is_terminal:
        run.finished_at = t
    Run.objects.filter(pk=run.pk).update(
        created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at
    )
    run.refresh_from_db()
    return run


def showcase(bell: Bell, now: datetime | None = None) -> dict[str, Run]:
    """A handful of runs in every interesting state, for the run pages."""
    now = now or timezone.now()
    ATTEMPTS.clear()  # the flaky document fails on its first attempt in every scene
    urls = [
        f"https://docs.example.com/{name}.pdf"
        for name in ("master-agreement", "flaky-annex-a", "annex-b", "pricing", "sla")
    ]
    runs: dict[str, Run] = {}
    runs["succeeded"] = start(
        "docs.analyze",
        {"urls": urls},
        tenant="acme",
        created_by="api:sk_3f9a1c2b",
        callback_url="https://hooks.example.com/sluice",
    )
    settle(bell)
    send_event(runs["succeeded"].pk, "signed_off", {"by": "maria@acme.example"})
    settle(bell)
    runs["waiting"] = start(
        "docs.analyze", {"urls": urls[:3]}, tenant="acme", created_by="api:sk_3f9a1c2b"
    )
    settle(bell)
    runs["failed"] = start(
        "docs.analyze",
        {"urls": [urls[0], "https://docs.example.com/down-annex.pdf"]},
        tenant="acme",
        created_by="api:sk_3f9a1c2b",
    )
    settle(bell)
    runs["review"] = start(
        "contracts.review", {"url": urls[2]}, tenant="acme", created_by="user:maria"
    )
    settle(bell)
    spread(runs["succeeded"], now - timedelta(minutes=42))
    # The sign-off came 25 minutes after the report.
    spread(runs["waiting"], now - timedelta(minutes=6))
    spread(runs["failed"], now - timedelta(minutes=18))
    spread(runs["review"], now - timedelta(minutes=3))
    return {k: Run.objects.get(pk=v.pk) for k, v in runs.items()}


PIPELINES = {
    "docs.analyze": (0.0053, 0.06),
    "contracts.review": (0.0042, 0.12),
    "support.triage": (0.0009, 0.02),
    "invoices.extract": (0.0021, 0.09),
}


def history(now: datetime | None = None, per_hour: int = 14, seed: int = 7) -> int:
    """A day of finished runs (and two weeks of LLM cost) written straight to the tables."""
    now = now or timezone.now()
    rnd = random.Random(seed)
    runs: list[Run] = []
    steps: list[Step] = []
    for hour in range(24):
        busy = 0.5 + 0.5 * abs(12 - hour) / 12  # quieter in the middle of the night
        for _ in range(int(per_hour * busy) + rnd.randint(0, 4)):
            name = rnd.choice(list(PIPELINES))
            unit_cost, failure = PIPELINES[name]
            status = (
                "failed"
                if rnd.random() < failure * (2.5 if hour in (5, 6) else 1)
                else "canceled"
                if rnd.random() < 0.02
                else "succeeded"
            )
            started = now - timedelta(hours=hour, minutes=rnd.uniform(0, 59))
            run = Run(
                id=uuid.uuid4(),
                workflow=name,
                status=status,
                input={},
                tenant="acme",
                created_by="api:sk_7c01d9e4",
                started_at=started,
                current_step="classify",
                error={
                    "type": "StepFailed",
                    "message": "step 'summarize' failed: RateLimitError: 429 from provider",
                }
                if status == "failed"
                else None,
            )
            t = started
            for position, (step, pool, mean) in enumerate(
                [
                    ("fetch_document", "default", 1.2),
                    ("summarize", "llm", 6.5),
                    ("classify", "llm", 2.2),
                ],
                start=1,
            ):
                took = max(0.05, rnd.lognormvariate(0, 0.45) * mean)
                cost = Decimal(0)
                if pool == "llm":
                    cost = Decimal(str(round(unit_cost * rnd.uniform(0.6, 1.6), 6)))
                steps.append(
                    Step(
                        run=run,
                        position=position,
                        kind="step",
                        name=step,
                        pool=pool,
                        status="succeeded",
                        attempt=1,
                        max_attempts=3,
                        started_at=t,
                        finished_at=t + timedelta(seconds=took),
                        cost=cost,
                    )
                )
                t += timedelta(seconds=took)
            run.finished_at = t
            run.cost = sum((s.cost for s in steps[-3:]), Decimal(0))
            runs.append(run)
    for day in range(1, 14):
        for name, (unit_cost, _) in PIPELINES.items():
            count = rnd.randint(120, 320) if name != "support.triage" else rnd.randint(400, 900)
            started = now - timedelta(days=day, hours=rnd.uniform(0, 12))
            run = Run(
                id=uuid.uuid4(),
                workflow=name,
                status="succeeded",
                input={},
                tenant="acme",
                started_at=started,
                finished_at=started + timedelta(seconds=9),
            )
            runs.append(run)
            steps.append(
                Step(
                    run=run,
                    position=1,
                    kind="step",
                    name="summarize",
                    pool="llm",
                    status="succeeded",
                    attempt=1,
                    max_attempts=3,
                    started_at=started,
                    finished_at=started + timedelta(seconds=8),
                    cost=Decimal(str(round(unit_cost * count, 6))),
                )
            )
    Run.objects.bulk_create(runs)
    Step.objects.bulk_create(steps)
    # created_at is auto_now_add: move it to when each run started.
    for run in runs:
        Run.objects.filter(pk=run.pk).update(created_at=run.started_at)
    return len(runs)


def pool_pressure(now: datetime | None = None, running: int = 6, queued: int = 11) -> None:
    """An in-flight run holding the ``llm`` pool busy with a backlog behind it."""
    now = now or timezone.now()
    run = Run.objects.create(
        workflow="docs.analyze",
        status="suspended",
        input={"urls": []},
        tenant="acme",
        created_by="api:sk_3f9a1c2b",
        current_step="map:summarize",
        started_at=now - timedelta(seconds=40),
    )
    rows = [
        Step(
            run=run,
            position=1,
            kind="parallel",
            name="map:summarize",
            status="waiting",
            remaining=running + queued,
            started_at=now - timedelta(seconds=40),
        )
    ]
    for i in range(running + queued):
        busy = i < running
        rows.append(
            Step(
                run=run,
                position=1,
                branch=i,
                kind="branch",
                name="summarize",
                pool="llm",
                status="running" if busy else "pending",
                attempt=1 if busy else 0,
                max_attempts=3,
                started_at=now - timedelta(seconds=30 - i) if busy else None,
                lease_owner="w1" if busy else "",
                lease_expires_at=now + timedelta(seconds=8) if busy else None,
            )
        )
    Step.objects.bulk_create(rows)
