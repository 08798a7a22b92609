"""Helpers shared by the browser tests (Playwright driving Debian's chromium)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Error, Page

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def leave(page: Page) -> None:
    """Unload the page that is open, so none of its scripts can navigate any more.

    A page whose session was just ended (cookies cleared, or logged out) still polls with htmx;
    a poll answered with an ``HX-Redirect`` to the login page starts a navigation of its own,
    which can cancel or overtake the next ``goto`` (a CI run typed the password into the form
    the poll's redirect then replaced). Once ``about:blank`` has committed, the old document
    and its timers are gone; a goto interrupted by the old page's navigation is tried again."""
    for _ in range(5):
        try:
            page.goto("about:blank")
        except Error:
            continue
        if page.url == "about:blank":
            return
    raise AssertionError(f"the page would not unload: still at {page.url}")


def log_in(page: Page, base: str, username: str, then: str = "/reviews/") -> None:
    """Log in through the login form (the test personas' passwords are pw-<name>-123) and
    land on ``then``."""
    leave(page)
    page.goto(f"{base}/accounts/login/?next={quote(then)}")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-123")
    page.click("form.form button[type=submit]")
    page.wait_for_url(f"**{then}")


def shot(page: Page, name: str, full_page: bool = True) -> None:
    """Save a screenshot into docs/screenshots."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    # The top bar is sticky: scroll to the top so a full-page shot has it where it belongs.
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / name), full_page=full_page)


def end_session_elsewhere(page: Page, base: str) -> None:
    """Log out in another tab of the same browser (the session of ``page`` ends)."""
    other = page.context.new_page()
    other.goto(f"{base}/reviews/mine/")
    other.get_by_role("button", name="Log out").click()
    other.wait_for_url("**/accounts/login/**")
    other.close()
