"""Reviewer countdowns count down from the server's clock, not the browser's: the page carries
the server's time (``data-now``) and reviews.js applies the difference. A laptop ten minutes
fast showed "due now" while minutes were left; one that is slow showed time that was not left.
The browser's clock is faked with Playwright's ``page.clock``; its timers still run."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from tests.browser import log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The gate is due in 30 minutes by the server's clock: a countdown a few seconds into the page.
DUE = re.compile(r"^(29m \d\ds|30m 00s)$")


@pytest.fixture(autouse=True)
def _fast_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_REVIEW_PUSH = False


@pytest.mark.parametrize(
    "off", [timedelta(minutes=40), timedelta(minutes=-150)], ids=["fast", "slow"]
)
def test_countdowns_follow_the_servers_clock_whatever_the_browsers(
    bell: Bell, live_server: Any, viewport: Page, people: People, off: timedelta
) -> None:
    page = viewport
    gate = open_gate(bell, timeout_s=1800, title="Check the refund")
    log_in(page, live_server.url, "ana")
    # From here the browser's clock is off by ``off`` (40 minutes fast: past the deadline;
    # 2.5 hours slow: hours before it), and its time flows on.
    page.clock.install(time=timezone.now() + off)

    page.goto(f"{live_server.url}/reviews/{gate.pk}/")
    countdown = page.locator(".rv-deadline-box time.countdown")
    page.clock.run_for(2_000)  # two ticks of the countdown
    expect(countdown).to_have_text(DUE)
    expect(countdown).to_have_class(re.compile(r"\brv-urgency-soon\b"))

    page.goto(f"{live_server.url}/reviews/")
    row = page.locator(f"#gate-row-{gate.pk} time.countdown")
    page.clock.run_for(2_000)
    expect(row).to_have_text(DUE)
    expect(row).to_have_class(re.compile(r"\brv-urgency-soon\b"))
    # A gate opens: the live refresh swaps the list in again, with the server's time then.
    before = page.locator("#queue").get_attribute("data-now")
    later = open_gate(bell, timeout_s=7200, title="Check the invoice")
    page.clock.run_for(2_000)
    expect(page.locator(f"#gate-row-{later.pk}")).to_be_visible()
    expect(page.locator("#queue")).not_to_have_attribute("data-now", before or "")
    page.clock.run_for(1_000)
    expect(page.locator(f"#gate-row-{gate.pk} time.countdown")).to_have_text(DUE)
    expect(page.locator(f"#gate-row-{later.pk} time.countdown")).to_have_text(
        re.compile(r"^(1h 59m|2h 00m)$")
    )
