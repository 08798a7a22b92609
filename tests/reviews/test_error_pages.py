"""Styled 403/404/500 pages in the product's layout (issue 8, item 7), with DEBUG off.

Each page keeps the top bar, says what happened and what to do next: back to the queue, and
log in as someone else when the account lacks access.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.template import Context, Template
from django.template.loader import get_template
from django.test import Client, override_settings

from tests.reviews.conftest import People

pytestmark = [pytest.mark.core, pytest.mark.django_db]


def assert_in_layout(body: str) -> None:
    assert '<header class="topbar">' in body and "sluice/sluice.css" in body
    assert 'data-testid="error-page"' in body
    assert 'href="/reviews/"' in body  # back to the queue


@override_settings(DEBUG=False)
def test_it_shows_a_styled_403_with_a_way_to_switch_accounts(people: People) -> None:
    c = Client()
    c.force_login(people.otto)  # logged in, in no reviewer group
    response = c.get("/reviews/")
    assert response.status_code == 403
    body = response.content.decode()
    assert_in_layout(body)
    assert "You are not allowed to open this page" in body
    assert "You are not in a reviewer group." in body  # the reason the view gave
    assert "otto" in body
    # "Log in as someone else": log out, then the login page comes back to this address.
    assert 'action="/accounts/logout/"' in body
    assert 'name="next" value="/accounts/login/?next=/reviews/"' in body
    assert 'data-testid="switch-user"' in body


@override_settings(DEBUG=False)
def test_it_shows_a_styled_404_for_a_missing_page(people: People) -> None:
    c = Client()
    c.force_login(people.ana)
    for url in ("/no-such-page/", "/reviews/999999/"):
        response = c.get(url)
        assert response.status_code == 404, url
        body = response.content.decode()
        assert_in_layout(body)
        assert "There is nothing here" in body and url in body
        assert 'href="/runs/"' in body and 'data-testid="switch-user"' in body
        assert "Review queue" in body  # the main navigation of a logged-in user


@override_settings(DEBUG=False)
def test_it_shows_a_login_link_on_a_404_for_anonymous_visitors() -> None:
    response = Client().get("/no-such-page/")
    assert response.status_code == 404
    body = response.content.decode()
    assert_in_layout(body)
    assert 'href="/accounts/login/?next=/no-such-page/"' in body


@override_settings(DEBUG=False, ROOT_URLCONF="tests.error_urls")
def test_it_shows_a_styled_500_when_a_view_fails(people: People) -> None:
    c = Client(raise_request_exception=False)
    c.force_login(people.ana)
    response = c.get("/boom/")
    assert response.status_code == 500
    body = response.content.decode()
    assert_in_layout(body)
    assert "Something went wrong on our side" in body
    assert "a bug in a view" not in body  # no internals leak


def test_the_500_page_renders_without_a_request_or_database(
    django_assert_num_queries: Any,
) -> None:
    # Django renders 500.html with an empty context: no request, no user, no context processors.
    with django_assert_num_queries(0):
        body = get_template("500.html").render()
    assert "Something went wrong on our side" in body and 'href="/reviews/"' in body
    assert Template("{% include '500.html' %}").render(Context()) == body


@override_settings(DEBUG=False)
def test_a_csrf_failure_gets_the_styled_page(people: People) -> None:
    c = Client(enforce_csrf_checks=True)
    c.force_login(people.ana)
    response = c.post("/reviews/1/claim/")
    assert response.status_code == 403
    body = response.content.decode()
    assert_in_layout(body)
    assert "This form could not be sent" in body
