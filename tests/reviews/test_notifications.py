"""Reviewer notifications (reviews.notifications): who hears of what, on which channel, once.

E-mail goes to Django's locmem backend (``mail.outbox``); chat webhooks to a real HTTP receiver
on 127.0.0.2, which the address guard counts as public here (SLUICE_WEBHOOK_TREAT_AS_PUBLIC),
as the completion webhook tests do. Outbox rows are delivered by calling the outbox in the test.
Deadlines are tested by passing a later "now", not by sleeping.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reviews import notifications
from reviews.models import Gate, Notification, NotificationPreference
from reviews.services import claim_gate, escalate_due_gates, expire_due_gates, reassign_gate
from tests.api.receiver import receiver
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows.core.outbox import deliver_due
from workflows.models import Outbox, TenantMembership

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

PUBLIC = "127.0.0.2"


@pytest.fixture(autouse=True)
def _notify_settings(settings: Any) -> None:
    settings.SLUICE_NOTIFY_DISPATCH_ON_COMMIT = False
    settings.SLUICE_WEBHOOK_TREAT_AS_PUBLIC = [f"{PUBLIC}/32"]
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
    settings.SLUICE_BASE_URL = "https://sluice.example.com"
    settings.SLUICE_NOTIFY_GROUP_WEBHOOKS = {}


@pytest.fixture
def team(people: People) -> People:
    """ana, ben (reviewers), olga (legal) and lea (leads) with e-mail addresses; gus reviews
    for ``reviewers`` too but works for tenant globex."""
    for user in (people.ana, people.ben, people.olga, people.lea, people.sam):
        user.email = f"{user.username}@example.com"
        user.save(update_fields=["email"])
    gus = User.objects.create_user("gus", email="gus@example.com", password="pw-gus-123")
    gus.groups.add(Group.objects.get(name="reviewers"))
    TenantMembership.objects.create(user=gus, tenant="globex")
    people.gus = gus  # type: ignore[attr-defined]
    return people


def deliver_all(rounds: int = 5) -> int:
    """Deliver everything due, as the outbox beat would (a failed row is retried later)."""
    return sum(deliver_due(limit=10_000) for _ in range(rounds))


def recipients() -> list[str]:
    return sorted(addr for m in mail.outbox for addr in m.to)


def prefs(user: Any, **fields: Any) -> NotificationPreference:
    fields.setdefault("events", notifications.ALL_EVENTS)
    row, _ = NotificationPreference.objects.update_or_create(user=user, defaults=fields)
    return row


# --- gate opened ---------------------------------------------------------------------------------


def test_an_opened_gate_emails_its_group_of_its_tenant_only(bell: Bell, team: People) -> None:
    gate = open_gate(bell, title="Check the <b>renewal</b> clause")
    assert deliver_all() == 2
    # ana and ben (reviewers, default tenant); not olga (legal), not lea (leads), not sam
    # (an operator who sees every gate but is in no group), not gus (reviewers of globex).
    assert recipients() == ["ana@example.com", "ben@example.com"]
    message = mail.outbox[0]
    assert "Check the <b>renewal</b> clause" in message.subject
    assert f"https://sluice.example.com/reviews/{gate.pk}/" in message.body
    deadline = timezone.localtime(gate.deadline).strftime("%Y-%m-%d %H:%M")
    assert deadline in message.body
    html = message.alternatives[0].content  # type: ignore[attr-defined]
    assert "Check the &lt;b&gt;renewal&lt;/b&gt; clause" in html and "<b>renewal" not in html
    # Never the payload: the AI's output stays in Sluice.
    for text in (message.body, html, message.subject):
        assert "Auto-renews for 12 months" not in text and "supplier contract" not in text
    # Each message carries its outbox key as a fixed Message-ID (a retry is recognisable).
    keys = {m.extra_headers["X-Sluice-Key"] for m in mail.outbox}
    assert keys == set(Outbox.objects.filter(kind="notify").values_list("key", flat=True))
    assert all(m.extra_headers["Message-ID"].endswith("@sluice.example.com>") for m in mail.outbox)


def test_delivery_is_idempotent_once_delivered(bell: Bell, team: People) -> None:
    open_gate(bell)
    assert deliver_all() == 2
    row = Outbox.objects.filter(kind="notify").first()
    assert row is not None and row.status == "delivered"
    # A stale deliverer holding the old row object cannot claim it again.
    from workflows.core.outbox import deliver_one

    assert deliver_one(row) is False
    assert len(mail.outbox) == 2


def test_a_gate_of_another_tenant_reaches_only_that_tenant(bell: Bell, team: People) -> None:
    from workflows.models import Run

    gate = open_gate(bell)
    Run.objects.filter(pk=gate.run_id).update(tenant="globex")
    mail.outbox.clear()
    Outbox.objects.all().delete()
    Notification.objects.all().delete()
    gate.refresh_from_db()
    assert notifications.gate_opened(gate) == 1
    deliver_all()
    assert recipients() == ["gus@example.com"]


def test_a_member_who_left_the_group_before_delivery_is_not_told(bell: Bell, team: People) -> None:
    open_gate(bell)
    team.ben.groups.clear()
    deliver_all()
    assert recipients() == ["ana@example.com"]
    assert Outbox.objects.filter(kind="notify", status="delivered").count() == 2


def test_preferences_choose_events_and_channels(bell: Bell, team: People) -> None:
    prefs(team.ana, events=["reminder"])  # not "opened"
    prefs(team.ben, email_enabled=False)  # and no chat: nothing
    open_gate(bell)
    assert Notification.objects.count() == 0
    deliver_all()
    assert mail.outbox == []


# --- chat webhooks --------------------------------------------------------------------------------


def test_chat_webhook_gets_slack_json_through_the_address_guard(bell: Bell, team: People) -> None:
    with receiver(host=PUBLIC) as hook:
        prefs(team.ana, email_enabled=False, chat_enabled=True, chat_webhook_url=hook.url)
        gate = open_gate(bell, title="Refund <!channel> & friends")
        assert deliver_all() == 2
        assert len(hook.requests) == 1
    text = hook.requests[0].json["text"]
    assert set(hook.requests[0].json) == {"text"}
    assert f"<https://sluice.example.com/reviews/{gate.pk}/|" in text
    assert "Refund &lt;!channel&gt; &amp; friends" in text and "<!channel>" not in text
    assert "Auto-renews" not in text
    key = hook.requests[0].headers["Idempotency-Key"]
    assert key.startswith("notify:") and key.endswith(":chat")
    assert recipients() == ["ben@example.com"]


def test_chat_is_retried_with_backoff_until_the_receiver_takes_it(bell: Bell, team: People) -> None:
    with receiver(host=PUBLIC, script=[503]) as hook:
        prefs(team.ana, email_enabled=False, chat_enabled=True, chat_webhook_url=hook.url)
        open_gate(bell)
        deliver_all(1)
        row = Outbox.objects.get(kind="notify", key__endswith=":chat")
        assert row.status == "pending" and row.attempts == 1 and "HTTP 503" in row.last_error
        assert row.next_attempt_at is not None and row.next_attempt_at > timezone.now()
        # Due on the engine's clock (the database's), which the outbox reads: the host's
        # ``now`` may be a fraction of a millisecond ahead of it.
        Outbox.objects.filter(pk=row.pk).update(
            next_attempt_at=timezone.now() - timedelta(seconds=1)
        )
        deliver_all(1)
        row.refresh_from_db()
        assert row.status == "delivered" and row.attempts == 2
        assert [r.headers["Idempotency-Key"] for r in hook.requests] == [row.key, row.key]


def test_a_private_chat_address_is_refused_and_not_retried(bell: Bell, team: People) -> None:
    with receiver(host="127.0.0.1") as hook:
        prefs(team.ana, email_enabled=False, chat_enabled=True, chat_webhook_url=hook.url)
        open_gate(bell)
        deliver_all()
        assert hook.requests == []
    row = Outbox.objects.get(kind="notify", key__endswith=":chat")
    assert row.status == "delivered" and row.attempts == 1  # given up on, not retried forever


def test_a_group_channel_hears_of_its_tenants_gates(
    settings: Any, bell: Bell, team: People
) -> None:
    with receiver(host=PUBLIC) as hook, receiver(host=PUBLIC) as other:
        settings.SLUICE_NOTIFY_GROUP_WEBHOOKS = {
            "reviewers": hook.url,
            "globex:reviewers": other.url,
        }
        prefs(team.ana, email_enabled=False)
        prefs(team.ben, email_enabled=False)
        open_gate(bell, title="Group news")
        deliver_all()
        assert len(hook.requests) == 1 and "Group news" in hook.requests[0].json["text"]
        assert other.requests == []  # globex's channel hears nothing of the default tenant


def test_a_group_whose_name_has_a_colon_still_hears_of_its_gates(
    settings: Any, bell: Bell, team: People
) -> None:
    """Found by review: the channel's tenant was read back out of its key, so a group of the
    default tenant named "ops:leads" was taken for tenant "ops", and its channel heard
    nothing (the outbox row ended delivered)."""
    leads = Group.objects.create(name="ops:leads")
    team.ana.groups.add(leads)
    prefs(team.ana, email_enabled=False)
    with receiver(host=PUBLIC) as hook:
        settings.SLUICE_NOTIFY_GROUP_WEBHOOKS = {"ops:leads": hook.url}
        open_gate(bell, title="Colon group", group="ops:leads")
        deliver_all()
        assert len(hook.requests) == 1 and "Colon group" in hook.requests[0].json["text"]


def test_a_default_tenant_group_named_like_a_tenants_channel_does_not_reach_it(
    settings: Any, bell: Bell, team: People
) -> None:
    """Found by review of the fix above: a default-tenant group literally named
    "globex:reviewers" (gus works for tenant globex) gives tenant globex's channel key; the
    channel must not hear of the default tenant's gates."""
    fake = Group.objects.create(name="globex:reviewers")
    team.ana.groups.add(fake)
    prefs(team.ana, email_enabled=False)
    with receiver(host=PUBLIC) as globex_channel:
        settings.SLUICE_NOTIFY_GROUP_WEBHOOKS = {"globex:reviewers": globex_channel.url}
        open_gate(bell, title="Default tenant's gate", group="globex:reviewers")
        deliver_all()
        assert globex_channel.requests == []


