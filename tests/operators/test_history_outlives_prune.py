"""The ops charts outlive the retention (found by review): ``HistoryHour`` rows were written only
when the overview asked for a closed hour, so under a retention shorter than the charts an hour
nobody looked at before the prune was counted from an empty table and kept as zero. The prune
now counts the charts' closed hours of every batch into ``HistoryHour`` before deleting it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import ops, start
from workflows.core.sweeper import prune
from workflows.models import HistoryHour, Run, Step

pytestmark = pytest.mark.django_db(transaction=True)


def _finished(bell: Bell, started: Any, finished: Any, cost: str = "0") -> Run:
    run = start(samples.chain, {"n": 1})
    bell.settle()
    Run.objects.filter(pk=run.pk).update(created_at=started, finished_at=finished)
    Step.objects.filter(run=run).update(finished_at=finished, cost=Decimal(0))
    first = Step.objects.filter(run=run).order_by("position").first()
    assert first is not None
    Step.objects.filter(pk=first.pk).update(cost=Decimal(cost))
    return run


@override_settings(SLUICE_RETENTION_DAYS=2)
def test_the_cost_chart_keeps_a_pruned_day_nobody_looked_at(bell: Bell) -> None:
    now = timezone.now()
    _finished(bell, now - timedelta(days=6), now - timedelta(days=5), cost="3.50")
    _finished(bell, now - timedelta(days=5), now - timedelta(days=5), cost="1.25")
    before = ops.cost_by_pipeline(now, ops._count(now - timedelta(days=15)))
    assert before["total"] == Decimal("4.75")
    assert not HistoryHour.objects.exists()  # nobody opened /ops/ in these days
    assert prune() == 2
    assert not Run.objects.exists()
    after = ops.overview()
    assert after["cost"]["total"] == before["total"]
    # The hours the runs started in are kept too (the runs started on them).
    started = sum(HistoryHour.objects.values_list("started", flat=True))
    finished = sum(HistoryHour.objects.values_list("succeeded", flat=True))
    assert (started, finished) == (2, 2)


@override_settings(SLUICE_RETENTION_DAYS=0.25)
def test_the_last_24_hours_keep_runs_pruned_within_them(bell: Bell) -> None:
    now = timezone.now()
    _finished(bell, now - timedelta(hours=10), now - timedelta(hours=10))
    assert prune() == 1
    assert sum(ops.hourly(timezone.now())["series"]["succeeded"]) == 1


@override_settings(SLUICE_RETENTION_DAYS=2)
def test_an_hour_the_overview_kept_is_not_counted_again(bell: Bell) -> None:
    now = timezone.now()
    _finished(bell, now - timedelta(days=5), now - timedelta(days=5), cost="2")
    ops.overview()  # the overview keeps the hour: 2
    hour = ops._utc_hour(now - timedelta(days=5))
    HistoryHour.objects.filter(hour=hour).update(cost={"test.chain": "7"})  # marked
    assert prune() == 1
    assert HistoryHour.objects.get(hour=hour).cost == {"test.chain": "7"}


@override_settings(SLUICE_RETENTION_DAYS=30)
def test_hours_older_than_the_charts_are_not_kept(bell: Bell) -> None:
    now = timezone.now()
    _finished(bell, now - timedelta(days=40), now - timedelta(days=40), cost="2")
    assert prune() == 1
    assert not HistoryHour.objects.exists()
