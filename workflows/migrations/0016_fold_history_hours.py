"""Ops history rows stored on a local half-hour (or quarter-hour) boundary by the code before the
ops overview counted UTC hours (a time zone such as Asia/Kolkata or Asia/Kathmandu): each is
folded into the UTC hour it starts in. The new code ignores rows off a UTC hour, and an hour
whose runs retention has pruned cannot be counted again: without this, the cost chart lost that
history at the upgrade (found by review)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.db import migrations


def fold(apps: Any, schema_editor: Any) -> None:
    HistoryHour = apps.get_model("workflows", "HistoryHour")
    # In Python, in UTC: a ``hour__minute`` lookup reads the minute in TIME_ZONE, where these
    # rows' minute is 0.
    for row in HistoryHour.objects.order_by("hour").iterator():
        at = row.hour.astimezone(UTC)
        if (at.minute, at.second, at.microsecond) == (0, 0, 0):
            continue
        target = at.replace(minute=0, second=0, microsecond=0)
        if not HistoryHour.objects.filter(hour=target).exists():
            HistoryHour.objects.create(
                hour=target,
                succeeded=row.succeeded,
                failed=row.failed,
                canceled=row.canceled,
                started=row.started,
                cost=row.cost,
            )
        row.delete()


class Migration(migrations.Migration):
    dependencies = [("workflows", "0015_pool_rate_period_bounds")]

    operations = [migrations.RunPython(fold, migrations.RunPython.noop)]
