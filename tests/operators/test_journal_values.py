"""A run's journal shows each entry's arguments, result and error whole while they are short,
and the beginning of a long one with a link to the whole (``/runs/<id>/steps/<step>/<part>/``,
under the run page's access rule); the live refresh sends no more than the page. The side cards
load only the columns they show."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.operators.conftest import People
from tests.operators.scenes import settle
from tests.support import Bell
from workflows import start
from workflows.models import Blob, Event, Run, Step, WebhookDelivery
from workflows.views import VALUE_INLINE_LIMIT, VALUE_PREVIEW

pytestmark = pytest.mark.django_db(transaction=True)
HX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}
WHOLE = "show the whole value"


def _value_url(run: Run, step: Step, part: str) -> str:
    return f"/runs/{run.pk}/steps/{step.pk}/{part}/"


def _run_of_large_values(n: int, size: int, status: str = "succeeded") -> Run:
    """A run of ``n`` entries, each with ``size`` characters of arguments and of result (and
    every tenth one a failure with a ``size``-character error)."""
    t0 = timezone.now() - timedelta(hours=1)
    run = Run.objects.create(
        workflow="docs.analyze",
        status=status,
        started_at=t0,
        finished_at=None if status == "running" else t0 + timedelta(seconds=n),
    )
    Step.objects.bulk_create(
        Step(
            run=run,
            position=i,
            name=f"extract_{i}",
            status="failed" if i % 10 == 0 else "succeeded",
            attempt=1,
            started_at=t0 + timedelta(seconds=i),
            finished_at=t0 + timedelta(seconds=i + 0.5),
            args={"document": f"doc-{i} " + "a" * size},
            result=None if i % 10 == 0 else {"i": i, "text": "r" * size},
            error={"type": "ValueError", "message": "bad", "traceback": "t" * size}
            if i % 10 == 0
            else None,
        )
        for i in range(1, n + 1)
    )
    return run


def test_a_long_result_shows_its_beginning_and_a_link_to_the_whole(
    people: People, bell: Bell
) -> None:
    c = people.client(people.ops)
    run = start("test.big", {"n": 10_000})  # inline in its row (under 64 KB), not a blob
    settle(bell)
    step = Step.objects.get(run=run)
    html = c.get(f"/runs/{run.pk}/").content.decode()
    url = _value_url(run, step, "result")
    assert f'href="{url}"' in html and WHOLE in html
    assert "&quot;" + "x" * (VALUE_PREVIEW - 1) + "…</pre>" in html  # the beginning
    assert "x" * VALUE_PREVIEW not in html  # not the rest
    whole = c.get(url)
    assert whole.status_code == 200 and whole["Content-Type"] == "application/json"
    assert whole.json() == "x" * 10_000
    # its arguments are short: whole, inline, as before
    assert c.get(_value_url(run, step, "args")).json() == {"args": [10_000], "kwargs": {}}


def test_short_values_stay_whole_inline(people: People, bell: Bell) -> None:
    run = start("test.fanout", {"items": [1, 2, 3]})
    settle(bell)
    html = people.client(people.ops).get(f"/runs/{run.pk}/").content.decode()
    assert WHOLE not in html
    assert (
        '<details><summary>4</summary><pre class="json">4</pre><p class="muted small">arguments'
        '</p><pre class="json">{\n  &quot;args&quot;: [\n    2\n  ],\n  &quot;kwargs&quot;: {}\n}'
        "</pre></details>"
    ) in html


def test_a_journal_of_large_values_is_a_page_and_so_is_its_live_refresh(
    people: People,
) -> None:
    # 400 entries of 60 KB results made an 8.5 MB page, sent again every 2 s while live.
    run = _run_of_large_values(120, 30_000, status="running")
    c = people.client(people.ops)
    for url, headers in ((f"/runs/{run.pk}/", {}), (f"/runs/{run.pk}/?partial=live", HX)):
        r = c.get(url, **headers)
        assert r.status_code == 200
        html = r.content.decode()
        # Whole (cut at 20,000 characters each), it was 120 × 40 KB: 4.9 MB.
        assert len(r.content) < 500_000, (url, len(r.content))
        assert "r" * VALUE_INLINE_LIMIT not in html and "a" * VALUE_INLINE_LIMIT not in html
        assert "t" * VALUE_INLINE_LIMIT not in html
        # every value cut: 108 results, their arguments and 12 errors
        assert html.count(WHOLE) == 108 * 2 + 12, url
    first = Step.objects.get(run=run, position=1)
    failed = Step.objects.get(run=run, position=10)
    assert _value_url(run, first, "args") in html and _value_url(run, failed, "error") in html
    assert c.get(_value_url(run, first, "result")).json() == {"i": 1, "text": "r" * 30_000}
    assert c.get(_value_url(run, first, "args")).json()["document"].endswith("a" * 30_000)
    assert c.get(_value_url(run, failed, "error")).json()["traceback"] == "t" * 30_000


def test_the_whole_value_has_the_run_pages_access_rule(people: People) -> None:
    run = _run_of_large_values(2, 5_000)  # of the default tenant, started by no one
    other = _run_of_large_values(1, 10)
    step = Step.objects.get(run=run, position=1)
    url = _value_url(run, step, "result")
    assert people.client(people.ops).get(url).status_code == 200
    assert people.client(people.watcher).get(url).status_code == 200
    # ana reviews for acme: this run is not hers to see, nor is anything in it
    assert people.client(people.ana).get(f"/runs/{run.pk}/").status_code == 404
    assert people.client(people.ana).get(url).status_code == 404
    assert people.client(people.otto).get(url).status_code == 403  # no run pages at all
    anonymous = people.client(None).get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    c = people.client(people.ops)
    # An entry of another run under this run's URL, an unknown entry or column: 404.
    elsewhere = Step.objects.get(run=other)
    assert c.get(_value_url(run, elsewhere, "result")).status_code == 404
    assert c.get(f"/runs/{run.pk}/steps/{2**62}/result/").status_code == 404
    assert c.get(f"/runs/{run.pk}/steps/{2**70}/result/").status_code == 404
    assert c.get(_value_url(run, step, "target")).status_code == 404
    assert c.get(_value_url(run, step, "lease_owner")).status_code == 404
    # A column the entry leaves empty is null, not an error.
    assert c.get(_value_url(run, step, "error")).json() is None
    assert c.post(url).status_code == 405


def test_arguments_stored_out_of_row_are_a_link_and_only_the_runs_own(people: People) -> None:
    run = _run_of_large_values(1, 10)
    other = _run_of_large_values(1, 10)
    mine = Blob.objects.create(run=run, data=json.dumps({"document": "d" * 900}), size=900)
    theirs = Blob.objects.create(run=other, data=json.dumps({"secret": "s"}), size=20)
    step = Step.objects.get(run=run)
    step.args = {"$blob": mine.pk, "size": mine.size}
    step.save(update_fields=["args"])
    c = people.client(people.ops)
    html = c.get(f"/runs/{run.pk}/").content.decode()
    assert f'href="{_value_url(run, step, "args")}"' in html and "$blob" not in html
    assert c.get(_value_url(run, step, "args")).json() == {"document": "d" * 900}
    Step.objects.filter(pk=step.pk).update(args={"$blob": theirs.pk, "size": theirs.size})
    assert c.get(_value_url(run, step, "args")).status_code == 404


def test_the_side_cards_load_only_the_columns_they_show(people: People) -> None:
    run = _run_of_large_values(1, 10)
    Event.objects.create(run=run, name="signed_off", payload={"note": "p" * 60_000})
    WebhookDelivery.objects.create(
        run=run, url="https://hooks.example.com/x", payload={"output": "w" * 60_000}
    )
    Run.objects.create(
        workflow="docs.analyze", status="succeeded", parent=run, input={"big": "i" * 60_000}
    )
    with CaptureQueriesContext(connection) as queries:
        html = people.client(people.ops).get(f"/runs/{run.pk}/").content.decode()
    assert "signed_off" in html and "hooks.example.com/x" in html
    event_reads = [q["sql"] for q in queries if 'FROM "workflows_event"' in q["sql"]]
    delivery_reads = [q["sql"] for q in queries if 'FROM "workflows_webhookdelivery"' in q["sql"]]
    child_reads = [q["sql"] for q in queries if '"workflows_run"."parent_id" =' in q["sql"]]
    assert event_reads and delivery_reads and child_reads
    assert not [sql for sql in event_reads if '"payload"' in sql]
    assert not [sql for sql in delivery_reads if '"payload"' in sql]
    assert not [sql for sql in child_reads if '"input"' in sql]
