"""A login form posted from a second tab after the user signed in in the first: its CSRF token is
the one the sign-in replaced. Before, the "form expired" 403 (the password typed lost, a "Log in"
button back to the same page); now on to the page the form was for. Anything else with a bad
token is still the 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def _post_login(c: Client, next_: str) -> object:
    return c.post(
        f"/accounts/login/?next={next_}",
        {"username": "ana", "password": "pw-ana-123", "csrfmiddlewaretoken": "stale" * 8},
    )


def test_a_second_tabs_login_goes_on_to_its_page(settings: object) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]
    ana = User.objects.create_user("ana", password="pw-ana-123")
    c = Client(enforce_csrf_checks=True)
    c.force_login(ana)  # signed in in the first tab
    r = _post_login(c, "/runs/")
    assert r.status_code == 302 and r["Location"] == "/runs/"  # type: ignore[attr-defined]
    # Not to another site.
    r = _post_login(c, "https://evil.example/")
    assert r.status_code == 302 and r["Location"] == "/reviews/"  # type: ignore[attr-defined]


def test_a_stale_token_is_still_a_403_otherwise() -> None:
    ana = User.objects.create_user("ana", password="pw-ana-123")
    anonymous = Client(enforce_csrf_checks=True)
    r = _post_login(anonymous, "/runs/")
    assert r.status_code == 403 and b"Form expired" in r.content  # type: ignore[attr-defined]
    signed_in = Client(enforce_csrf_checks=True)
    signed_in.force_login(ana)
    r = signed_in.post("/accounts/logout/", {"csrfmiddlewaretoken": "stale" * 8})
    assert r.status_code == 403  # type: ignore[attr-defined]
