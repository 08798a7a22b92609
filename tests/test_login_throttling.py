"""Login throttling: repeated failed logins lock a username (or an address) out, with a clear
message on the styled login page, logged on ``sluice.security`` without the password.

Personas: ana (the one being guessed), ben (another user on the same address). Expiry is tested
by moving the recorded failure times into the past, never by sleeping.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from config import security

pytestmark = pytest.mark.django_db

WRONG = "wrong-password-7731"
LOCKED_TEXT = "Too many failed logins"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ana(db: None) -> User:
    return User.objects.create_user("ana", password="pw-ana-123")


@pytest.fixture
def ben(db: None) -> User:
    return User.objects.create_user("ben", password="pw-ben-123")


def login(client: Client, username: str, password: str, **extra: Any) -> Any:
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(client: Client, username: str, times: int, **extra: Any) -> None:
    for _ in range(times):
        r = login(client, username, WRONG, **extra)
        assert r.status_code == 200 and LOCKED_TEXT not in r.content.decode()


def test_it_locks_a_username_out_after_five_failures(client: Client, ana: User) -> None:
    fail(client, "ana", 5)
    r = login(client, "ana", "pw-ana-123")  # even the right password: the lockout holds
    assert r.status_code == 429
    page = r.content.decode()
    assert "Too many failed logins for this account or from your address" in page
    assert "Try again in 15 minutes" in page
    assert 'rel="stylesheet"' in page and 'class="topbar"' in page  # the styled page
    assert not logged_in(client)


def test_it_logs_failures_and_lockouts_without_the_password(
    client: Client, ana: User, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sluice.security"):
        fail(client, "ana", 5)
        login(client, "ana", "pw-ana-123")
    records = [r for r in caplog.records if r.name == "sluice.security"]
    assert len(records) == 6
    assert all(
        "username='ana'" in r.getMessage() and "ip=127.0.0.1" in r.getMessage() for r in records
    )
    assert "failures_for_username=5" in records[4].getMessage()
    assert records[5].getMessage().startswith("login refused (locked out)")
    assert not any(WRONG in r.getMessage() or "pw-ana-123" in r.getMessage() for r in records)


def test_other_users_are_not_affected(client: Client, ana: User, ben: User) -> None:
    fail(client, "ana", 5)
    r = login(client, "ben", "pw-ben-123")
    assert r.status_code == 302 and logged_in(client)


def test_a_successful_login_resets_the_usernames_count(client: Client, ana: User) -> None:
    fail(client, "ana", 4)
    assert login(client, "ana", "pw-ana-123").status_code == 302
    client.logout()
    fail(client, "ana", 4)
    assert login(client, "ana", "pw-ana-123").status_code == 302


def test_the_lockout_lifts_when_the_failures_leave_the_window(client: Client, ana: User) -> None:
    fail(client, "ana", 5)
    assert login(client, "ana", "pw-ana-123").status_code == 429
    # Move every recorded failure 15 minutes and 1 second into the past.
    key = security._key("user", "ana")
    cache.set(key, [t - 901 for t in cache.get(key)])
    ip_key = security._key("ip", "127.0.0.1")
    cache.set(ip_key, [t - 901 for t in cache.get(ip_key)])
    r = login(client, "ana", "pw-ana-123")
    assert r.status_code == 302 and logged_in(client)


def test_the_username_match_ignores_case(client: Client, ana: User) -> None:
    fail(client, "ANA", 5)
    assert login(client, "ana", "pw-ana-123").status_code == 429


def test_an_address_with_many_failures_is_locked_out_for_every_username(
    client: Client, ana: User, settings: Any
) -> None:
    for i in range(20):
        login(client, f"guess-{i}", WRONG)
    r = login(client, "ana", "pw-ana-123")
    assert r.status_code == 429 and LOCKED_TEXT in r.content.decode()
    r = login(client, "ana", "pw-ana-123", REMOTE_ADDR="198.51.100.7")
    assert r.status_code == 302


def test_behind_a_proxy_it_counts_the_address_the_proxy_appended(
    client: Client, ana: User, settings: Any
) -> None:
    settings.SLUICE_CLIENT_IP_HEADER = "X-Forwarded-For"
    for i in range(20):
        # The client forges a first entry; the proxy appends the real address.
        login(client, f"guess-{i}", WRONG, HTTP_X_FORWARDED_FOR=f"10.0.0.{i}, 203.0.113.5")
    r = login(client, "ana", "pw-ana-123", HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert r.status_code == 429
    r = login(client, "ana", "pw-ana-123", HTTP_X_FORWARDED_FOR="203.0.113.6")
    assert r.status_code == 302


def test_the_admin_login_is_throttled_too(client: Client, ana: User) -> None:
    ana.is_staff = True
    ana.save()
    for _ in range(5):
        r = client.post("/admin/login/", {"username": "ana", "password": WRONG})
        assert r.status_code == 200 and LOCKED_TEXT not in r.content.decode()
    r = client.post("/admin/login/?next=/admin/", {"username": "ana", "password": "pw-ana-123"})
    # The same answer as the other login page's (docs/security.md): 429, with the message.
    assert r.status_code == 429 and LOCKED_TEXT in r.content.decode()
    assert not logged_in(client)
    # Failures counted on either page lock the other one too.
    assert login(client, "ana", "pw-ana-123").status_code == 429


# --- password change --------------------------------------------------------------------------

NEW = "N3w-Secret-Pass-1"
PASSWORD_CHANGES = ("/accounts/password_change/", "/admin/password_change/")


def change_password(client: Client, url: str, old: str) -> Any:
    return client.post(url, {"old_password": old, "new_password1": NEW, "new_password2": NEW})


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("url", PASSWORD_CHANGES)
def test_wrong_old_passwords_count_as_failed_logins(url: str, ana: User) -> None:
    """The password-change form checks the current password: from a session left open (or
    taken), it must not be a way to guess it without limit, nor during a lockout."""
    ana.is_staff = True  # the admin's form is for staff
    ana.save()
    session = signed_in(ana)
    for _ in range(5):
        r = change_password(session, url, WRONG)
        assert r.status_code == 200 and LOCKED_TEXT not in r.content.decode()
    # Locked out: even the right password is refused, unchecked, and not changed.
    r = change_password(session, url, "pw-ana-123")
    assert r.status_code == 429 and LOCKED_TEXT in r.content.decode()
    ana.refresh_from_db()
    assert ana.check_password("pw-ana-123")
    # The same lockout as the login pages': five wrong guesses here lock ana's login too.
    assert login(Client(), "ana", "pw-ana-123").status_code == 429


@pytest.mark.parametrize("url", PASSWORD_CHANGES)
def test_a_login_lockout_stops_the_password_change_form(url: str, ana: User) -> None:
    ana.is_staff = True
    ana.save()
    session = signed_in(ana)
    fail(Client(), "ana", 5)  # guessed on the login page, from another client
    r = change_password(session, url, "pw-ana-123")
    assert r.status_code == 429 and LOCKED_TEXT in r.content.decode()
    ana.refresh_from_db()
    assert ana.check_password("pw-ana-123")
    # Once the window is over, the right password changes it.
    key = security._key("user", "ana")
    cache.set(key, [t - 901 for t in cache.get(key)])
    r = change_password(session, url, "pw-ana-123")
    assert r.status_code == 302
    ana.refresh_from_db()
    assert ana.check_password(NEW)


def test_the_right_old_password_clears_the_count(ana: User) -> None:
    """As a successful login does: the username's count, not the address's."""
    session = signed_in(ana)
    for _ in range(4):
        change_password(session, "/accounts/password_change/", WRONG)
    assert len(cache.get(security._key("user", "ana"))) == 4
    assert change_password(session, "/accounts/password_change/", "pw-ana-123").status_code == 302
    assert cache.get(security._key("user", "ana")) is None
    assert len(cache.get(security._key("ip", "127.0.0.1"))) == 4
    fail(Client(), "ana", 4)  # four more: the count started again
    assert login(Client(), "ana", NEW).status_code == 302


def test_password_change_guesses_are_logged_without_the_passwords(
    ana: User, caplog: pytest.LogCaptureFixture
) -> None:
    session = signed_in(ana)
    with caplog.at_level(logging.INFO, logger="sluice.security"):
        for _ in range(5):
            change_password(session, "/accounts/password_change/", WRONG)
        change_password(session, "/accounts/password_change/", "pw-ana-123")
    records = [r.getMessage() for r in caplog.records if r.name == "sluice.security"]
    assert len(records) == 6
    assert all("username='ana'" in m and "ip=127.0.0.1" in m for m in records)
    assert records[0].startswith("password change failed (wrong old password)")
    assert "failures_for_username=5" in records[4]
    assert records[5].startswith("password change refused (locked out)")
    assert not any(WRONG in m or "pw-ana-123" in m or NEW in m for m in records)


def test_locked_out_reports_the_seconds_left(ana: User) -> None:
    now = time.time()
    for i in range(5):
        security.record_failure("ana", "127.0.0.1", now=now - 600 + i)
    assert security.locked_out("ana", "127.0.0.1", now=now) == 300
    assert security.locked_out("ana", "127.0.0.1", now=now + 301) == 0


# --- password reset ---------------------------------------------------------------------------


def test_password_reset_mails_are_limited_per_address_and_per_client(
    client: Client, settings: Any
) -> None:
    """The reset page is public: unlimited, it floods an inbox and the mail server. Past the
    limit it answers the same (it says nothing about accounts) and sends nothing."""
    from django.core import mail

    cache.clear()
    settings.SLUICE_PASSWORD_RESET_MAX_PER_EMAIL = 3
    settings.SLUICE_PASSWORD_RESET_MAX_PER_IP = 5
    User.objects.create_user("ana", email="ana@example.com", password="pw-ana-123")
    User.objects.create_user("ben", email="ben@example.com", password="pw-ben-123")
    answers = {
        client.post("/accounts/password_reset/", {"email": "ANA@example.com"}).status_code
        for _ in range(10)
    }
    assert answers == {302}
    assert [m.to for m in mail.outbox] == [["ana@example.com"]] * 3
    # Another address from the same client: the client's own limit (5 requests) is spent.
    client.post("/accounts/password_reset/", {"email": "ben@example.com"})
    assert len(mail.outbox) == 3
    # From another client, ben's first mail goes out.
    other = Client(REMOTE_ADDR="10.0.0.7")
    other.post("/accounts/password_reset/", {"email": "ben@example.com"})
    assert [m.to for m in mail.outbox][-1] == ["ben@example.com"]
    cache.clear()
