"""A user's tenant is edited on the user's admin page (an inline), and the list shows it."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.security.scene import Scene
from workflows.models import TenantMembership

pytestmark = [pytest.mark.django_db]


def test_an_admin_sets_a_users_tenant_on_the_user_page(scene: Scene) -> None:
    c = Client()
    c.force_login(scene.users["superuser"])
    bob = scene.users["rev_b"]
    url = f"/admin/auth/user/{bob.pk}/change/"
    html = c.get(url).content.decode()
    assert 'name="tenant_membership-0-tenant"' in html and 'value="acme"' in html
    membership = TenantMembership.objects.get(user=bob)
    form = {
        "username": bob.username,
        "is_active": "on",
        "groups": [g.pk for g in bob.groups.all()],
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "tenant_membership-TOTAL_FORMS": "1",
        "tenant_membership-INITIAL_FORMS": "1",
        "tenant_membership-MIN_NUM_FORMS": "0",
        "tenant_membership-MAX_NUM_FORMS": "1",
        "tenant_membership-0-id": str(membership.pk),
        "tenant_membership-0-user": str(bob.pk),
        "tenant_membership-0-tenant": "globex",
        # The page's other inline (single sign-on identities, config.oidc): none.
        "oidc_identities-TOTAL_FORMS": "0",
        "oidc_identities-INITIAL_FORMS": "0",
    }
    response = c.post(url, form)
    assert response.status_code == 302, re.findall(
        r'class="errorlist[^"]*">(.*?)</ul>', response.content.decode()
    )
    assert TenantMembership.objects.get(user=bob).tenant == "globex"
    listing = c.get("/admin/auth/user/?tenant_membership__tenant=globex").content.decode()
    assert "bob" in listing and "alice" not in listing
