"""Completion webhooks: written with the run's end, signed, retried, every attempt recorded.

The receiver is a real HTTP server on 127.0.0.1; the outbox is driven by calling
``deliver_due`` (what the ``workflows.deliver_outbox`` beat task does), and backoff is skipped
by writing past ``next_attempt_at`` timestamps, never by sleeping.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from tests.api.conftest import Api, Persona
from tests.api.receiver import receiver
from tests.support import Bell
from workflows import cancel, start
from workflows.core.outbox import deliver_due
from workflows.models import Outbox, WebhookAttempt, WebhookDelivery
from workflows.webhooks import default_secret, deliver_webhook_task, sign, verify

pytestmark = pytest.mark.django_db(transaction=True)


def _make_due() -> None:
    earlier = timezone.now() - timedelta(seconds=1)
    Outbox.objects.filter(status="pending").update(next_attempt_at=earlier)


def _start_via_api(api: Api, service: Persona, url: str, **input: Any) -> str:
    r = api.post(
        "/runs",
        {"pipeline": "test.chain", "input": input or {"n": 2}, "callback_url": url},
        as_=service,
    )
    assert r.status_code == 201, r.content
    return str(r.json()["id"])


def test_it_posts_a_signed_run_summary_when_the_run_ends(
    api: Api, service: Persona, bell: Bell
) -> None:
    with receiver() as hook:
        run_id = _start_via_api(api, service, hook.url)
        bell.drain()
        delivery = WebhookDelivery.objects.get(run_id=run_id)
        assert delivery.status == "pending" and delivery.api_key_id == service.key.pk
        assert Outbox.objects.get(key=str(delivery.pk)).kind == "webhook"
        assert deliver_due() == 1
    (req,) = hook.requests
    assert req.path == "/hooks/sluice"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Idempotency-Key"] == str(delivery.pk)
    body = req.json
    assert body["id"] == str(delivery.pk) and body["type"] == "run.finished"
    assert body["run"]["id"] == run_id and body["run"]["status"] == "succeeded"
    assert body["run"]["output"] == 2 and body["run"]["pipeline"] == "test.chain"
    assert verify(service.key.webhook_secret, req.headers["Sluice-Signature"], req.body)
    assert not verify("another secret", req.headers["Sluice-Signature"], req.body)
    assert not verify(service.key.webhook_secret, req.headers["Sluice-Signature"], req.body + b" ")
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 1
    (attempt,) = delivery.attempt_log.all()
    assert attempt.succeeded and attempt.status_code == 200 and attempt.latency_ms is not None


def test_a_receiver_failing_twice_then_succeeding_gets_one_delivery_id(
    api: Api,
    service: Persona,
    bell: Bell,
) -> None:
    with receiver(script=[500, 503]) as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        assert deliver_due() == 0
        assert deliver_due() == 0  # not due yet: the outbox backs off
        _make_due()
        assert deliver_due() == 0
        _make_due()
        assert deliver_due() == 1
        _make_due()
        assert deliver_due() == 0  # delivered: nothing more is sent
    assert len(hook.requests) == 3
    ids = {r.json["id"] for r in hook.requests}
    keys = {r.headers["Idempotency-Key"] for r in hook.requests}
    delivery = WebhookDelivery.objects.get()
    assert ids == keys == {str(delivery.pk)}
    assert len({r.body for r in hook.requests}) == 1  # the very same body each time
    attempts = list(delivery.attempt_log.order_by("number"))
    assert [(a.number, a.status_code, a.succeeded) for a in attempts] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert attempts[0].error == "HTTP 500" and "try later" in attempts[0].response_excerpt
    assert WebhookAttempt.objects.filter(succeeded=True).count() == 1
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 3
    assert delivery.last_status_code == 200 and delivery.last_error == ""


def test_it_records_network_errors_and_retries(api: Api, service: Persona, bell: Bell) -> None:
    with receiver() as hook:
        closed_url = hook.url
    _start_via_api(api, service, closed_url)  # nothing listens there any more
    bell.drain()
    assert deliver_due() == 0
    delivery = WebhookDelivery.objects.get()
    (attempt,) = delivery.attempt_log.all()
    assert attempt.status_code is None and "ConnectError" in attempt.error
    row = Outbox.objects.get(key=str(delivery.pk))
    assert row.status == "pending" and row.next_attempt_at > timezone.now()


def test_it_gives_up_after_the_retry_window(api: Api, service: Persona, bell: Bell) -> None:
    with receiver(script=[500]) as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        Outbox.objects.update(created_at=timezone.now() - timedelta(hours=25))
        deliver_due()
    assert Outbox.objects.get().status == "dead"
    assert WebhookDelivery.objects.get().status == "failed"


def test_it_writes_the_webhook_for_failed_and_canceled_runs(bell: Bell) -> None:
    failed = start("test.refuse", {}, callback_url="https://hooks.example.com/a")
    bell.drain()
    waiting = start("test.event", {}, callback_url="https://hooks.example.com/b")
    bell.drain()
    cancel(waiting.pk)
    statuses = {d.run_id: d.payload["run"]["status"] for d in WebhookDelivery.objects.all()}
    assert statuses == {failed.pk: "failed", waiting.pk: "canceled"}


def test_no_webhook_without_a_callback_url(bell: Bell) -> None:
    start("test.chain", {"n": 1})
    bell.drain()
    assert not WebhookDelivery.objects.exists() and not Outbox.objects.exists()


def test_the_webhook_rolls_back_with_the_runs_terminal_transaction(bell: Bell) -> None:
    run = start("test.event", {}, callback_url="https://hooks.example.com/x")
    bell.drain()
    with pytest.raises(RuntimeError), transaction.atomic():
        cancel(run.pk)
        assert WebhookDelivery.objects.count() == 1
        raise RuntimeError("the cancel's transaction fails after all")
    assert not WebhookDelivery.objects.exists() and not Outbox.objects.exists()


def test_a_run_started_without_a_key_is_signed_with_the_default_secret(bell: Bell) -> None:
    with receiver() as hook:
        start("test.chain", {"n": 1}, callback_url=hook.url)
        bell.drain()
        deliver_due()
    (req,) = hook.requests
    assert verify(default_secret(), req.headers["Sluice-Signature"], req.body)


def test_it_refuses_to_call_a_private_address_at_delivery(
    api: Api, service: Persona, bell: Bell, settings: Any
) -> None:
    with receiver() as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
        deliver_due()
    assert hook.requests == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "refused"
    assert delivery.attempt_log.get().error.startswith("refused:")


def test_it_dispatches_delivery_right_after_commit(
    api: Api, service: Persona, bell: Bell, settings: Any, monkeypatch: Any
) -> None:
    settings.SLUICE_WEBHOOK_DISPATCH_ON_COMMIT = True
    dispatched: list[int] = []
    monkeypatch.setattr("workflows.webhooks.dispatch", dispatched.append)
    with receiver() as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        (outbox_id,) = dispatched
        assert deliver_webhook_task(outbox_id) is True
        assert deliver_webhook_task(outbox_id) is False  # already delivered
    assert len(hook.requests) == 1


def test_signatures_cover_the_timestamp_and_expire() -> None:
    body = json.dumps({"id": "x"}).encode()
    now = int(time.time())
    header = sign("s3cret", now, body)
    assert header.startswith(f"t={now},v1=")
    assert verify("s3cret", header, body)
    assert not verify("s3cret", sign("s3cret", now - 3600, body), body)
    assert not verify("s3cret", "v1=deadbeef", body)
    assert not verify("s3cret", "garbage", body)


# --- what a receiver answers is read bounded ------------------------------------------------------


def test_a_huge_answer_is_not_read_into_memory(api: Api, service: Persona, bell: Bell) -> None:
    """Only the excerpt is read: a 50 MB answer (300 MB in the review) cost that in memory."""
    import tracemalloc

    with receiver(body=b"x" * 50_000_000) as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        tracemalloc.start()
        try:
            assert deliver_due() == 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 5_000_000, peak
    (attempt,) = WebhookAttempt.objects.all()
    assert attempt.succeeded and attempt.response_excerpt == "x" * 500


def test_a_receiver_dripping_its_answer_holds_the_delivery_no_longer_than_the_timeout(
    api: Api, service: Persona, bell: Bell, settings: Any
) -> None:
    """Each read of a drip arrives in time, so the per-read timeout never fires: the body is
    read only until SLUICE_WEBHOOK_TIMEOUT has passed, and the status decides."""
    settings.SLUICE_WEBHOOK_TIMEOUT = 1.0
    with receiver(body=b'{"ok": true, "pad": "' + b"." * 200 + b'"}', drip_seconds=0.05) as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        began = time.monotonic()
        assert deliver_due() == 1
        took = time.monotonic() - began
    assert took < 3.0, took  # not the ~11 s the drip lasts
    assert len(hook.requests) == 1
    (attempt,) = WebhookAttempt.objects.all()
    assert attempt.succeeded and attempt.response_excerpt.startswith('{"ok": true')


def test_a_nul_in_the_answer_is_kept_escaped_and_not_sent_again(
    api: Api, service: Persona, bell: Bell
) -> None:
    """PostgreSQL refuses a NUL in text: recording the attempt failed, and the outbox sent the
    webhook again though the receiver had it."""
    with receiver(body=b'{"ok": true, "x": "\x00"}') as hook:
        _start_via_api(api, service, hook.url)
        bell.drain()
        assert deliver_due() == 1
        _make_due()
        assert deliver_due() == 0
    assert len(hook.requests) == 1
    (attempt,) = WebhookAttempt.objects.all()
    assert attempt.succeeded and attempt.response_excerpt == '{"ok": true, "x": "\\x00"}'
    assert WebhookDelivery.objects.get().status == "delivered"
