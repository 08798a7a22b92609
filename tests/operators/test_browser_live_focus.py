"""The operator pages' live refreshes and the keyboard, in a real browser (Debian's chromium
through Playwright), review K.

- A live run's page refreshes every 2 s; a reason typed into the cancel form, and keyboard
  focus, survive it, and the audit records the reason.
- The runs list refreshes every 3 s while a run on it is live; focus stays on the run link.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in
from tests.operators.conftest import People
from tests.operators.scenes import showcase
from tests.support import Bell
from workflows.models import Run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def refreshed(page: Page, selector: str) -> None:
    """Wait until the live refresh replaced the element matched by ``selector``."""
    page.evaluate("""sel => { window.__old = document.querySelector(sel); }""", selector)
    page.wait_for_function(
        """sel => window.__old && !window.__old.isConnected && document.querySelector(sel)""",
        arg=selector,
        timeout=10_000,
    )


def test_a_typed_reason_and_focus_survive_the_live_run_page(
    viewport: Page, live_server: Any, bell: Bell, people: People
) -> None:
    run = showcase(bell)["waiting"]
    page = viewport
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    expect(page.locator(".run-title .badge")).to_have_text("suspended")
    reason = page.locator("#cancel-reason")
    reason.click()
    page.keyboard.type("Customer withdrew")
    refreshed(page, ".stat-strip")  # the head around the form was swapped
    expect(reason).to_be_focused()
    page.keyboard.type(" the request")
    expect(reason).to_have_value("Customer withdrew the request")
    page.keyboard.press("Tab")
    button = page.get_by_role("button", name="Cancel run")
    expect(button).to_be_focused()
    refreshed(page, ".stat-strip")
    expect(button).to_be_focused()

    page.on("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    expect(page.locator(".run-title .badge")).to_have_text("canceled")
    audit = Run.objects.get(pk=run.pk).audit.get()
    assert (audit.action, audit.reason) == ("cancel", "Customer withdrew the request")


def test_the_runs_list_keeps_focus_through_its_refresh(
    viewport: Page, live_server: Any, bell: Bell, people: People
) -> None:
    run = showcase(bell)["waiting"]
    page = viewport
    log_in(page, live_server.url, "ops", "/runs/")
    link = page.locator(f"#run-link-{run.pk}")
    link.focus()
    refreshed(page, "#runs-rows")
    expect(link).to_be_focused()
