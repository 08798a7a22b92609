"""A NUL (``%00``) in a query parameter or a header is a 400, never a 500.

PostgreSQL text cannot hold NUL: before the check in ``config.middleware`` these requests
reached a filter and the database driver raised (a 500 on PostgreSQL; SQLite let them by).
"""

from __future__ import annotations

import pytest
from django.test import Client

from tests.security.scene import Scene
from workflows.keys import find_key

pytestmark = [pytest.mark.django_db]


@pytest.mark.parametrize(
    ("persona", "url"),
    [
        ("rev_a", "/reviews/?pipeline=%00"),
        ("rev_a", "/reviews/?pipeline=a%00b&unclaimed=1"),
        ("superuser", "/admin/reviews/gate/?status__exact=%00"),
        ("superuser", "/admin/reviews/gate/?pipeline=%00"),
        ("superuser", "/admin/workflows/run/?status__exact=%00"),
        ("superuser", "/admin/auth/user/?tenant_membership__tenant=%00"),
    ],
)
def test_it_answers_a_nul_in_the_query_with_the_styled_400_page(
    scene: Scene, persona: str, url: str
) -> None:
    c = Client(raise_request_exception=False)
    c.force_login(scene.users[persona])
    response = c.get(url)
    assert response.status_code == 400, url
    body = response.content.decode()
    assert 'data-testid="error-page"' in body and "Error 400" in body
    assert "NUL" in body


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer a\x00b"},
        {"Authorization": "Bearer sk_00000000.\x00"},
        {"X-API-Key": "sk_\x00.secret"},
    ],
)
def test_it_answers_a_nul_in_an_api_key_header_in_the_api_error_shape(
    scene: Scene, headers: dict[str, str]
) -> None:
    c = Client(raise_request_exception=False, headers=headers)
    response = c.get("/api/runs")
    # The API's answer to a bad request parameter (as ninja's validation gives elsewhere).
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "NUL" in response.json()["error"]["message"]


@pytest.mark.parametrize("raw", ["a\x00b.c", "sk_\x00.secret", "sk_00000000.x\x00y"])
def test_it_refuses_a_key_with_a_nul_whatever_sends_it(scene: Scene, raw: str) -> None:
    """find_key itself, as any caller reaches it (the middleware is one layer, not the only)."""
    assert find_key(raw) is None


def test_it_still_answers_clean_requests(scene: Scene) -> None:
    c = Client()
    c.force_login(scene.users["rev_a"])
    assert c.get("/reviews/?pipeline=test.review").status_code == 200
    key = Client(headers={"Authorization": f"Bearer {scene.keys['key_read'][1]}"})
    assert key.get("/api/runs").status_code == 200
