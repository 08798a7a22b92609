"""The ops overview's "last 24 h" tiles count the same 24 hours as its recent failures.

The tiles summed the hourly columns: 23 whole UTC hours and the current one so far. At 10:50 a
run that failed 23 h 55 min ago (10:55 yesterday) was listed under "Recent failures, last 24
hours" while "Finished, last 24 h" said 0 and the failure rate "—".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.operators.conftest import People
from workflows import ops
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


def run(status: str, created: datetime, finished: datetime | None) -> Run:
    r = Run.objects.create(workflow="wf", status=status, input={})
    Run.objects.filter(pk=r.pk).update(created_at=created, finished_at=finished)
    return r


@pytest.mark.parametrize("minute", [50, 0, 1])
def test_the_tiles_and_the_recent_failures_count_the_same_24_hours(minute: int) -> None:
    now = datetime(2026, 12, 7, 10, minute, tzinfo=UTC)
    day = timedelta(hours=24)
    inside = run("failed", now - day + timedelta(minutes=5), now - day + timedelta(minutes=5))
    run("succeeded", now - day + timedelta(minutes=2), now - timedelta(minutes=1))
    run("canceled", now - day - timedelta(minutes=5), now - day - timedelta(minutes=5))
    run("failed", now - day - timedelta(minutes=5), now - day - timedelta(minutes=1))
    for _ in range(2):  # the first overview counts the ended hours; the second reads them
        overview = ops.overview(now)
        hourly = overview["hourly"]
        assert [r.pk for r in overview["attention"]["failures"]] == [inside.pk]
        assert hourly["finished_24h"] == 2  # the failure above and the success, not the rest
        assert hourly["failure_rate_24h"] == pytest.approx(50.0)
        assert hourly["started_24h"] == 2
        assert sum(hourly["series"]["succeeded"]) == 1  # the columns are clock hours


def test_the_tile_on_the_page(people: People) -> None:
    """At any minute of the hour a failure 23 h 59 min old is in the tile and in the list."""
    from django.utils import timezone

    ended = timezone.now() - timedelta(hours=23, minutes=59)
    failed = run("failed", ended, ended)
    body = people.client(people.ops).get("/ops/").content.decode()
    tile = body[body.index("Finished, last 24 h") : body.index("Failure rate, 24 h")]
    assert '<span class="tile-value">1</span>' in tile
    rate = body[body.index("Failure rate, 24 h") : body.index("Open gates")]
    assert "100.0%" in rate
    assert str(failed.pk)[:8] in body[body.index("Recent failures") :]
