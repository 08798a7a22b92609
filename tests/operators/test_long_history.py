"""The runs list and the ops overview over a long history (W8 in bench/history_bench.py): the
shape of their queries, which must not read the whole history on every request."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.operators.conftest import People
from workflows import ops, views
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


def _runs(n: int, status: str = "succeeded") -> None:
    now = timezone.now()
    Run.objects.bulk_create(
        [Run(workflow="w", status=status, input={}, finished_at=now) for _ in range(n)]
    )


def test_the_list_counts_at_most_its_page_cap(people: People, monkeypatch: Any) -> None:
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    monkeypatch.setattr(views.CappedPaginator, "PAGE_CAP", 3)
    _runs(9)
    client = people.client(people.ops)
    with CaptureQueriesContext(connection) as ctx:
        body = client.get("/runs/").content.decode()
    assert "Page 1 of more than 3" in body
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
    # The page count reads at most cap x page size + 1 rows (a LIMIT inside the COUNT).
    assert any(re.search(r"LIMIT 7\b", sql) for sql in counts), counts
    # The last countable page is reachable; beyond it, get_page clamps to it.
    assert "Page 3 of more than 3" in client.get("/runs/?page=99").content.decode()


def test_under_the_cap_the_count_is_exact(people: People, monkeypatch: Any) -> None:
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    monkeypatch.setattr(views.CappedPaginator, "PAGE_CAP", 10)
    _runs(5)
    body = people.client(people.ops).get("/runs/").content.decode()
    assert "Page 1 of 3" in body and "more than" not in body
    assert "5 runs kept" in body and "about" not in body


def test_small_tables_are_counted_exactly() -> None:
    _runs(3)
    _runs(2, "failed")
    _runs(1, "running")
    counts, estimated = ops.status_counts()
    assert not estimated
    assert counts["succeeded"] == 3 and counts["failed"] == 2 and counts["running"] == 1


@pytest.mark.integration
def test_past_the_threshold_finished_runs_are_estimated_and_active_ones_exact(
    people: People, monkeypatch: Any
) -> None:
    _runs(300)
    _runs(40, "failed")
    _runs(7, "running")
    with connection.cursor() as cur:
        cur.execute("ANALYZE workflows_run")
    monkeypatch.setattr(ops, "ESTIMATE_ABOVE", 100)
    with CaptureQueriesContext(connection) as ctx:
        counts, estimated = ops.status_counts()
    assert estimated
    assert counts["running"] == 7  # exact
    assert 200 <= counts["succeeded"] <= 400 and 20 <= counts["failed"] <= 60
    sqls = [q["sql"] for q in ctx.captured_queries]
    # No GROUP BY over every run: the only one is restricted to the active statuses; the
    # finished ones are read from the status column's statistics, in the same query as the
    # table's size.
    grouped = [s for s in sqls if "GROUP BY" in s]
    assert len(grouped) == 1 and "'running'" in grouped[0], grouped
    assert len(sqls) == 2 and "pg_stats" in sqls[0], sqls
    body = people.client(people.ops).get("/runs/").content.decode()
    assert "about " in body
    # A share of the runs (a tenant's, a user's): the planner is asked about its size; under
    # EXACT_BELOW it is counted exactly, above it split by its own newest finished runs
    # (tests/operators/test_status_counts_share.py).
    tenant = Run.objects.filter(workflow="w")
    with CaptureQueriesContext(connection) as ctx:
        counts, estimated = ops.status_counts(tenant)
    assert not estimated and counts["running"] == 7
    assert counts["succeeded"] == 300 and counts["failed"] == 40
    explains = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("EXPLAIN")]
    assert len(explains) == 1  # the share's size
    monkeypatch.setattr(ops, "EXACT_BELOW", 100)
    monkeypatch.setattr(ops, "SHARE_SAMPLE", 100)
    with CaptureQueriesContext(connection) as ctx:
        counts, estimated = ops.status_counts(tenant)
    assert estimated and counts["running"] == 7
    assert 200 <= counts["succeeded"] + counts["failed"] <= 400
    sqls = [q["sql"] for q in ctx.captured_queries]
    # No GROUP BY over the share's finished runs: the active ones, and a sample of 100.
    grouped = [s for s in sqls if "GROUP BY" in s]
    assert len(grouped) == 1 and "'running'" in grouped[0], grouped
    assert any("LIMIT 100" in s for s in sqls), sqls


@pytest.mark.integration
def test_the_ops_overview_reads_steps_through_indexes() -> None:
    """The overview's step queries use the history indexes, not a scan of the journal."""
    from datetime import timedelta

    from workflows.models import Step

    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute("SET enable_seqscan = off")  # a tiny table: make the planner show its index
        try:
            recent = Step.objects.filter(
                finished_at__gte=now - timedelta(hours=24),
                started_at__isnull=False,
                kind__in=["step", "branch"],
                status__in=["succeeded", "failed"],
            ).order_by("-finished_at")[:10]
            busy = Step.objects.filter(status__in=["running", "pending", "retrying"]).values("pool")
            costed = Step.objects.filter(finished_at__gte=now, cost__gt=0)
            assert "step_finished" in recent.explain()
            assert "step_busy" in busy.explain()
            assert "step_costed" in costed.explain()
        finally:
            cur.execute("RESET enable_seqscan")


