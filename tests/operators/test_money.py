"""Costs as the pages show them: one rule (``workflows.charts.money``) for the run page, the
runs list, the ops overview's tiles and table and its cost chart (axis, tooltips, the table
screen readers read).

Found by review: the cost chart formatted ``${v:,.2f}``, so a day that cost $0.0004 read "$0.00"
everywhere on it; the ``money`` filter showed $0.00 under $0.00005 and dropped the cents from
$1,000 up, so a run stopped by its budget after spending $999.996 read "$1,000 of $1,000".
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from tests.operators.conftest import People
from workflows.charts import money
from workflows.models import Run, Step
from workflows.templatetags import sluice_runs

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "$0"),
        (None, "$0"),
        (Decimal("0.000000"), "$0"),
        (Decimal("0.000001"), "$0.000001"),
        (Decimal("0.00004"), "$0.00004"),
        (0.00004, "$0.00004"),
        ("0.0004", "$0.0004"),
        (Decimal("0.00044"), "$0.00044"),
        (Decimal("0.0042"), "$0.0042"),
        (Decimal("0.001234"), "$0.0012"),
        (Decimal("0.1234"), "$0.1234"),
        (Decimal("0.5"), "$0.50"),
        (Decimal("0.99996"), "$0.9999"),  # cut, not rounded up to a $1 cap
        (0.7999999999999999, "$0.80"),  # a float sum of the chart
        (Decimal("1"), "$1.00"),
        (Decimal("1.25"), "$1.25"),
        (Decimal("999.996"), "$999.99"),
        (Decimal("1000"), "$1,000.00"),
        (Decimal("1204.5"), "$1,204.50"),
        (Decimal("99999999.999999"), "$99,999,999.99"),
    ],
)
def test_money(value: Any, shown: str) -> None:
    assert money(value) == shown
    assert sluice_runs.money(value) == shown


def test_no_cost_is_shown_as_zero_dollars_and_no_cent_is_dropped() -> None:
    for micro in (1, 4, 9, 49, 50, 99, 400, 999, 5_000, 9_999):
        assert not re.fullmatch(r"\$0(\.0+)?", money(Decimal(micro) / 1_000_000)), micro
    assert money(Decimal("999.996")) != money(Decimal("1000"))
    assert money(Decimal("1500.25")) == "$1,500.25"


def _costed_run(workflow: str, cost: str, **fields: Any) -> Run:
    now = timezone.now()
    run = Run.objects.create(
        workflow=workflow, status="succeeded", input={}, cost=Decimal(cost), **fields
    )
    Run.objects.filter(pk=run.pk).update(
        started_at=now - timedelta(minutes=5), finished_at=now - timedelta(minutes=1)
    )
    Step.objects.create(
        run=run,
        position=1,
        kind="step",
        name="call",
        status="succeeded",
        cost=Decimal(cost),
        started_at=now - timedelta(minutes=4),
        finished_at=now - timedelta(minutes=1),
    )
    return run


def test_small_costs_on_the_ops_overview_and_the_run_pages(people: People) -> None:
    tiny = _costed_run("tiny", "0.00004")
    _costed_run("small", "0.0004")
    client = people.client(people.ops)
    body = client.get("/ops/").content.decode()
    chart = body[body.index("LLM cost per pipeline per day") :]
    tips = re.findall(r"<title>([^<]*)</title>", chart)
    assert any("small: $0.0004" in t and "tiny: $0.00004" in t for t in tips), tips
    assert "$0.00<" not in chart and "$0.00 " not in chart
    table = chart[chart.index('<div class="sr-only">') :]
    assert "<td>$0.0004</td>" in table and "<td>$0.00004</td>" in table
    axis = re.findall(r'text-anchor="end" fill="#5b6472">([^<]*)</text>', chart)
    assert axis[0] == "$0" and all(a != "$0.00" for a in axis), axis
    assert "$0.00044" in body[body.index("LLM cost today") :]  # the tile

    run_page = client.get(f"/runs/{tiny.pk}/").content.decode()
    assert re.search(r'stat-label">Cost</span><span class="stat-value">\$0\.00004', run_page)
    listed = client.get("/runs/").content.decode()
    assert '<td class="num">$0.00004</td>' in listed
    assert '<td class="num">$0.0004</td>' in listed


def test_a_run_stopped_by_its_budget_reads_below_its_cap(people: People) -> None:
    run = _costed_run("big", "999.996", max_cost=Decimal("1000"))
    page = people.client(people.ops).get(f"/runs/{run.pk}/").content.decode()
    stat = re.search(r'stat-label">Cost</span><span class="stat-value">(.*?)</span></div>', page)
    assert stat is not None
    text = re.sub(r"<[^>]+>", "", stat.group(1))
    assert text == "$999.99 of $1,000.00", text
