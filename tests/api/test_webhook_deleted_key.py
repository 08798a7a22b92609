"""A run started with an API key that has since been deleted: its webhook is never signed with
the default secret (the one that signs every keyless run's webhooks, in every tenant). It is not
sent at all, and the delivery fails for good, also when an operator retries it."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, Persona
from tests.api.receiver import Received, receiver
from tests.support import Bell
from workflows import send_event, start
from workflows.core.outbox import deliver_due
from workflows.models import ApiKey, Outbox, WebhookDelivery
from workflows.webhooks import KEY_DELETED, default_secret, retry_now, verify

pytestmark = pytest.mark.django_db(transaction=True)


def _start(api: Api, service: Persona, url: str, pipeline: str = "test.chain") -> str:
    given = {"n": 2} if pipeline == "test.chain" else {}
    r = api.post("/runs", {"pipeline": pipeline, "input": given, "callback_url": url}, as_=service)
    assert r.status_code == 201, r.content
    return str(r.json()["id"])


def _assert_failed_for_good(hook_requests: list[Received]) -> WebhookDelivery:
    assert hook_requests == []  # nothing was sent, under any secret
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed" and delivery.last_error == KEY_DELETED
    assert delivery.attempt_log.get().error == KEY_DELETED
    assert Outbox.objects.get().status == "delivered"  # settled: not tried again
    return delivery


def test_a_key_deleted_before_delivery_fails_the_webhook(
    api: Api, service: Persona, bell: Bell
) -> None:
    with receiver() as hook:
        _start(api, service, hook.url)
        bell.drain()
        ApiKey.objects.filter(pk=service.key.pk).delete()
        assert WebhookDelivery.objects.get().api_key_id is None  # SET_NULL
        deliver_due()
        delivery = _assert_failed_for_good(hook.requests)
        # The admin's "Retry selected deliveries": tried again, refused again, nothing sent.
        assert retry_now(delivery)
        deliver_due()
        assert hook.requests == []
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.last_error == KEY_DELETED


def test_a_key_deleted_before_the_run_ends_fails_the_webhook(
    api: Api, service: Persona, bell: Bell
) -> None:
    with receiver() as hook:
        run_id = _start(api, service, hook.url, pipeline="test.event")
        bell.drain()
        assert not WebhookDelivery.objects.exists()  # waiting for its event
        ApiKey.objects.filter(pk=service.key.pk).delete()
        send_event(run_id, "approved", {"by": "ops"})
        bell.drain()
        delivery = WebhookDelivery.objects.get()
        assert delivery.payload["run"]["status"] == "succeeded"
        assert delivery.api_key_id is None  # the key was gone when the run ended
        deliver_due()
        _assert_failed_for_good(hook.requests)


def test_a_live_key_and_a_keyless_run_are_still_signed_as_before(
    api: Api, service: Persona, bell: Bell
) -> None:
    with receiver() as hook:
        _start(api, service, hook.url)
        start("test.chain", {"n": 1}, callback_url=hook.url)
        bell.drain()
        assert deliver_due() == 2
    by_key, keyless = sorted(hook.requests, key=lambda r: r.json["run"]["output"] == 1)
    assert verify(service.key.webhook_secret, by_key.headers["Sluice-Signature"], by_key.body)
    assert not verify(default_secret(), by_key.headers["Sluice-Signature"], by_key.body)
    assert verify(default_secret(), keyless.headers["Sluice-Signature"], keyless.body)
