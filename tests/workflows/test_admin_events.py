"""The events list in Django admin reads what it shows, not the events' payloads nor the big
columns of their runs and steps; an event's own page still shows its payload.

Found by review: the list joined the runs and steps (``list_select_related``) and read every
column, so 80 events with large payloads took 3–4 s and grew the web process to 1.18 GB."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from workflows import admin as workflows_admin
from workflows.models import Event, Run, Step

pytestmark = pytest.mark.django_db(transaction=True)

BIG = "x" * 100_000
# What no list of events shows: the payload, and the large values of the run and the step
# (no other table of the list's queries has a column of these names).
BIG_COLUMNS = ("payload", "input", "output", "error", "context", "args", "result", "usage")


@pytest.fixture
def ops(settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = Client()
    client.force_login(User.objects.create_superuser("ops", password="pw-ops-123"))
    return client


def _events(n: int) -> list[Event]:
    big = {"text": BIG}
    run = Run.objects.create(
        workflow="docs.summary", status="succeeded", input=big, output=big, context=big
    )
    step = Step.objects.create(
        run=run, position=1, name="wait_approval", status="succeeded", args=big, result=big
    )
    events = [Event.objects.create(run=run, name=f"approved-{i}", payload=big) for i in range(n)]
    Event.objects.filter(pk=events[0].pk).update(consumed_by=step)
    return events


def _big_columns_read(sqls: list[str]) -> set[str]:
    selects = [sql.split(" FROM ", 1)[0] for sql in sqls]
    return {c for c in BIG_COLUMNS for select in selects if f'."{c}"' in select}


def test_the_events_list_reads_no_payload_and_no_big_column_of_runs_or_steps(
    ops: Client, monkeypatch: Any
) -> None:
    monkeypatch.setattr(workflows_admin.CappedPaginator, "CAP", 3)
    events = _events(5)
    with CaptureQueriesContext(connection) as ctx:
        r = ops.get("/admin/workflows/event/")
    assert r.status_code == 200
    body = r.content.decode()
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert [s for s in sqls if "workflows_event" in s], sqls
    assert _big_columns_read(sqls) == set(), sqls
    assert BIG[:1000] not in body
    # What the list shows: the name, the run, the step that consumed the event, newest first.
    listed = [e.pk for e in r.context["cl"].result_list]
    assert listed == [e.pk for e in reversed(events)]
    assert "approved-4" in body and "docs.summary" in body
    assert "#1 wait_approval (succeeded)" in body
    # The count is capped, as on the runs and journal lists: no COUNT over every event.
    assert "more than 3 events" in body
    counts = [s for s in sqls if "COUNT(" in s.upper()]
    assert counts and all(re.search(r"LIMIT 4\b", s) for s in counts), counts
    # Searching and sorting by a column still work.
    found = ops.get("/admin/workflows/event/?q=approved-2").context["cl"].result_list
    assert [e.pk for e in found] == [events[2].pk]
    assert ops.get("/admin/workflows/event/?o=2").status_code == 200  # by run
    assert ops.get("/admin/workflows/event/?o=-3").status_code == 200  # by consumer


def test_an_events_own_page_still_shows_its_payload(ops: Client) -> None:
    (event,) = _events(1)
    r = ops.get(f"/admin/workflows/event/{event.pk}/change/")
    assert r.status_code == 200
    body = r.content.decode()
    assert "&quot;text&quot;" in body and "x" * 1000 in body
    assert "wait_approval" in body and "docs.summary" in body
