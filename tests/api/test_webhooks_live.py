"""Completion webhooks end to end: a run started over the API, finished by a real Celery
worker, its webhook delivered by the worker right after commit and retried by the beat's
outbox delivery when the receiver fails."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, Persona
from tests.api.receiver import receiver
from tests.live import wait_until
from workflows.models import WebhookDelivery
from workflows.webhooks import verify

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_delivers_and_the_beat_retries(live: Any, api: Api, service: Persona) -> None:
    live.worker(SLUICE_WEBHOOK_ALLOW_PRIVATE="1")
    live.beat()
    with receiver(script=[503]) as hook:
        r = api.post(
            "/runs",
            {"pipeline": "test.chain", "input": {"n": 3}, "callback_url": hook.url},
            as_=service,
        )
        assert r.status_code == 201
        wait_until(
            lambda: WebhookDelivery.objects.filter(status="delivered").exists(),
            60,
            message="the webhook to be delivered",
        )
    delivery = WebhookDelivery.objects.get()
    assert [a.status_code for a in delivery.attempt_log.order_by("number")] == [503, 200]
    assert len(hook.requests) == 2
    assert {req.headers["Idempotency-Key"] for req in hook.requests} == {str(delivery.pk)}
    final = hook.requests[-1]
    assert final.json["run"]["status"] == "succeeded" and final.json["run"]["output"] == 3
    assert verify(service.key.webhook_secret, final.headers["Sluice-Signature"], final.body)
