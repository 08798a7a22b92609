"""Notifications on real Celery workers (PostgreSQL + Redis): a worker SIGKILLed in the middle
of a chat delivery leaves no duplicate.

Three gates open on a real worker; ana hears of each on her chat webhook (a receiver on
127.0.0.2, counted as public as in the webhook tests). The receiver holds the first request
(and any other that arrives before the kill) without answering; the test SIGKILLs the whole
worker while they are in flight. Each row's fenced claim runs out (SLUICE_OUTBOX_CLAIM_SECONDS),
a second worker fed by the beat retries it with the same Idempotency-Key, and every message is
answered exactly once: one outbox row per notification, each delivered once, the killed attempt
counted.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reviews.models import Gate, Notification, NotificationPreference
from tests.live import wait_until
from tests.reviews.conftest import People
from workflows import start
from workflows.models import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MODULES = "tests.sample_workflows,tests.reviews.workflows"
PUBLIC = "127.0.0.2"


class HoldingReceiver:
    """Records every POST; holds every one that arrives before ``release`` unanswered until then
    (or 60 s), so the killed worker has no delivery that was answered but not yet recorded (one
    such would go out twice, by design: a receiver deduplicates by the idempotency key)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answered: list[str] = []
        self.held: list[str] = []
        self.first_in = threading.Event()
        self.release = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key", "")
                with lock:
                    outer.received.append({"key": key, "text": json.loads(body)["text"]})
                    hold = not outer.release.is_set()
                    if hold:
                        outer.held.append(key)
                if hold:
                    outer.first_in.set()
                    outer.release.wait(60)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    self.wfile.flush()
                except OSError:
                    return  # The sender is gone (killed): it never heard this answer.
                if not hold:
                    with lock:
                        outer.answered.append(key)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((PUBLIC, 0), Handler)
        self.url = f"http://{PUBLIC}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_worker_killed_mid_delivery_sends_no_duplicate(live: Any, people: People) -> None:
    hook = HoldingReceiver()
    try:
        NotificationPreference.objects.create(
            user=people.ana,
            email_enabled=False,
            chat_enabled=True,
            chat_webhook_url=hook.url,
            events=["opened"],
        )
        env = {
            "SLUICE_WORKFLOW_MODULES": MODULES,
            "SLUICE_WEBHOOK_TREAT_AS_PUBLIC": f"{PUBLIC}/32",
            "SLUICE_OUTBOX_CLAIM_SECONDS": "4",
            "SLUICE_WEBHOOK_TIMEOUT": "30",
            "SLUICE_BASE_URL": "https://sluice.example.com",
        }
        first = live.worker("w1", concurrency=2, **env)
        for i in range(3):
            start("test.review", {"title": f"Contract {i}"})
        wait_until(lambda: Gate.objects.filter(status="open").count() == 3, 60, message="gates")
        assert hook.first_in.wait(60), "no delivery reached the receiver"
        held = hook.received[0]["key"]
        # The worker is inside that delivery, its claim taken: kill it, every process at once.
        live.kill(first, signal.SIGKILL)
        first.wait(10)
        row = Outbox.objects.get(key=held)
        assert row.status == "pending" and row.attempts == 1 and row.lease_expires_at is not None
        hook.release.set()  # (the held request now finds its sender gone)
        # A second worker and the beat take over once the claim ran out.
        live.worker("w2", concurrency=1, **env)
        live.beat()
        wait_until(
            lambda: Outbox.objects.filter(kind="notify", status="delivered").count() == 3,
            60,
            message="every notification delivered",
        )
    finally:
        hook.close()
    rows = list(Outbox.objects.filter(kind="notify"))
    assert len(rows) == 3 == Notification.objects.count()
    assert {r.key for r in rows} == {f"notify:{n.pk}:chat" for n in Notification.objects.all()}
    # Every message was answered exactly once; the killed attempt's retry carried its key.
    assert Counter(hook.answered) == {r.key: 1 for r in rows}
    # Each delivery the killed worker had in flight (the first, and any that reached the
    # receiver before the kill) went out once more from the second worker; the rest once.
    sent = Counter(r["key"] for r in hook.received)
    assert held in hook.held
    assert sent == {r.key: 2 if r.key in hook.held else 1 for r in rows}
    # The killed attempt counts (another row the killed worker had claimed may count one too).
    assert Outbox.objects.get(key=held).attempts >= 2
    print(
        "attempts per row:",
        {r.key: r.attempts for r in rows},
        "errors:",
        [r.last_error for r in rows],
    )
