"""The queue over a deep backlog (W5 in bench/reviews_bench.py): what it counts and lists must
not grow with the number of open gates, and must stay scoped to what each reviewer may see."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reviews import views
from reviews.models import Gate
from reviews.services import gates_visible_to, open_pipelines
from tests.reviews.conftest import People
from workflows.models import Run, Step, TenantMembership

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def gates(
    n: int, *, pipeline: str = "p", group: str = "reviewers", tenant: str = "", **extra: Any
) -> None:
    """``n`` open gates, each on a suspended run of ``tenant`` waiting at it."""
    now = timezone.now()
    runs = Run.objects.bulk_create(
        [Run(workflow=pipeline, status="suspended", input={}, tenant=tenant) for _ in range(n)]
    )
    steps = Step.objects.bulk_create(
        [Step(run=r, position=1, kind="gate", name="Check", status="waiting") for r in runs]
    )
    Gate.objects.bulk_create(
        [
            Gate(
                run=r,
                step=s,
                pipeline=pipeline,
                title="Check",
                choices=["approve", "reject"],
                on_timeout="approve",
                group=group,
                deadline=now + timedelta(hours=1, minutes=i),
                **extra,
            )
            for i, (r, s) in enumerate(zip(runs, steps, strict=True))
        ]
    )


def test_it_counts_the_queue_up_to_its_cap(people: People, settings: Any, monkeypatch: Any) -> None:
    settings.SLUICE_REVIEW_PAGE_SIZE = 2
    monkeypatch.setattr(views.QueuePaginator, "PAGE_CAP", 2)
    gates(7)
    c = Client()
    c.force_login(people.ana)
    with CaptureQueriesContext(connection) as ctx:
        body = c.get("/reviews/").content.decode()
    assert re.search(r'data-testid="open-count"[^>]*>4\+</strong> open gates', body)
    assert "Page 1 of more than 2" in body
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all(re.search(r"LIMIT 5\b", sql) for sql in counts), counts
    assert "Page 2 of more than 2" in c.get("/reviews/?page=99").content.decode()
    # Under the cap the count is exact, without the "+".
    Gate.objects.filter(pk__in=list(Gate.objects.values_list("pk", flat=True)[:4])).update(
        status="expired"
    )
    body = c.get("/reviews/").content.decode()
    assert re.search(r'data-testid="open-count"[^>]*>3</strong> open gates', body)
    assert "Page 1 of 2" in body and "more than" not in body


def test_the_pipeline_filter_offers_exactly_the_pipelines_each_reviewer_may_see(
    people: People,
) -> None:
    TenantMembership.objects.create(user=people.ben, tenant="acme")
    gates(3, pipeline="contracts")  # reviewers, default tenant
    gates(2, pipeline="finance", group="legal")  # another group's
    gates(2, pipeline="hr", tenant="acme")  # another tenant's (ben's)
    gates(1, pipeline="invoices", escalate_to="leads", escalated_at=timezone.now())
    gates(1, pipeline="payroll", escalate_to="leads")  # escalation not fired yet
    gates(1, pipeline="archive")
    Gate.objects.filter(pipeline="archive").update(status="decided")  # closed: not offered
    expected = {
        people.ana: ["contracts", "invoices", "payroll"],
        people.ben: ["hr"],
        people.olga: ["finance"],
        people.lea: ["invoices"],
        people.sam: ["contracts", "finance", "hr", "invoices", "payroll"],
        people.otto: [],
    }
    for user, names in expected.items():
        assert open_pipelines(user) == names, user.username
        # The same answer as DISTINCT over every gate the user may see.
        truth = gates_visible_to(user).filter(status="open").values_list("pipeline", flat=True)
        assert names == sorted(set(truth))


def test_the_pipeline_filter_reads_one_query_whatever_the_backlog(people: People) -> None:
    for name in ("a", "b", "c"):
        gates(40, pipeline=name)
    with CaptureQueriesContext(connection) as ctx:
        assert open_pipelines(people.ana) == ["a", "b", "c"]
    assert len(ctx.captured_queries) <= 3  # groups, tenant, the pipelines