def test_a_digest_leaves_out_gates_that_closed_meanwhile(bell: Bell, team: People) -> None:
    """Found by review: an hourly digest announced a gate someone had decided meanwhile as a
    "New gate to review"."""
    from reviews.services import decide_gate

    prefs(team.ana, mode="digest", digest_minutes=60)
    closed = open_gate(bell, title="Decided meanwhile")
    still = open_gate(bell, title="Still open")
    decide_gate(closed.pk, outcome="approve", actor="ben", user=team.ben)
    end = max(Notification.objects.filter(user=team.ana).values_list("due_at", flat=True))
    notifications.send_digests(now=end)
    deliver_all()
    (message,) = [m for m in mail.outbox if m.to == ["ana@example.com"]]
    assert f"/reviews/{still.pk}/" in message.body
    assert f"/reviews/{closed.pk}/" not in message.body and "Decided meanwhile" not in message.body


# --- reminder, expiry, escalation, reassign -------------------------------------------------------


def test_the_reminder_fires_once_at_the_configured_fraction(
    settings: Any, bell: Bell, team: People
) -> None:
    settings.SLUICE_REVIEW_REMINDER_AT = 0.75
    gate = open_gate(bell, timeout_s=400)
    opened = gate.deadline - timedelta(seconds=400)
    assert gate.remind_at == opened + timedelta(seconds=300)
    deliver_all()
    mail.outbox.clear()
    assert notifications.remind_due(now=opened + timedelta(seconds=299)) == 0
    assert notifications.remind_due(now=opened + timedelta(seconds=301)) == 1
    assert notifications.remind_due(now=opened + timedelta(seconds=350)) == 0  # once
    deliver_all()
    assert recipients() == ["ana@example.com", "ben@example.com"]
    assert all("Reminder" in m.subject for m in mail.outbox)


