"""A compensated run's page in a real browser: the example trip booking (a state machine),
whose car fails, so the hotel and then the flight are cancelled; and the restart form's new
budget, refused when it is not an amount. Screenshot: docs/screenshots/run-page-compensation.png.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from pipelines.examples import trip_booking  # noqa: F401  (registers the example)
from tests.browser import log_in, shot
from tests.operators.conftest import People
from tests.operators.scenes import settle, spread
from tests.support import Bell
from tests.workflows import saga_workflows  # noqa: F401  (registers the saga workflows)
from workflows import cancel, get_run, start

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_compensated_run_page(
    viewport: Page, live_server: Any, bell: Bell, people: People
) -> None:
    run = start(
        "examples.trip_booking_machine",
        {"traveller": "Ada Lovelace", "destination": "Lisbon", "nights": 3, "unavailable": ["car"]},
        tenant="acme",
        created_by="user:maria",
        max_cost=Decimal("1.00"),
    )
    settle(bell)
    assert get_run(run.pk).status == "failed"
    spread(run, timezone.now() - timedelta(minutes=1), scale=1.5)
    page = viewport
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    expect(page.locator(".run-title .badge")).to_have_text("failed")
    expect(page.locator(".callout-bad")).to_contain_text("no car available for Lisbon")
    expect(page.locator(".callout-bad")).to_contain_text("Compensated")
    undos = page.locator(".tl-undo .tl-name")
    expect(undos).to_have_text(["undo: cancel_hotel", "undo: cancel_flight"])
    expect(page.locator("#cost-title")).to_have_text("Cost per generation")
    shot(page, "run-page-compensation.png")

    # The restart form's budget: not an amount → a message, nothing done.
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill(".restart-form input[name=max_cost]", "NaN")
    page.fill(".restart-form input[name=reason]", "the car is booked now")
    page.click(".restart-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("new budget (max_cost)")
    assert get_run(run.pk).generation == 1
    # What was typed is still there, the budget is marked, its message beside it, and focus
    # is on it (review K).
    budget = page.locator("#restart-budget")
    expect(budget).to_have_value("NaN")
    expect(budget).to_have_attribute("aria-invalid", "true")
    expect(budget).to_be_focused()
    expect(page.locator("#restart-budget_error")).to_contain_text("New budget:")
    expect(page.locator("#restart-reason")).to_have_value("the car is booked now")
    page.fill(".restart-form input[name=max_cost]", "2.5")
    page.click(".restart-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("restarted from step 1")
    assert get_run(run.pk).max_cost == Decimal("2.5")


def test_a_compensating_run_says_so(
    viewport: Page, live_server: Any, bell: Bell, people: People
) -> None:
    run = start("test.saga_wait", {"names": ["flight", "hotel"]}, tenant="acme")
    settle(bell)
    cancel(run.pk, "plans changed")
    page = viewport
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    expect(page.locator(".run-title .badge")).to_have_text("compensating")
    expect(page.locator(".callout-undo")).to_contain_text("it ends canceled")
    settle(bell)  # the page polls while the run is live
    expect(page.locator(".run-title .badge")).to_have_text("canceled", timeout=10_000)
    expect(page.locator(".tl-undo")).to_have_count(2)