def test_an_ended_hour_is_counted_once_and_then_read_from_the_rollup(monkeypatch: Any) -> None:
    """The overview counts an ended hour from the runs and the journal once, into HistoryHour;
    later overviews read it from there and count only the open hour live."""
    from datetime import timedelta
    from decimal import Decimal

    from workflows.models import HistoryHour, Step

    now = timezone.now()
    ended = now - timedelta(hours=3)
    for status in ("succeeded", "succeeded", "failed"):
        run = Run.objects.create(workflow="docs", status=status, finished_at=ended)
        Run.objects.filter(pk=run.pk).update(created_at=ended)
    Step.objects.create(
        run=run, position=1, name="s", status="failed", finished_at=ended, cost=Decimal("0.25")
    )
    Run.objects.create(workflow="docs", status="succeeded", finished_at=now)  # the open hour
    calls: list[tuple[Any, Any]] = []
    count = ops._count
    monkeypatch.setattr(ops, "_count", lambda *a: calls.append(a) or count(*a))

    first = ops.overview(now)
    assert first["hourly"]["finished_24h"] == 4 and first["hourly"]["started_24h"] == 4
    assert first["cost"]["total"] == pytest.approx(0.25)
    hour = timezone.localtime(ended).replace(minute=0, second=0, microsecond=0)
    kept = HistoryHour.objects.get(hour=hour)
    assert (kept.succeeded, kept.failed, kept.started) == (2, 1, 3)
    assert {k: Decimal(v) for k, v in kept.cost.items()} == {"docs": Decimal("0.25")}
    hours = ops._two_weeks(now)
    opened = [
        h for h in hours if h + ops.HOUR + ops.GRACE > now
    ]  # (two in an hour's first minutes)
    assert HistoryHour.objects.count() == len(hours) - len(opened)
    assert len(calls) == 2  # the ended hours at once, then the open one

    # Pruned meanwhile: the ended hour is kept as it was counted; the open hour is live.
    Run.objects.filter(finished_at=ended).delete()
    Run.objects.create(workflow="docs", status="canceled", finished_at=now)
    calls.clear()
    again = ops.overview(now)
    assert again["hourly"]["finished_24h"] == 5 and again["cost"]["total"] == pytest.approx(0.25)
    assert len(calls) == 1 and calls[0][0] == opened[0]  # only the open hour


def test_the_admin_changelists_count_at_most_their_cap_and_read_no_column_whole(
    people: People, monkeypatch: Any
) -> None:
    """No DISTINCT over every run or journal row (filters, date links) and no full count; the
    journal is listed newest first by its key, not sorted by position across all runs."""
    from workflows import admin as workflows_admin
    from workflows.models import Step

    monkeypatch.setattr(workflows_admin.CappedPaginator, "CAP", 3)
    _runs(5)
    run = Run.objects.first()
    for position in range(1, 5):
        Step.objects.create(run=run, position=position, name="s", status="succeeded")
    client = people.client(people.ops)
    for model, plural in (("run", "runs"), ("step", "steps")):
        with CaptureQueriesContext(connection) as ctx:
            body = client.get(f"/admin/workflows/{model}/").content.decode()
        assert f"more than 3 {plural}" in body
        sqls = [q["sql"] for q in ctx.captured_queries]
        assert not [s for s in sqls if re.search(r'DISTINCT .* FROM "workflows_(run|step)"', s)]
        counts = [s for s in sqls if "COUNT(" in s.upper()]
        assert counts and all(re.search(r"LIMIT 4\b", s) for s in counts), counts
    assert any(re.search(r'ORDER BY "workflows_step"."id" DESC', s) for s in sqls), sqls
    # The filters still filter, the empty tenant included.
    found = client.get("/admin/workflows/run/?tenant=-&workflow=w").context["cl"].result_list
    assert len(found) == 5 and {r.tenant for r in found} == {""}


def test_search_finds_whole_keys_and_tenants_at_any_age_and_parts_among_the_newest(
    people: People, monkeypatch: Any
) -> None:
    from datetime import timedelta

    monkeypatch.setattr(views, "SEARCH_DEPTH", 3)
    now = timezone.now()

    def run(key: str, age_days: int, tenant: str = "") -> Run:
        made = Run.objects.create(workflow="docs.summary", idempotency_key=key, tenant=tenant)
        Run.objects.filter(pk=made.pk).update(created_at=now - timedelta(days=age_days))
        return made

    old = run("order-1001", 30, tenant="acme")
    for i in range(3):
        run(f"invoice-{i}", i)
    client = people.client(people.ops)

    def found(term: str) -> set[Any]:
        return {r.pk for r in client.get("/runs/", {"q": term}).context["runs"]}

    assert found("order-1001") == {old.pk}  # a whole key, however old
    assert found("acme") == {old.pk}  # a whole tenant
    assert len(found("invoice")) == 3  # part of a key, among the newest three
    assert found("order-10") == set()  # part of a key, older than the newest three
    assert len(found("summary")) == 3  # part of a pipeline name
    body = client.get("/runs/", {"q": "order-10"}).content.decode()
    assert "among the newest 3 runs" in body
