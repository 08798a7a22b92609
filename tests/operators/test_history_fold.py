"""The data migration that folds ops history rows of a half-hour zone into UTC hours
(workflows/0016): history older than retention survives the switch to UTC hours."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest
from django.apps import apps

from workflows.models import HistoryHour

pytestmark = pytest.mark.django_db

fold = importlib.import_module("workflows.migrations.0016_fold_history_hours").fold


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_a_half_hour_row_is_folded_into_its_utc_hour(settings: object, zone: str) -> None:
    settings.TIME_ZONE = zone  # type: ignore[attr-defined]
    HistoryHour.objects.create(
        hour=datetime(2026, 11, 20, 8, 30, tzinfo=UTC), succeeded=3, cost={"p": "12.5"}
    )
    HistoryHour.objects.create(hour=datetime(2026, 11, 20, 10, 0, tzinfo=UTC), failed=1)
    fold(apps, None)
    rows = {r.hour: (r.succeeded, r.failed, r.cost) for r in HistoryHour.objects.all()}
    assert rows == {
        datetime(2026, 11, 20, 8, 0, tzinfo=UTC): (3, 0, {"p": "12.5"}),
        datetime(2026, 11, 20, 10, 0, tzinfo=UTC): (0, 1, {}),
    }
