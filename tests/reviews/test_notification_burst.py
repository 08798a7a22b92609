"""A burst of 1,000 new gates under digest mode: one message per user per interval, not 1,000.

The gates are opened through the engine (1,000 runs, each stopping at a gate); ana and ben
(reviewers) take a 60-minute digest by e-mail, ben by chat too; olga reviews another group and
gus the same group in another tenant, so neither hears of them. The figures are printed (run
with ``-s``) for docs/reviews.md.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from reviews import notifications
from reviews.models import Gate, Notification
from tests.api.receiver import receiver
from tests.reviews.conftest import People
from tests.reviews.test_notifications import PUBLIC, deliver_all, prefs
from tests.support import Bell
from workflows import start
from workflows.models import Outbox

# Not a "core" test: it runs once, in the full suite, not again in the SQLite core pass.
pytestmark = [pytest.mark.django_db(transaction=True)]

BURST = 1000

# The fixtures of test_notifications (settings, a team with e-mail addresses and a tenant).
from tests.reviews.test_notifications import _notify_settings, team  # noqa: E402, F401, F811


def test_a_burst_of_1000_gates_sends_one_digest_per_user_per_interval(
    bell: Bell,
    team: People,  # noqa: F811
    capsys: Any,
) -> None:
    with receiver(host=PUBLIC) as hook:
        prefs(team.ana, mode="digest", digest_minutes=60)
        prefs(
            team.ben, mode="digest", digest_minutes=60, chat_enabled=True, chat_webhook_url=hook.url
        )
        prefs(team.gus, mode="digest", digest_minutes=60)  # type: ignore[attr-defined]
        began = timezone.now()
        t0 = time.perf_counter()
        for i in range(BURST):
            start("test.review", {"title": f"Burst gate {i}"})
            if i % 100 == 99:
                bell.drain()
        bell.drain()
        opened = time.perf_counter() - t0
        assert Gate.objects.filter(status="open").count() == BURST
        assert Notification.objects.count() == 2 * BURST  # ana and ben; not olga, not gus
        # Windows are aligned on the clock (hourly here): the burst normally falls in one; if
        # it straddled the hour, one digest per user per window it touched.
        ends = Notification.objects.filter(due_at__isnull=False).values_list("due_at", flat=True)
        windows: list[Any] = sorted(set(ends))
        assert Notification.objects.filter(due_at__isnull=True).count() == 0
        assert 1 <= len(windows) <= 2 and all(w > began for w in windows)
        # Before a window ends nothing is sent.
        assert notifications.send_digests(now=windows[0] - timedelta(seconds=1)) == 0
        assert deliver_all() == 0 and mail.outbox == [] and hook.requests == []
        # Each window that ends: one digest per user.
        t1 = time.perf_counter()
        for number, window in enumerate(windows, 1):
            assert notifications.send_digests(now=window) == 2
            assert notifications.send_digests(now=window) == 0
            deliver_all()
            emails = Counter(addr for m in mail.outbox for addr in m.to)
            assert emails == {"ana@example.com": number, "ben@example.com": number}
            assert len(hook.requests) == number
        delivered = time.perf_counter() - t1
        digest = mail.outbox[0]
        if len(windows) == 1:
            assert f"{BURST} gate updates" in digest.subject
            assert "and 950 more" in digest.body  # 50 listed, the rest counted
        assert "https://sluice.example.com/reviews/" in digest.body
        assert Notification.objects.filter(status="pending").count() == 0
        assert Outbox.objects.filter(kind="notify").exclude(status="delivered").count() == 0
        sent_for_burst = len(mail.outbox) + len(hook.requests)
    with capsys.disabled():
        print(
            f"\nburst: {BURST} gates opened in {opened:.1f}s ({connection.vendor}, engine "
            "included); "
            f"{2 * BURST} notifications written; {len(windows)} digest window(s); messages sent "
            f"for the burst: {sent_for_burst} (ana 1 e-mail, ben 1 e-mail + 1 chat per window; "
            f"immediate mode would send {3 * BURST}); digests delivered in {delivered:.2f}s"
        )
