"""The insights page's weekly chart holds every gate its totals count, in any time zone.

Counted back from this Monday in ``ceil(days / 7)`` weeks, "last 90 days" on a Monday started
a week late: the tiles said 89 closed gates and the chart summed to 84. The weeks now run from
the one the period starts in to this one.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from reviews import insights
from reviews.models import Gate
from tests.reviews.insights_fixture import closed_gate

pytestmark = [pytest.mark.django_db]

# Local "now"s: a Monday morning (the day after New York's fall-back), a Sunday night (the
# night Europe springs forward), and a Wednesday afternoon.
NOWS: list[tuple[int, int, int, int, int]] = [
    (2026, 11, 2, 9, 0),
    (2026, 3, 29, 23, 30),
    (2026, 7, 15, 15, 45),
]
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("local_now", NOWS, ids=lambda t: f"{t[0]}-{t[1]:02}-{t[2]:02}")
def test_the_weekly_chart_sums_to_the_total_of_every_period(
    zone: str, local_now: tuple[int, int, int, int, int]
) -> None:
    tz = zoneinfo.ZoneInfo(zone)
    with override_settings(TIME_ZONE=zone), timezone.override(tz):
        year, month, day, hour, minute = local_now
        now = datetime(year, month, day, hour, minute, tzinfo=tz).astimezone(UTC)
        # A gate decided a minute into the longest period, then one every 2 days 7 hours
        # (every weekday and hour of the day comes round), and one a minute ago.
        since = now - timedelta(days=365)
        moments = [since + timedelta(minutes=1)]
        while moments[-1] + timedelta(days=2, hours=7) < now:
            moments.append(moments[-1] + timedelta(days=2, hours=7))
        moments.append(now - timedelta(minutes=1))
        for decided in moments:
            closed_gate(opened=decided - timedelta(seconds=60), seconds=60)
        # The first minute of each shorter period too.
        for days in (7, 30, 90):
            closed_gate(opened=now - timedelta(days=days) + timedelta(seconds=30), seconds=60)

        for period, days in insights.PERIODS.items():
            data = insights.summary(Gate.objects.all(), insights.Filters(period=period), now=now)
            week = data["weekly"]
            total = data["overall"].total
            assert total > 0
            assert sum(week["totals"]) == total, (period, week["labels"][0])
            for c in insights.CLASSES:
                assert sum(week["series"][c]) == data["overall"].counts[c]
            first = timezone.localdate(now - timedelta(days=days))
            first -= timedelta(days=first.weekday())
            this = timezone.localdate(now)
            this -= timedelta(days=this.weekday())
            assert week["labels"][0] == f"{first:%b %d}"
            assert week["labels"][-1] == f"{this:%b %d}"
            assert len(week["labels"]) == (this - first).days // 7 + 1
