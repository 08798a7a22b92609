"""Admin actions ask for the permission they need, not just the list's view permission.

Before, staff who could only view API keys could rotate one (the success message showed the new
secret, which then worked on the API) or switch keys off, and staff who could only view gates
could free another reviewer's claim.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from reviews.models import Gate
from reviews.services import claim_gate
from tests.security.scene import Scene, grant, user
from workflows.models import ApiKey

pytestmark = [pytest.mark.django_db]


def staff(name: str, *perms: str) -> Client:
    c = Client()
    c.force_login(grant(user(name, is_staff=True), *perms))
    return c


def act(c: Client, url: str, action: str, obj: Any) -> Any:
    return c.post(url, {"action": action, "_selected_action": [str(obj.pk)], "index": "0"})


def test_it_refuses_key_rotation_to_staff_who_may_only_view_keys(scene: Scene) -> None:
    key, raw = scene.keys["key_read"]
    before = ApiKey.objects.get(pk=key.pk).key_hash
    c = staff("kim", "workflows.view_apikey")
    assert c.get("/admin/workflows/apikey/").status_code == 200
    response = act(c, "/admin/workflows/apikey/", "rotate_keys", key)
    assert "New key for" not in response.content.decode()
    assert ApiKey.objects.get(pk=key.pk).key_hash == before
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    assert api.get("/api/runs").status_code == 200  # the old key still works


def test_it_refuses_key_deactivation_to_staff_who_may_only_view_keys(scene: Scene) -> None:
    key, _ = scene.keys["key_read"]
    act(staff("kim", "workflows.view_apikey"), "/admin/workflows/apikey/", "deactivate_keys", key)
    assert ApiKey.objects.get(pk=key.pk).is_active


def test_it_rotates_keys_for_staff_who_may_change_them(scene: Scene) -> None:
    key, raw = scene.keys["key_read"]
    c = staff("kim", "workflows.view_apikey", "workflows.change_apikey")
    response = act(c, "/admin/workflows/apikey/", "rotate_keys", key)
    assert response.status_code == 302
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/runs").status_code == 401


def test_a_keys_webhook_secret_shows_only_to_staff_who_may_change_keys(scene: Scene) -> None:
    """With the secret a viewer could sign forged completion webhooks to the key's service."""
    key, _ = scene.keys["key_read"]
    secret = ApiKey.objects.get(pk=key.pk).webhook_secret
    assert secret
    url = f"/admin/workflows/apikey/{key.pk}/change/"
    viewer = staff("kim", "workflows.view_apikey").get(url)
    assert viewer.status_code == 200
    assert secret not in viewer.content.decode()
    assert "it takes the permission to change API keys" in viewer.content.decode()
    changer = staff("max", "workflows.view_apikey", "workflows.change_apikey").get(url)
    assert secret in changer.content.decode()


def test_it_refuses_to_free_claims_for_staff_who_may_only_view_gates(scene: Scene) -> None:
    gate = scene.gates["gate_a"]
    claim_gate(gate.pk, scene.users["rev_a"])
    act(staff("gil", "reviews.view_gate"), "/admin/reviews/gate/", "release_claims", gate)
    assert Gate.objects.get(pk=gate.pk).claimed_by == scene.users["rev_a"]
    act(
        staff("gia", "reviews.view_gate", "reviews.change_gate"),
        "/admin/reviews/gate/",
        "release_claims",
        gate,
    )
    assert Gate.objects.get(pk=gate.pk).claimed_by is None


def test_it_refuses_webhook_retries_to_staff_who_may_only_view_deliveries(scene: Scene) -> None:
    """Sending a delivery again calls out: the change permission, not the view one."""
    from workflows.models import Outbox, WebhookDelivery

    delivery = WebhookDelivery.objects.create(
        run=scene.runs["run_a"], url="https://hooks.example.com/x", payload={}, status="failed"
    )
    Outbox.objects.create(
        run=scene.runs["run_a"], kind="webhook", key=str(delivery.pk), payload={}, status="dead"
    )
    url = "/admin/workflows/webhookdelivery/"
    act(staff("wes", "workflows.view_webhookdelivery"), url, "retry_deliveries", delivery)
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "failed"
    c = staff("wyn", "workflows.view_webhookdelivery", "workflows.change_webhookdelivery")
    act(c, url, "retry_deliveries", delivery)
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "pending"
