"""A tenant's or a user's run counts on a long history are their own, never the table's mix.

Past ``ESTIMATE_ABOVE`` runs the finished counts of a share of the runs were the planner's
estimates, which apply the whole table's status mix to the share: a user with 5 succeeded runs
next to 30,000 of another tenant's was shown ≈1 succeeded, ≈1 failed, ≈1 canceled.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tests.operators.conftest import People
from workflows import ops
from workflows.models import Run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def _runs(n: int, status: str, tenant: str, created_by: str = "") -> None:
    now = timezone.now()
    Run.objects.bulk_create(
        [
            Run(
                workflow="w",
                status=status,
                input={},
                tenant=tenant,
                created_by=created_by,
                finished_at=None if status == "running" else now,
            )
            for _ in range(n)
        ]
    )


def _long_history(monkeypatch: Any) -> None:
    """600 runs of tenant ``big``, a third of them failed or canceled; the threshold lowered
    so that the table counts as a long history."""
    _runs(400, "succeeded", "big")
    _runs(120, "failed", "big")
    _runs(80, "canceled", "big")
    _runs(3, "running", "big")
    with connection.cursor() as cur:
        cur.execute("ANALYZE workflows_run")
    monkeypatch.setattr(ops, "ESTIMATE_ABOVE", 100)


def test_a_small_share_is_counted_exactly(people: People, monkeypatch: Any) -> None:
    _runs(5, "succeeded", "acme", created_by="ana")
    _long_history(monkeypatch)
    assert ops.status_counts()[1]  # the whole table is estimated

    counts, estimated = ops.status_counts(Run.objects.filter(tenant="acme"))
    assert not estimated
    assert {s: counts[s] for s in ("succeeded", "failed", "canceled", "running")} == {
        "succeeded": 5,
        "failed": 0,
        "canceled": 0,
        "running": 0,
    }
    # The runs list of a user who sees her own runs of tenant acme.
    body = people.client(people.ana).get("/runs/").content.decode()
    assert "5 runs kept" in body and "about" not in body
    chips = dict(
        re.findall(
            r'<span class="dot dot-(\w+)"></span>\w+ <span class="chip-n">(\d+)</span>', body
        )
    )
    assert chips["succeeded"] == "5" and chips["failed"] == "0" and chips["canceled"] == "0"


def test_a_large_share_is_split_by_its_own_runs(monkeypatch: Any) -> None:
    """Past ``EXACT_BELOW`` a share's size is the planner's, but its split by status comes
    from its own newest finished runs: ``mid`` has never failed, and is not shown failures."""
    _runs(300, "succeeded", "mid")
    _long_history(monkeypatch)
    monkeypatch.setattr(ops, "EXACT_BELOW", 50)
    monkeypatch.setattr(ops, "SHARE_SAMPLE", 100)
    counts, estimated = ops.status_counts(Run.objects.filter(tenant="mid"))
    assert estimated
    assert counts["failed"] == 0 and counts["canceled"] == 0 and counts["running"] == 0
    assert 150 <= counts["succeeded"] <= 600
    big, estimated = ops.status_counts(Run.objects.filter(tenant="big"))
    assert estimated and big["running"] == 3  # active runs are always exact
    assert big["failed"] > 0 and big["canceled"] > 0  # "big"'s newest 100 runs
    # A share the sample holds whole is exact, whatever the planner guessed.
    monkeypatch.setattr(ops, "SHARE_SAMPLE", 1000)
    counts, estimated = ops.status_counts(Run.objects.filter(tenant="mid"))
    assert not estimated and counts["succeeded"] == 300 and counts["failed"] == 0
