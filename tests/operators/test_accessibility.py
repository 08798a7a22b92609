"""Accessibility of the operator pages' markup (review K), on the server's HTML; the behaviour in
a browser is in test_browser_live_focus.py.

- a restart refused for its budget comes back with what was typed, the budget field marked
  invalid and its message next to it (once: the next view has a fresh form);
- the run actions keep a stable id while they offer the same thing (hx-preserve), and the
  reason boxes carry ids and data-keep, so the 2 s refresh of a live run keeps typing and focus;
- the runs list's rows and links have stable ids (their 3 s refresh keeps focus);
- the ops charts give their figures to screen readers.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

import tests.sample_workflows  # noqa: F401  (registers test.refuse)
from tests.operators.conftest import People
from tests.operators.scenes import settle, showcase
from tests.support import Bell
from workflows import get_run, start
from workflows.models import RunAudit

pytestmark = pytest.mark.django_db(transaction=True)


def tag(html: str, pattern: str) -> str:
    found = re.search(pattern, html)
    assert found, pattern
    return found.group(0)


def test_a_refused_budget_keeps_what_was_typed_and_marks_the_field(
    people: People, bell: Bell
) -> None:
    c = people.client(people.ops)
    run = start("test.refuse", {}, max_cost=Decimal("1.00"))
    settle(bell)
    r = c.post(
        f"/runs/{run.pk}/actions/restart/",
        {"from_step": "1", "max_cost": "abc", "reason": "try again after the fix"},
    )
    assert r.status_code == 302  # back to the run page: a reload re-posts nothing
    html = c.get(r["Location"]).content.decode()
    budget = tag(html, r'<input class="budget"[^>]*>')
    assert 'value="abc"' in budget and 'aria-invalid="true"' in budget
    assert 'aria-describedby="restart-budget_error"' in budget
    error = tag(html, r'<p class="field-error" id="restart-budget_error"[^>]*>[^<]*</p>')
    assert "Enter a number." in error
    reason = tag(html, r'<input class="reason" id="restart-reason"[^>]*>')
    assert 'value="try again after the fix"' in reason
    assert "new budget (max_cost): Enter a number." in html  # the flash says it too
    assert (get_run(run.pk).generation, RunAudit.objects.filter(run=run).count()) == (1, 0)

    # Said once: the next view of the page has an empty form.
    again = c.get(f"/runs/{run.pk}/").content.decode()
    budget = tag(again, r'<input class="budget"[^>]*>')
    assert 'value=""' in budget and "aria-invalid" not in budget
    assert "restart-budget_error" not in again


def test_live_run_actions_survive_the_refresh(people: People, bell: Bell) -> None:
    runs = showcase(bell)
    run = runs["waiting"]
    c = people.client(people.ops)
    page = c.get(f"/runs/{run.pk}/").content.decode()
    live = c.get(f"/runs/{run.pk}/?partial=live", HTTP_HX_REQUEST="true").content.decode()
    actions = tag(page, r'<div class="run-actions" id="(run-actions-[^"]+)" hx-preserve[^>]*>')
    key = re.search(r'id="(run-actions-[^"]+)"', actions)
    assert key and f'id="{key.group(1)}"' in live  # the same id: htmx keeps the old one
    cancel = tag(live, r'<input class="reason" id="cancel-reason" data-keep[^>]*>')
    assert 'name="reason"' in cancel
    assert 'id="fork-reason" data-keep' in live

    rows = c.get("/runs/?partial=rows", HTTP_HX_REQUEST="true").content.decode()
    assert f'id="run-row-{run.pk}"' in rows and f'id="run-link-{run.pk}"' in rows


def test_the_ops_charts_give_their_figures_to_screen_readers(people: People, bell: Bell) -> None:
    showcase(bell)
    html = people.client(people.ops).get("/ops/").content.decode()
    assert html.count('<svg class="chart"') == 4
    # The drawings with many figures are hidden from screen readers, a table follows each.
    assert html.count('<div class="sr-only"><table><caption>') == 3
    assert "<caption>runs finished per hour, by outcome, with the failure rate</caption>" in html
    # The one-bar chart names its parts in its label.
    assert re.search(r'aria-label="runs by status: [a-z]+ \d+', html)
