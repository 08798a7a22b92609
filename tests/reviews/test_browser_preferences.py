"""The notification preferences page in a real browser: reached from the reviewer nav, saved
with its CSRF token, a refused chat URL explained, no overflow at 390 px, no CSP violation.

Screenshot: docs/screenshots/reviews-preferences.png.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from reviews.models import NotificationPreference
from tests.browser import log_in, shot
from tests.reviews.conftest import People

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_reviewer_sets_their_notifications(
    live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    people.ana.email = "ana@example.com"
    people.ana.save(update_fields=["email"])
    base = live_server.url
    log_in(page, base, "ana")
    page.get_by_role("link", name="Notifications").click()
    page.wait_for_url("**/reviews/preferences/")
    expect(page.get_by_role("heading", name="Notifications", level=1)).to_be_visible()
    expect(page.get_by_label("E-mail")).to_be_checked()

    # A loopback chat URL is refused with the guard's reason; nothing is saved.
    page.get_by_label("Chat webhook", exact=True).check()
    page.get_by_label("Chat webhook URL").fill("http://127.0.0.1:8000/hook")
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_test_id("chat-url-error")).to_contain_text("loopback, private or reserved")
    assert not NotificationPreference.objects.exists()

    page.get_by_label("Chat webhook URL").fill("https://hooks.slack.com/services/T000/B000/XXXX")
    page.get_by_label("A digest per interval").check()
    page.get_by_label("Digest interval (minutes)").fill("30")
    page.get_by_label("A gate of my group opens").uncheck()
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_text("Your notification preferences are saved.")).to_be_visible()
    row = NotificationPreference.objects.get(user=people.ana)
    assert row.mode == "digest" and row.digest_minutes == 30 and row.chat_enabled
    assert "opened" not in row.events and "reminder" in row.events
    expect(page.get_by_label("A digest per interval")).to_be_checked()
    shot(page, "reviews-preferences.png")

    for width in (760, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{base}/reviews/preferences/")
        page.wait_for_load_state("load")
        scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= inner, f"{scroll} px wide in a {inner} px viewport"
    assert violations == []
