"""The review insights page in a real browser: filters, the download, no horizontal overflow on a
phone, and the screenshot docs/screenshots/reviews-insights.png.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from reviews.models import GateStatus
from tests.browser import log_in, shot
from tests.reviews.conftest import People
from tests.reviews.insights_fixture import closed_gate

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SENTIMENTS = ["positive", "neutral", "negative"]
REPLIES = [
    (
        "Thanks for reaching out! Your refund has been processed.",
        "Thanks for reaching out, and sorry for the wait. Your refund of EUR 42.00 was sent "
        "today; it reaches your account within 3–5 business days.",
    ),
    (
        "We have escalated your issue.",
        "I have passed your ticket to our billing team; they will reply by Friday.",
    ),
    (
        "Please reset your password <b>here</b>.",
        "Please reset your password from Settings → Security (the link in the e-mail expired).",
    ),
]


def history(tenant: str = "") -> None:
    """Twelve weeks of closed gates over three pipelines, getting better over time."""
    rng = random.Random(7)
    now = timezone.now()
    for day in range(84, 0, -1):
        better = day / 84  # older weeks are corrected more often
        for _ in range(rng.randint(1, 4)):
            opened = now - timedelta(days=day, hours=rng.randint(0, 20))
            kind = rng.random()
            if kind < 0.45:
                pipeline, title = "thread_analysis", "Verify thread analysis"
                payload = {"sentiment": "positive", "reply": "—"}
            elif kind < 0.8:
                pipeline, title = "support_ticket", "Approve support reply"
                ai, human = REPLIES[day % len(REPLIES)]
                payload = {"sentiment": "neutral", "reply": ai}
            else:
                pipeline, title = "document_batch", "Check extracted fields"
                payload = {"sentiment": "neutral", "reply": "Invoice INV-2291"}
            roll = rng.random()
            kw: dict[str, Any] = {
                "tenant": tenant,
                "pipeline": pipeline,
                "title": title,
                "payload": payload,
                "opened": opened,
                "seconds": rng.uniform(90, 5400),
                "decided_by": rng.choice(["ana", "ben"]),
            }
            if roll < 0.08:
                closed_gate(status=GateStatus.EXPIRED, **kw)
            elif roll < 0.08 + 0.35 * better + 0.05:
                if pipeline == "support_ticket":
                    edits = {"reply": human}
                else:
                    edits = {"sentiment": rng.choice(["neutral", "negative"])}
                closed_gate(edits=edits, **kw)
            elif roll < 0.6:
                closed_gate(**kw)
            else:
                closed_gate(outcome="reject" if rng.random() < 0.3 else "approve", **kw)


def test_the_insights_page_in_a_browser(live_server: Any, viewport: Page, people: People) -> None:
    history()
    closed_gate(tenant="globex", pipeline="globex_secret")  # another tenant: never shown
    page = viewport
    log_in(page, live_server.url, "ana", then="/reviews/insights/")
    expect(page.get_by_role("heading", name="Review insights")).to_be_visible()
    expect(page.get_by_role("link", name="Insights")).to_have_attribute("aria-current", "page")
    groups = page.get_by_test_id("groups").locator("tbody tr")
    expect(groups).to_have_count(3)
    expect(page.get_by_text("globex_secret")).to_have_count(0)
    fields = page.get_by_test_id("fields").locator(".ri-field")
    expect(fields.first).to_be_visible()
    # Untrusted text stays text: the AI's "<b>here</b>" is shown, not rendered.
    assert page.locator(".ri-before b").count() == 0
    page.mouse.move(0, 0)
    shot(page, "reviews-insights.png")

    # A long value opens to its full text.
    clipped = page.locator(".ri-after details").first
    if clipped.count():
        clipped.locator("summary").click()
        expect(clipped.locator(".ri-full")).to_be_visible()

    # The filters apply on change, through the query string.
    page.select_option("select[name=pipeline]", "support_ticket")
    page.wait_for_url("**/reviews/insights/?*pipeline=support_ticket*")
    expect(groups).to_have_count(1)
    expect(groups.first).to_have_attribute("data-pipeline", "support_ticket")
    page.select_option("select[name=period]", "30")
    page.wait_for_url("**period=30*")

    # The download button exports the same selection.
    with page.expect_download() as info:
        page.get_by_test_id("export").click()
    path = info.value.path()
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert rows and {r["pipeline"] for r in rows} == {"support_ticket"}
    assert all(r["decided_at"] for r in rows)

    # A phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/reviews/insights/")
    expect(page.get_by_test_id("groups")).to_be_visible()
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
