"""When the session ends under an open page (logged out in another tab, expired), its htmx
requests are sent to the login page as a whole-tab navigation, and the login page sends the user
back to the page they were on (config.login).

Every view an htmx request can reach: the live parts of the runs list, a run's page and the ops
overview, the review queue and a gate's page, and the gate's Claim and Release buttons. A 302
would be followed by htmx itself and the login page swapped into the fragment; instead they
answer 204 with ``HX-Redirect``, whose ``next`` is the page (htmx's ``HX-Current-URL``, when it is
on this site), never the fragment's or the action's URL, and is encoded.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = [pytest.mark.django_db]

RUN = uuid.UUID("0b9e3c1a-5f7d-4c1e-9a4b-2d6f8e0c7a31")
HOST = "http://testserver"


def htmx(page: str | None) -> dict[str, Any]:
    """The headers htmx sends from ``page`` (a path on this site, or a whole URL)."""
    headers = {"HX-Request": "true"}
    if page is not None:
        headers["HX-Current-URL"] = page if "://" in page else HOST + page
    return {"headers": headers}


def login_next(location: str) -> str:
    """The ``next`` of a redirect to the login page (one, decoded)."""
    parts = urlsplit(location)
    assert parts.path == "/accounts/login/", location
    (value,) = parse_qs(parts.query)["next"]
    return value


def assert_sent_to_login(response: Any, then: str) -> None:
    assert response.status_code == 204, response.status_code
    assert response.content == b""  # nothing for htmx to swap into the page
    assert login_next(response["HX-Redirect"]) == then


# (method, URL htmx asks for, the page that asks it)
LIVE_PARTS = [
    (
        "get",
        "/runs/?status=active&q=acme+%26+co&partial=rows",
        "/runs/?status=active&q=acme+%26+co",
    ),
    ("get", f"/runs/{RUN}/?partial=live", f"/runs/{RUN}/"),
    ("get", "/ops/", "/ops/"),
    (
        "get",
        "/reviews/?claim=mine&pipeline=a%26b&poll=1&fp=x",
        "/reviews/?claim=mine&pipeline=a%26b",
    ),
    ("get", "/reviews/7/status/?claim=", "/reviews/7/"),
    ("post", "/reviews/7/claim/", "/reviews/7/"),
    ("post", "/reviews/7/release/", "/reviews/7/"),
]


@pytest.mark.parametrize(("method", "url", "page"), LIVE_PARTS)
def test_an_htmx_request_after_the_session_ended_sends_the_tab_to_log_in(
    method: str, url: str, page: str
) -> None:
    response = getattr(Client(), method)(url, **htmx(page))
    assert_sent_to_login(response, page)
    # Encoded: the page's own query does not leak into the login page's.
    query = parse_qs(urlsplit(response["HX-Redirect"]).query)
    assert set(query) == {"next"}


@pytest.mark.parametrize(("method", "url", "page"), LIVE_PARTS)
def test_without_the_current_page_it_falls_back_to_the_fragments_page(
    method: str, url: str, page: str
) -> None:
    """No ``HX-Current-URL``, or one on another site: the page the fragment or action belongs
    to (without the parameters that select the fragment), never the fragment's own URL."""
    for current in (None, "https://evil.example/phish", f"{HOST}//evil.example/phish"):
        response = getattr(Client(), method)(url, **htmx(current))
        assert_sent_to_login(response, page)


def test_a_form_posted_after_the_session_ended_comes_back_to_its_page() -> None:
    """Without htmx (a plain form, or htmx not loaded): a POST-only URL is no page to come back
    to after logging in (a 405), so ``next`` is the page the form is on."""
    c = Client()
    for url, page in (
        ("/reviews/7/claim/", "/reviews/7/"),
        ("/reviews/7/decide/", "/reviews/7/"),
        ("/reviews/7/reassign/", "/reviews/7/"),
        ("/reviews/bulk/", "/reviews/"),
        (f"/runs/{RUN}/actions/cancel/", f"/runs/{RUN}/"),
    ):
        response = c.post(url, {"outcome": "approve"})
        assert response.status_code == 302
        assert login_next(response["Location"]) == page
    # A page asked for directly is its own way back, as with Django's login_required.
    response = c.get("/runs/?status=failed")
    assert response.status_code == 302
    assert login_next(response["Location"]) == "/runs/?status=failed"


def test_after_logging_in_the_user_lands_on_the_page() -> None:
    """The login page honours the ``next`` given: the page with its filters."""
    User.objects.create_user("ana", password="pw-ana-123", is_staff=True)
    c = Client()
    poll = c.get("/runs/?status=failed&partial=rows", **htmx("/runs/?status=failed"))
    login_page = poll["HX-Redirect"]
    response = c.post(login_page, {"username": "ana", "password": "pw-ana-123"})
    assert response.status_code == 302 and response["Location"] == "/runs/?status=failed"


def test_a_signed_in_users_htmx_requests_are_answered_as_before() -> None:
    staff = User.objects.create_superuser("root", password="pw-root-123")
    c = Client()
    c.force_login(staff)
    rows = c.get("/runs/?partial=rows", **htmx("/runs/"))
    assert rows.status_code == 200 and "HX-Redirect" not in rows
    assert b'id="runs-rows"' in rows.content and b"topbar" not in rows.content
    ops = c.get("/ops/", **htmx("/ops/"))
    assert ops.status_code == 200 and b'id="ops"' in ops.content and b"topbar" not in ops.content