def test_the_reminder_goes_to_the_claimant_only(settings: Any, bell: Bell, team: People) -> None:
    settings.SLUICE_REVIEW_REMINDER_AT = 0.5
    gate = open_gate(bell, timeout_s=100)
    claim_gate(gate.pk, team.ben)
    deliver_all()
    mail.outbox.clear()
    assert notifications.remind_due(now=gate.deadline) == 1
    deliver_all()
    assert recipients() == ["ben@example.com"]


def test_no_reminder_when_turned_off(settings: Any, bell: Bell, team: People) -> None:
    settings.SLUICE_REVIEW_REMINDER_AT = 0
    gate = open_gate(bell, timeout_s=100)
    assert gate.remind_at is None


def test_expiry_tells_the_claimant(bell: Bell, team: People) -> None:
    gate = open_gate(bell, timeout_s=60, on_timeout="reject")
    claim_gate(gate.pk, team.ana)
    deliver_all()
    mail.outbox.clear()
    assert expire_due_gates(now=gate.deadline + timedelta(seconds=1)) == 1
    deliver_all()
    assert recipients() == ["ana@example.com"]
    assert "Expired" in mail.outbox[0].subject and '"reject"' in mail.outbox[0].body


def test_a_burst_of_claimed_gates_expiring_tells_each_claimant_in_a_few_queries(
    bell: Bell, team: People
) -> None:
    """One notification per claimed gate, to its claimant; the queries grow with the
    claimants, not with the gates (one burst of 2 gates and one of 8, two claimants each)."""
    counted = []
    for n in (2, 8):
        gates = [open_gate(bell, timeout_s=60) for _ in range(n)]
        for i, gate in enumerate(gates):
            claim_gate(gate.pk, team.ana if i % 2 else team.ben)
        deliver_all()
        mail.outbox.clear()
        due = max(g.deadline for g in gates) + timedelta(seconds=1)
        with CaptureQueriesContext(connection) as queries:
            assert expire_due_gates(now=due) == n
        counted.append(len(queries))
        assert Notification.objects.filter(gate__in=gates, event="expired").count() == n
        deliver_all()
        assert recipients() == ["ana@example.com"] * (n // 2) + ["ben@example.com"] * (n // 2)
    assert counted[0] == counted[1]


def test_an_unclaimed_expiry_tells_nobody(bell: Bell, team: People) -> None:
    gate = open_gate(bell, timeout_s=60)
    deliver_all()
    mail.outbox.clear()
    assert expire_due_gates(now=gate.deadline + timedelta(seconds=1)) == 1
    assert deliver_all() == 0 and mail.outbox == []


def test_escalation_tells_the_escalation_group(bell: Bell, team: People) -> None:
    gate = open_gate(bell, escalate_after_s=60, escalate_to="leads")
    deliver_all()
    mail.outbox.clear()
    Gate.objects.filter(pk=gate.pk).update(escalate_at=timezone.now() - timedelta(seconds=1))
    assert escalate_due_gates() == 1
    deliver_all()
    assert recipients() == ["lea@example.com"]
    assert "Escalated" in mail.outbox[0].subject


def test_reassigning_tells_the_new_holder(bell: Bell, team: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, team.ana)
    deliver_all()
    mail.outbox.clear()
    reassign_gate(gate.pk, team.ana, "ben")
    deliver_all()
    assert recipients() == ["ben@example.com"]
    assert "Handed to you" in mail.outbox[0].subject


# --- digest ---------------------------------------------------------------------------------------


def test_digest_folds_a_window_into_one_message_per_user(bell: Bell, team: People) -> None:
    # Daily digests (windows end at midnight UTC, so the test's gates share one).
    prefs(team.ana, mode="digest", digest_minutes=1440)
    with receiver(host=PUBLIC) as hook:
        prefs(
            team.ben,
            mode="digest",
            digest_minutes=1440,
            chat_enabled=True,
            chat_webhook_url=hook.url,
        )
        gates = [open_gate(bell, title=f"Gate {i}") for i in range(5)]
        ends = set(Notification.objects.values_list("due_at", flat=True))
        assert len(ends) == 1
        end = ends.pop()
        assert end is not None and end <= timezone.now() + timedelta(days=1)
        assert notifications.send_digests(now=end - timedelta(seconds=1)) == 0
        assert deliver_all() == 0
        assert notifications.send_digests(now=end) == 2
        assert notifications.send_digests(now=end) == 0
        deliver_all()
        assert recipients() == ["ana@example.com", "ben@example.com"]
        assert len(hook.requests) == 1
        for gate in gates:
            assert f"/reviews/{gate.pk}/" in mail.outbox[0].body
            assert f"/reviews/{gate.pk}/" in hook.requests[0].json["text"]
        assert "5 gate updates" in mail.outbox[0].subject


def test_digest_windows_are_aligned_on_the_clock() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 12, 6, 5, 14, 59, tzinfo=UTC)
    assert notifications.window_end(at, 60) == datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    assert notifications.window_end(at, 15) == datetime(2026, 12, 6, 5, 15, tzinfo=UTC)
    # A row written at the very end of a window belongs to the next one.
    edge = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    assert notifications.window_end(edge, 60) == datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
    assert notifications.window_end(at, 1440) == datetime(2026, 12, 7, 0, 0, tzinfo=UTC)


