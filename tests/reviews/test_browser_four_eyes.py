"""A four-eyes gate in a real browser: one approval leaves it open with "1 of 2 approvals" and
the approver's name; the run's starter is told they may not approve; the second approval closes
the page live. Screenshot: docs/screenshots/reviews-four-eyes.png.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from reviews.models import Gate
from reviews.services import decide_gate
from tests.browser import log_in, shot
from tests.reviews.conftest import People
from tests.support import Bell
from workflows import get_run, start

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1


def test_a_four_eyes_gate_waits_for_a_second_approver(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    run = start("finance.payment_release", {}, created_by="ben")
    bell.drain()
    gate = Gate.objects.get(run=run)
    url = f"/reviews/{gate.pk}/"

    # ben started the run: his panel says so and offers no approval.
    log_in(page, live_server.url, "ben", url)
    expect(page.get_by_test_id("separation-note")).to_contain_text("separation of duties")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    page.get_by_role("button", name="Log out").click()
    # Where the logout ends up, before the next page is opened (see test_browser_sso.py: the
    # form's redirect and the page's htmx poll may race there).
    expect(page).to_have_url(re.compile(r"/accounts/login/"), timeout=45_000)

    log_in(page, live_server.url, "ana", url)
    expect(page.get_by_test_id("approval-count")).to_have_text("0 of 2 approvals")
    page.fill("#id_comment", "Amount matches PO-5512. Called Nordwind to confirm the new IBAN.")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(f"**{url}")
    expect(page.locator(".flash-success").first).to_contain_text("1 of 2 approvals")
    expect(page.get_by_test_id("approval-count")).to_have_text("1 of 2 approvals")
    expect(page.get_by_test_id("approver")).to_have_text(["ana"])
    expect(page.get_by_test_id("gate-status")).to_have_text("Open")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.locator(".rv-timeline")).to_contain_text("approved (1 of 2)")
    page.mouse.move(0, 0)
    shot(page, "reviews-four-eyes.png", full_page=False)
    assert get_run(run.pk).status == "suspended"

    # The second approver decides elsewhere; ana's open page closes by itself.
    decide_gate(gate.pk, outcome="approve", actor="sam", user=people.sam)
    expect(page.get_by_test_id("closed-banner")).to_contain_text("Already decided by ana, sam")
    expect(page.get_by_test_id("approval-count")).to_have_text("2 of 2 approvals")
    bell.drain()
    done = get_run(run.pk)
    assert done.status == "succeeded" and done.output["approvals"] == ["ana", "sam"]
    assert violations == []
