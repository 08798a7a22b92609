"""The run page of a run with thousands of journal entries stays a page: the timeline and
the restart/fork pickers are capped, the rest is a link away (the journal API, admin)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.operators.conftest import People
from workflows.models import Run, Step
from workflows.timeline import FIRST_SHOWN, MAX_ENTRIES_SHOWN
from workflows.views import PICKER_LIMIT

pytestmark = pytest.mark.django_db(transaction=True)
HX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}


def _long_run(n: int, status: str = "succeeded") -> Run:
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
            name=f"step_{i}",
            status="succeeded",
            attempt=1,
            started_at=t0 + timedelta(seconds=i),
            finished_at=t0 + timedelta(seconds=i + 0.5),
            result={"i": i},
        )
        for i in range(1, n + 1)
    )
    return run


def test_a_run_of_ten_thousand_steps_is_a_page_not_a_download(people: People) -> None:
    run = _long_run(10_000)
    c = people.client(people.ops)
    for url, headers in ((f"/runs/{run.pk}/", {}), (f"/runs/{run.pk}/?partial=live", HX)):
        r = c.get(url, **headers)
        assert r.status_code == 200
        # Drawn whole it was 9 MB (and 6 s to render): the timeline, the restart picker and
        # the fork picker each listed all 10,000 positions.
        assert len(r.content) < 1_000_000, len(r.content)
    html = r.content.decode()
    assert html.count('class="tl-item ') == MAX_ENTRIES_SHOWN + 1  # and the gap
    gap = 10_000 - MAX_ENTRIES_SHOWN
    assert f"#{FIRST_SHOWN + 1}–#{FIRST_SHOWN + gap}" in html
    assert f"{gap} more steps not drawn" in html
    # the first positions and the last ones are drawn, the middle is not
    assert ">#1</span>" in html and ">#10000</span>" in html
    assert f">#{FIRST_SHOWN + 1}</span>" not in html


def test_the_pickers_become_number_fields_and_still_restart_and_fork(
    people: People, bell: Any
) -> None:
    run = _long_run(PICKER_LIMIT + 50, status="failed")
    c = people.client(people.ops)
    html = c.get(f"/runs/{run.pk}/").content.decode()
    last = PICKER_LIMIT + 50
    assert "<option" not in html.split('id="run-head"', 1)[1].split("</section>", 1)[0]
    assert re.search(rf'id="from-step"[^>]*type="number"[^>]*max="{last}"', html)
    assert re.search(rf'id="fork-step"[^>]*type="number"[^>]*max="{last + 1}"', html)
    r = c.post(f"/runs/{run.pk}/actions/fork/", {"from_step": str(last)})
    forked = Run.objects.exclude(pk=run.pk).get()
    assert r["Location"] == f"/runs/{forked.pk}/" and forked.forked_at_step == last
    # out of range: the engine's own message, nothing changed
    r = c.post(f"/runs/{run.pk}/actions/restart/", {"from_step": str(last + 5)}, follow=True)
    assert r.status_code == 200 and Run.objects.get(pk=run.pk).generation == 1
    assert f"from_step {last + 5} is past the journal" in r.content.decode()
    c.post(f"/runs/{run.pk}/actions/restart/", {"from_step": "7"})
    run.refresh_from_db()
    assert run.generation == 2 and run.status != "failed"
    assert Step.objects.filter(run=run, superseded=False).count() == 6


def test_short_runs_keep_their_lists(people: People) -> None:
    run = _long_run(30, status="failed")
    html = people.client(people.ops).get(f"/runs/{run.pk}/").content.decode()
    assert html.count('class="tl-item ') == 30 and "not drawn" not in html
    assert '<select id="from-step"' in html and '<select id="fork-step"' in html


def _drawn(tl: Any) -> list[tuple[Any, ...]]:
    return [
        (
            i.entry.row.pk,
            i.entry.left,
            i.entry.width,
            i.entry.duration,
            i.entry.note,
            i.hidden,
            [(b.row.pk, b.left, b.width, b.duration) for b in i.branches],
        )
        for i in tl.items
    ] + [(tl.start, tl.end, tl.total, tl.gap, tl.gap_from, tl.gap_to, tl.gap_at)]


def test_the_page_draws_from_the_database_what_the_journal_in_memory_gives(
    bell: Any, people: People, monkeypatch: Any
) -> None:
    """``timeline.for_run`` (the page: only the rows it draws) and ``timeline.build`` (a
    journal in memory) agree, and so do ``last_forkable_in`` and ``last_forkable``, on every
    run of the operator scenes (fan-outs, retries, waits, undos, failures) and on long runs."""
    from tests.operators.scenes import settle, showcase
    from workflows.core.forking import last_forkable, last_forkable_in
    from workflows.timeline import build, for_run

    monkeypatch.setattr("workflows.timeline.MAX_BRANCHES_SHOWN", 2)
    showcase(bell)
    settle(bell)
    _long_run(MAX_ENTRIES_SHOWN + 7, status="running")
    _long_run(12)
    now = timezone.now()
    runs = list(Run.objects.all())
    assert len(runs) >= 6
    for run in runs:
        live = Step.objects.filter(run=run, superseded=False)
        assert _drawn(for_run(run, live, now)) == _drawn(build(run, list(live), now)), run
        for compensating in (False, True):
            assert last_forkable_in(live, compensating=compensating) == last_forkable(
                list(live), compensating=compensating
            )


def test_the_admin_change_page_of_a_long_run_shows_its_first_journal_entries(
    people: People,
) -> None:
    """Found by review: the run's admin page drew a read-only form for every journal row (a
    10,000-branch map: 25 MB in 12 s; 50,000: 124 MB in 118 s and 1.2 GB of worker memory)."""
    from workflows.admin import JOURNAL_SHOWN

    run = _long_run(3_000)
    c = people.client(people.ops)
    r = c.get(f"/admin/workflows/run/{run.pk}/change/")
    assert r.status_code == 200
    html = r.content.decode()
    assert html.count('class="field-where"') == JOURNAL_SHOWN
    assert ">step_1<" in html and f">step_{JOURNAL_SHOWN}<" in html
    assert f">step_{JOURNAL_SHOWN + 1}<" not in html
    assert f"/admin/workflows/step/?q={run.pk}" in html and "All 3,000 journal entries" in html
    # The link lists them all (newest first: the last entry is on its first page).
    listed = c.get(f"/admin/workflows/step/?q={run.pk}")
    assert listed.status_code == 200 and "step_3000" in listed.content.decode()