def test_rows_of_a_later_window_wait_for_it(bell: Bell, team: People) -> None:
    prefs(team.ana, mode="digest", digest_minutes=60)
    open_gate(bell, title="First")
    first = Notification.objects.get(user=team.ana)
    # A row of the next window (as if written after the first window ended).
    open_gate(bell, title="Second")
    second = Notification.objects.filter(user=team.ana).exclude(pk=first.pk).get()
    assert first.due_at is not None
    Notification.objects.filter(pk=second.pk).update(due_at=first.due_at + timedelta(hours=1))
    assert notifications.send_digests(now=first.due_at) == 1
    deliver_all()
    ana = [m for m in mail.outbox if m.to == ["ana@example.com"]]
    assert len(ana) == 1
    second.refresh_from_db()
    # Already folded into the first digest, as a row that was pending when it went out.
    assert (
        second.status == "queued"
        and second.message_key == ana[0].extra_headers["X-Sluice-Key"].rsplit(":", 1)[0]
    )


def test_two_sweepers_at_once_send_one_digest_per_recipient(bell: Bell, team: People) -> None:
    """Review finding: with SKIP LOCKED, a sweeper that met rows of a recipient another
    sweeper was locking folded the rest into a digest of its own, and the skipped rows went
    out as a second digest of the same window. A sweeper now waits for the other's commit,
    then finds those rows queued. (PostgreSQL: SQLite serializes writers.)"""
    import threading

    from django.db import connection, connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    prefs(team.ana, mode="digest", digest_minutes=60)
    for i in range(3):
        open_gate(bell, title=f"Gate {i}")
    rows = list(Notification.objects.filter(user=team.ana).order_by("id"))
    assert len(rows) == 3 and rows[0].due_at is not None
    locked, release = threading.Event(), threading.Event()

    def other_sweeper() -> None:  # holds the middle row, as a sweeper mid-scan does
        try:
            with transaction.atomic():
                list(Notification.objects.select_for_update().filter(pk=rows[1].pk))
                locked.set()
                release.wait(timeout=10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=other_sweeper)
    holder.start()
    assert locked.wait(timeout=10)
    threading.Timer(0.5, release.set).start()
    try:
        notifications.send_digests(now=rows[0].due_at)
    finally:
        release.set()
        holder.join(timeout=10)
    notifications.send_digests(now=rows[0].due_at)
    keys = set(Notification.objects.filter(user=team.ana).values_list("message_key", flat=True))
    assert len(keys) == 1 and "" not in keys
    deliver_all()
    ana = [m for m in mail.outbox if m.to == ["ana@example.com"]]
    assert len(ana) == 1 and "3 gate updates" in ana[0].subject


def test_turning_email_off_stops_what_waits_to_be_sent(bell: Bell, team: People) -> None:
    """A digest waits up to a day: e-mail turned off, or an event unsubscribed from, in the
    meantime is honoured when it leaves (review finding: it was sent anyway)."""
    prefs(team.ana, mode="digest", digest_minutes=1440)
    prefs(team.ben, mode="digest", digest_minutes=1440)
    open_gate(bell, title="Gate")
    end = Notification.objects.values_list("due_at", flat=True).first()
    assert end is not None
    NotificationPreference.objects.filter(user=team.ana).update(email_enabled=False)
    NotificationPreference.objects.filter(user=team.ben).update(events=[])
    notifications.send_digests(now=end)
    deliver_all()
    assert recipients() == []


# --- clocks ---------------------------------------------------------------------------------------


def test_a_host_clock_ahead_does_not_hold_notifications_back(
    bell: Bell, team: People, skew: Any
) -> None:
    """The outbox judges rows on the engine's clock (the database's): rows stamped with the
    host's clock, a minute ahead, waited that minute (found by review: every notification was
    held back by the web or worker host's lead)."""
    skew(60)
    open_gate(bell)
    assert deliver_all() == 2
    assert recipients() == ["ana@example.com", "ben@example.com"]
