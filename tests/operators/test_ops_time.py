"""The ops overview across time zones, daylight-saving changes and a change of TIME_ZONE, and
what its tiles and pool table count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from tests.operators.conftest import People
from workflows import ops
from workflows.models import HistoryHour, Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def finished(status: str, when: datetime, cost: str = "1") -> Run:
    run = Run.objects.create(workflow="wf", status=status, input={})
    Run.objects.filter(pk=run.pk).update(created_at=when - timedelta(minutes=5), finished_at=when)
    Step.objects.create(
        run=run,
        position=0,
        name="s",
        status="succeeded",
        cost=Decimal(cost),
        started_at=when - timedelta(minutes=1),
        finished_at=when,
    )
    return run


@override_settings(TIME_ZONE="Europe/Berlin")
def test_the_two_2_am_hours_of_a_fall_back_day_are_counted_once_each() -> None:
    """2025-10-26, Berlin: 02:00-03:00 happens twice (00:00 and 01:00 UTC). Truncated to local
    hours, both were one bucket: its runs counted twice, and the second hour's HistoryHour row
    never matched, so the cost grew by its runs on every load."""
    finished("succeeded", at(2025, 10, 25, 22, 30), "1.5")  # 00:30 CEST
    finished("succeeded", at(2025, 10, 26, 0, 30), "1.5")  # 02:30 CEST, the first 02:00
    finished("failed", at(2025, 10, 26, 1, 30), "1.5")  # 02:30 CET, the second 02:00
    finished("failed", at(2025, 10, 26, 1, 40), "1.5")
    now = at(2025, 10, 26, 4, 10)  # 05:10 CET
    for _ in range(3):  # the first load counts the ended hours; the later ones read them
        overview = ops.overview(now)
        hourly = overview["hourly"]
        # 22:00 to 04:00 UTC: 00:00 CEST to 05:00 CET, the 02:00 hour twice.
        assert hourly["labels"][-7:] == ["00", "01", "02", "02", "03", "04", "05"]
        assert hourly["series"]["succeeded"][-7:] == [1, 0, 1, 0, 0, 0, 0]
        assert hourly["series"]["failed"][-7:] == [0, 0, 0, 2, 0, 0, 0]
        assert hourly["started"][-7:] == [1, 0, 1, 2, 0, 0, 0]
        assert hourly["finished_24h"] == 4 and hourly["started_24h"] == 4
        assert overview["cost"]["total"] == pytest.approx(6.0)
        assert overview["cost"]["today"] == pytest.approx(6.0)  # all on Oct 26, local time
    kept = {row.hour: row for row in HistoryHour.objects.filter(hour__gte=at(2025, 10, 26))}
    assert (kept[at(2025, 10, 26, 0)].succeeded, kept[at(2025, 10, 26, 0)].failed) == (1, 0)
    assert (kept[at(2025, 10, 26, 1)].succeeded, kept[at(2025, 10, 26, 1)].failed) == (0, 2)


def test_a_change_to_a_half_hour_zone_counts_no_kept_hour_twice() -> None:
    """Kept rows on UTC hour boundaries, then TIME_ZONE=Asia/Kolkata (UTC+5:30): the rows were
    inside the chart's range, matched none of its new (half-past) hours and were summed beside
    the recount of those hours: the 14-day cost doubled."""
    for hour in range(3, 10):
        finished("succeeded", at(2025, 3, 20, hour, 45))
    now = at(2025, 3, 20, 12, 10)
    with override_settings(TIME_ZONE="UTC"):
        before = ops.overview(now)
    assert before["cost"]["total"] == pytest.approx(7.0)
    # A row an earlier Sluice kept for a local half-past hour: its runs are in the UTC hours
    # above, so it must not be added to them.
    HistoryHour.objects.create(hour=at(2025, 3, 20, 5, 30), succeeded=1, cost={"wf": "1"})
    with override_settings(TIME_ZONE="Asia/Kolkata"):
        for _ in range(2):
            after = ops.overview(now)
            assert after["cost"]["total"] == pytest.approx(7.0)
            assert after["cost"]["today"] == pytest.approx(7.0)
            assert after["hourly"]["finished_24h"] == 7
            # The hours are labelled with their local start: 17:30 IST is 12:00 UTC.
            assert after["hourly"]["labels"][-1] == "17:30"
    with override_settings(TIME_ZONE="UTC"):
        assert ops.overview(now)["cost"]["total"] == pytest.approx(7.0)


def test_the_cost_chart_sums_only_its_own_hours() -> None:
    """``rows`` may hold more than the chart's hours (the overview passes what it read)."""
    now = at(2025, 3, 20, 12, 10)
    rows = {
        at(2025, 3, 20, 9): ops.Hour(cost={"wf": "2"}),
        at(2025, 3, 20, 9, 30): ops.Hour(cost={"wf": "5"}),  # not an hour of the chart
        at(2025, 3, 1, 9): ops.Hour(cost={"wf": "7"}),  # before its 14 days
    }
    cost = ops.cost_by_pipeline(now, rows)
    assert cost["total"] == pytest.approx(2.0) and cost["today"] == pytest.approx(2.0)


def test_in_flight_counts_compensating_runs_as_its_link_lists_them(people: People) -> None:
    for status in ("compensating", "compensating", "running", "pending", "suspended", "failed"):
        Run.objects.create(workflow="wf", status=status, input={})
    assert ops.overview()["in_flight"] == 5
    body = people.client(people.ops).get("/ops/").content.decode()
    tile = body[body.index("In flight") : body.index("Finished, last 24 h")]
    assert '<span class="tile-value">5</span>' in tile
    assert "2 compensating" in tile
    listed = people.client(people.ops).get("/runs/?status=active").context["runs"]
    assert len(listed) == 5


def test_a_pools_backlog_leaves_out_branches_held_by_their_own_run() -> None:
    """Branches past their run's ``max_parallel`` wait for that run, not for the pool."""
    run = Run.objects.create(workflow="wf", status="running", input={})
    for i, held in enumerate([False, False, True, True, True]):
        Step.objects.create(
            run=run, position=1, branch=i, kind="branch", name="b", pool="llm",
            status="pending", held=held,
        )  # fmt: skip
    llm = {p.name: p for p in ops.pools(timezone.now())}["llm"]
    assert (llm.backlog, llm.held) == (2, 3)  # /metrics: tests/deploy/test_metrics.py


def test_estimated_status_counts_are_shown_as_approximate(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``ESTIMATE_ABOVE`` runs the finished counts are the planner's estimates: "≈"."""
    Run.objects.create(workflow="wf", status="running", input={})
    stats = ops._Stats(rows=50_000, null_frac=0.0, n_distinct=4, common={"succeeded": 0.9})
    monkeypatch.setattr(ops, "_stats", lambda: stats)
    overview = ops.overview()
    assert overview["status"]["succeeded"] == 45_000 and overview["status"]["running"] == 1
    assert set(overview["status_estimated"]) == {"succeeded", "failed", "canceled"}
    body = people.client(people.ops).get("/ops/").content.decode()
    assert "succeeded <strong>≈45000</strong>" in body
    assert "running <strong>1</strong>" in body  # active runs are counted exactly
