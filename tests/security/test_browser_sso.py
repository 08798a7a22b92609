"""Single sign-on in a real browser: the login page offers the provider, chromium goes through
the fake OpenID Connect provider on 127.0.0.1 and back, and lands on the reviewer queue with the
gates of the mapped group in the claimed tenant only; logging out ends the session.

Screenshot: docs/screenshots/login-sso.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

import tests.reviews.workflows  # noqa: F401  (registers the review workflows)
from tests.browser import shot
from tests.oidc_provider import FakeProvider
from tests.support import Bell
from workflows import start

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def provider(settings: Any) -> Iterator[FakeProvider]:
    with FakeProvider() as p:
        for name, value in p.settings().items():
            setattr(settings, name, value)
        settings.SLUICE_OIDC_PROVIDER_NAME = "Acme ID"
        settings.SLUICE_OIDC_GROUP_MAP = "acme-reviewers=reviewers"
        p.claims = {
            "sub": "u-rita",
            "email": "rita@example.com",
            "preferred_username": "rita",
            "groups": ["acme-reviewers", "acme-legal"],  # acme-legal is not in the map
            "tenant": "acme",
        }
        yield p


def open_gate(bell: Bell, title: str, group: str, tenant: str) -> None:
    start("test.review", {"title": title, "group": group}, tenant=tenant)
    bell.drain()


def test_a_reviewer_signs_in_with_the_provider(
    live_server: Any, viewport: Page, provider: FakeProvider, bell: Bell
) -> None:
    page = viewport
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    open_gate(bell, "Acme reviewers gate", "reviewers", "acme")
    open_gate(bell, "Globex reviewers gate", "reviewers", "globex")
    open_gate(bell, "Acme legal gate", "legal", "acme")

    base = live_server.url
    page.goto(f"{base}/accounts/login/?next=/reviews/")
    sign_in = page.get_by_role("link", name="Sign in with Acme ID")
    expect(sign_in).to_be_visible()
    expect(page.get_by_label("Username")).to_be_visible()  # local accounts still offered
    shot(page, "login-sso.png")

    sign_in.click()
    page.wait_for_url(f"{base}/reviews/")
    expect(page.get_by_text("Acme reviewers gate")).to_be_visible()
    expect(page.get_by_text("Globex reviewers gate")).to_have_count(0)  # another tenant
    expect(page.get_by_text("Acme legal gate")).to_have_count(0)  # a group not in the map
    expect(page.get_by_test_id("open-count")).to_have_text("1")

    # Two navigations may race to the login page: the logout form's redirect, and the queue's
    # htmx poll, which gets an HX-Redirect there once the session is gone; one aborts the other
    # (net::ERR_ABORTED in a CI run), so wait for where the page ends up, not for a navigation.
    # A patient wait: in the full suite this runs right after the 20-page push test, and once
    # (1 run in ~6) the logout's navigation took longer than the default 15 s to start.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/accounts/login/"), timeout=45_000)
    page.goto(f"{base}/reviews/")
    page.wait_for_url("**/accounts/login/?next=/reviews/")
    assert violations == []
