"""The notification preferences page: a reviewer's own, CSRF-protected, validated."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.test import Client

from reviews.models import NotificationPreference
from reviews.notifications import window_end
from tests.reviews.conftest import People

pytestmark = [pytest.mark.core, pytest.mark.django_db]

URL = "/reviews/preferences/"


def logged_in(user: Any, csrf: bool = False) -> Client:
    c = Client(enforce_csrf_checks=csrf)
    c.force_login(user)
    return c


def form(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "email_enabled": "on",
        "mode": "immediate",
        "digest_minutes": "60",
        "events": ["opened", "reminder"],
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def test_the_page_shows_the_defaults_and_the_nav_links_it(people: People) -> None:
    page = logged_in(people.ana).get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/reviews/preferences/" aria-current="page"' in html
    assert 'name="email_enabled" id="id_email_enabled" checked' in html
    assert html.count('name="events"') == 5 and html.count("checked") >= 6
    assert not NotificationPreference.objects.exists()  # nothing saved by looking


def test_saving_stores_the_users_own_preferences(people: People) -> None:
    r = logged_in(people.ana).post(
        URL,
        form(
            mode="digest",
            digest_minutes="15",
            chat_enabled="on",
            chat_webhook_url="https://hooks.slack.com/services/T0/B0/x",
        ),
    )
    assert r.status_code == 302 and r["Location"] == URL
    row = NotificationPreference.objects.get()
    assert row.user == people.ana and row.mode == "digest" and row.digest_minutes == 15
    assert row.chat_enabled and row.chat_webhook_url.startswith("https://hooks.slack.com/")
    assert row.events == ["opened", "reminder"]
    # A field naming another user is ignored: the form has no such field.
    logged_in(people.ben).post(URL, form(user=str(people.ana.pk), email_enabled=None))
    ana = NotificationPreference.objects.get(user=people.ana)
    assert ana.email_enabled and ana.mode == "digest"
    assert not NotificationPreference.objects.get(user=people.ben).email_enabled


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://127.0.0.1:9/hook", "loopback, private or reserved"),
        ("http://10.0.0.5/hook", "loopback, private or reserved"),
        ("http://localhost/hook", "loopback name"),
        ("ftp://example.com/hook", "http or https"),
        ("https://user:pw@example.com/hook", "credentials"),
    ],
)
def test_a_chat_url_the_guard_refuses_is_a_clear_422(
    people: People, url: str, message: str
) -> None:
    r = logged_in(people.ana).post(URL, form(chat_enabled="on", chat_webhook_url=url))
    assert r.status_code == 422
    assert message in r.content.decode()
    assert not NotificationPreference.objects.exists()


def test_bad_input_is_422_and_loses_nothing(people: People) -> None:
    c = logged_in(people.ana)
    for bad in (
        form(digest_minutes="0"),
        form(digest_minutes="99999"),
        form(mode="sometimes"),
        form(events=["opened", "bogus"]),
        form(chat_enabled="on", chat_webhook_url=""),
        form(digest_minutes="\x00"),
    ):
        r = c.post(URL, bad)
        assert r.status_code in (400, 422), bad
    assert not NotificationPreference.objects.exists()


def test_csrf_is_required(people: People) -> None:
    c = logged_in(people.ana, csrf=True)
    assert c.post(URL, form()).status_code == 403
    page = c.get(URL)
    token = page.cookies["csrftoken"].value
    assert c.post(URL, form(), HTTP_X_CSRFTOKEN=token).status_code == 302


def test_outsiders_and_anonymous_get_no_page(people: People) -> None:
    assert logged_in(people.otto).get(URL).status_code == 403
    r = Client().get(URL)
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


def test_odd_chat_urls_are_422_never_500(people: People) -> None:
    c = logged_in(people.ana)
    for url in (
        "https://hooks.example.com/\x00",
        "https://" + "a" * 2100 + ".example.com/",
        "http://[::1",
        "http://[::ffff:127.0.0.1]/hook",
        "https://hooks.example.com:99999/x",
        "javascript:alert(1)",
    ):
        r = c.post(URL, form(chat_enabled="on", chat_webhook_url=url))
        assert r.status_code in (400, 422), url
    assert not NotificationPreference.objects.exists()


def test_two_first_saves_at_once_are_no_500(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a double-submitted first save (two tabs, a double click) raced to
    insert the user's one row; the loser's unique violation was a 500. The later save wins,
    as any later save does."""
    import reviews.notifications

    real = reviews.notifications.default_preferences

    def racing(user: Any) -> NotificationPreference:
        # The other request inserts the row after this one looked and found none.
        NotificationPreference.objects.create(user=user, events=["opened"], mode="digest")
        return real(user)

    monkeypatch.setattr(reviews.notifications, "default_preferences", racing)
    r = logged_in(people.ana).post(URL, form(email_enabled=None))
    assert r.status_code == 302
    row = NotificationPreference.objects.get(user=people.ana)
    assert row.mode == "immediate" and not row.email_enabled
    assert row.events == ["opened", "reminder"]


def test_the_digest_interval_says_its_windows_are_aligned_on_utc(people: People) -> None:
    """Review finding: the help said "aligned on the clock (60: on the hour)", but the windows
    are aligned on the epoch (``window_end``), so on UTC's hours: a reviewer half an hour off
    UTC gets an hourly digest at half past."""
    html = logged_in(people.ana).get(URL).content.decode()
    assert "aligned on the UTC clock (60: on the hour, UTC; 1440: at midnight UTC)" in html
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+5:30
    end = window_end(datetime(2026, 3, 1, 9, 10, tzinfo=kolkata), 60)
    assert end == datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    assert end.astimezone(kolkata).minute == 30
    assert window_end(datetime(2026, 3, 1, 9, 10, tzinfo=kolkata), 1440) == datetime(
        2026, 3, 2, tzinfo=UTC
    )
