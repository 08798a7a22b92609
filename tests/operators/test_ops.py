"""The ops overview: the numbers behind the charts, and who may see it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from reviews.models import Gate
from tests.operators.conftest import People
from tests.operators.scenes import pool_pressure, settle
from tests.support import Bell
from workflows import ops, start
from workflows.models import Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


def _finished(workflow: str, status: str, hours_ago: float, *steps: tuple[str, float, str]) -> Run:
    now = timezone.now()
    ended = now - timedelta(hours=hours_ago)
    run = Run.objects.create(
        workflow=workflow, status=status, input={}, started_at=ended, finished_at=ended
    )
    for i, (pool, seconds, cost) in enumerate(steps, start=1):
        Step.objects.create(
            run=run,
            position=i,
            kind="step",
            name=f"s{i}",
            pool=pool,
            status="succeeded",
            attempt=1,
            max_attempts=1,
            started_at=ended - timedelta(seconds=seconds),
            finished_at=ended,
            cost=Decimal(cost),
        )
    return run


def test_it_counts_runs_per_hour_and_the_failure_rate() -> None:
    # Finished "now", so they land in the current hour's bucket whatever the minute is.
    for _ in range(3):
        _finished("a", "succeeded", 0)
    _finished("a", "failed", 0)
    _finished("a", "canceled", 2.2)
    _finished("a", "failed", 30)  # older than a day: not counted
    hourly = ops.hourly(timezone.now())
    assert sum(hourly["series"]["succeeded"]) == 3
    assert sum(hourly["series"]["failed"]) == 1 and sum(hourly["series"]["canceled"]) == 1
    assert hourly["failure_rate_24h"] == pytest.approx(25.0)
    assert hourly["series"]["succeeded"][-1] == 3  # the current hour is the last bucket
    assert len(hourly["labels"]) == 24
    assert hourly["started_24h"] == 6  # by created_at, which is now for all of them


def test_it_measures_step_latency_per_pool() -> None:
    for seconds in (1, 2, 3, 4, 100):
        _finished("a", "succeeded", 1, ("llm", seconds, "0"))
    _finished("a", "succeeded", 1, ("default", 0.5, "0"))
    loads = {p.name: p for p in ops.pools(timezone.now())}
    assert loads["llm"].p50 == pytest.approx(3.0, abs=0.01)
    assert loads["llm"].p95 == pytest.approx(80.8, abs=0.1)
    assert loads["llm"].samples == 5 and loads["default"].p50 == pytest.approx(0.5, abs=0.01)


def test_it_shows_in_flight_and_backlog_per_pool_against_its_limit() -> None:
    pool_pressure(running=3, queued=4)
    llm = {p.name: p for p in ops.pools(timezone.now())}["llm"]
    assert (llm.running, llm.backlog, llm.limit) == (3, 4, 8)
    assert llm.utilization == pytest.approx(37.5)


def test_it_sums_llm_cost_per_pipeline_per_day() -> None:
    _finished("docs", "succeeded", 0, ("llm", 1, "0.25"), ("llm", 1, "0.5"))
    _finished("triage", "succeeded", 0, ("llm", 1, "0.1"))
    _finished("docs", "succeeded", 48, ("llm", 1, "1.0"))
    cost = ops.cost_by_pipeline(timezone.now())
    assert cost["pipelines"] == ["docs", "triage"]
    assert cost["values"]["docs"][-1] == pytest.approx(0.75)
    assert cost["values"]["docs"][-3] == pytest.approx(1.0)
    assert cost["total"] == pytest.approx(1.85) and cost["today"] == pytest.approx(0.85)


def test_it_counts_open_gates_and_those_expiring_within_the_hour(bell: Bell) -> None:
    runs = [start("contracts.review", {"url": f"https://x/{i}"}) for i in range(3)]
    settle(bell)
    gates = list(Gate.objects.filter(run__in=runs).order_by("pk"))
    now = timezone.now()
    Gate.objects.filter(pk=gates[0].pk).update(deadline=now + timedelta(minutes=20))
    Gate.objects.filter(pk=gates[1].pk).update(deadline=now - timedelta(minutes=1))
    counts = ops.overview()["gates"]
    assert counts == {"open": 3, "expiring_within_hour": 1, "overdue": 1}


def test_the_page_is_for_staff_and_renders_svg_charts(people: People) -> None:
    _finished("docs", "succeeded", 0.5, ("llm", 3, "0.02"))
    _finished("docs", "failed", 0.5, ("default", 1, "0"))
    assert people.client(people.ana).get("/ops/").status_code == 403
    assert people.client(people.otto).get("/ops/").status_code == 403
    r = people.client(people.ops).get("/ops/")
    html = r.content.decode()
    assert r.status_code == 200 and r.context["nav"] == "ops"
    assert html.count('<svg class="chart"') == 4
    assert "50.0%" in html  # the failure rate tile
    assert "cdn" not in html.lower() and '<script src="http' not in html
    partial = people.client(people.ops).get("/ops/", headers={"HX-Request": "true"})
    assert partial.content.decode().startswith('<div id="ops"')
