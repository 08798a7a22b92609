"""Telling reviewers about gates: by e-mail and chat webhooks, at once or in a digest.

Events and who hears of them (each recipient only about gates of their own tenant, by the same
rule as the queue, ``reviews.services.gates_visible_to``):

- ``opened``: the members of the gate's group, and the group's chat channel;
- ``reminder`` (``SLUICE_REVIEW_REMINDER_AT`` of the time gone): the claimant, or, when nobody
  claimed it, the group (and the escalation group once it escalated) and its channel;
- ``expired``: the claimant;
- ``escalated``: the members of the escalation group, and its channel;
- ``reassigned``: the reviewer the gate was handed to.

Durability. A ``Notification`` row per recipient is written in the transaction that changed
the gate (opened, expired, escalated, reassigned; the reminder sweep's own transaction sets
``reminded_at``), so a notification exists exactly when the change committed. Immediate ones
get their outbox rows (one per channel, key ``notify:<id>:<channel>``) in that transaction;
digest ones wait as ``pending`` rows with ``due_at``, the end of their digest window (windows
of the recipient's interval, aligned on the clock: ``window_end``), and the beat sweep
(``send_digests``) folds every pending row of a recipient into one message, in
the transaction that marks them queued and writes its outbox rows (key
``digest:<recipient>:<first id>:<channel>``). The outbox delivers with a fenced claim (two
deliverers never send the same row at once; a killed one's claim runs out and the row is
retried with backoff), and each message carries its key (``Idempotency-Key`` header on chat,
a fixed ``Message-ID`` on e-mail) so a receiver recognises the retry of an attempt whose
answer was lost.

Content: the gate's title, its run's title (``subject``), pipeline, deadline and an absolute
link (``SLUICE_BASE_URL``); never the payload (LLM output: untrusted, maybe sensitive) nor the
excerpt. HTML e-mail is escaped by the template; chat text escapes Slack's ``& < >``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from reviews.models import (
    Gate,
    GateStatus,
    Notification,
    NotificationPreference,
    NotificationStatus,
    NotifyEvent,
    NotifyMode,
)
from workflows import webhooks
from workflows.core import clock, outbox
from workflows.core.doorbell import send_tasks
from workflows.models import Outbox, OutboxStatus, Run

log = logging.getLogger(__name__)

OUTBOX_KIND = "notify"
EMAIL = "email"
CHAT = "chat"
ALL_EVENTS = [e.value for e in NotifyEvent]
# The events a group chat channel hears of (the rest are about one person).
GROUP_EVENTS = {NotifyEvent.OPENED, NotifyEvent.REMINDER, NotifyEvent.ESCALATED}
# A digest lists at most this many gates one by one; the rest are counted.
DIGEST_LISTED = 50
DIGEST_MINUTES_MAX = 24 * 60


class NotificationFailed(Exception):
    """A channel did not take the message; the outbox retries."""


# --- preferences --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prefs:
    email: bool = True
    chat: bool = False
    chat_url: str = ""
    digest_minutes: int = 0  # 0: immediate
    events: frozenset[str] = frozenset(ALL_EVENTS)

    @classmethod
    def of(cls, row: NotificationPreference | None) -> Prefs:
        """A user's preferences; without a row, the defaults: e-mail, at once, every event."""
        if row is None:
            return cls()
        digest = row.mode == NotifyMode.DIGEST
        return cls(
            email=row.email_enabled,
            chat=row.chat_enabled and bool(row.chat_webhook_url),
            chat_url=row.chat_webhook_url,
            digest_minutes=max(1, row.digest_minutes) if digest else 0,
            events=frozenset(str(e) for e in row.events or ()),
        )


def default_preferences(user: Any) -> NotificationPreference:
    """An unsaved row holding the defaults, for the preferences form."""
    return NotificationPreference(user=user, events=list(ALL_EVENTS))


def _prefs_row(user: Any) -> NotificationPreference | None:
    try:
        return user.notification_preference  # type: ignore[no-any-return]
    except NotificationPreference.DoesNotExist:
        return None


# --- recipients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """A user (``user_id``) or a group's chat channel (``channel``: the key of
    ``SLUICE_NOTIFY_GROUP_WEBHOOKS``), with the channels and digest window it takes."""

    user_id: int | None
    channel: str
    channels: tuple[str, ...]
    digest_minutes: int

    @property
    def key(self) -> str:
        return f"u{self.user_id}" if self.user_id is not None else f"g:{self.channel}"


def channel_key(group: str, tenant: str) -> str:
    """``SLUICE_NOTIFY_GROUP_WEBHOOKS`` names a group of the default tenant by its name, and a
    group of tenant ``acme`` as ``acme:group``: a channel only hears of its own tenant."""
    return f"{tenant}:{group}" if tenant else group


def group_webhook(key: str) -> str:
    return str((settings.SLUICE_NOTIFY_GROUP_WEBHOOKS or {}).get(key, "") or "")


def _user_recipient(user: Any, event: str) -> Recipient | None:
    prefs = Prefs.of(_prefs_row(user))
    if event not in prefs.events:
        return None
    channels = []
    if prefs.email and user.email:
        channels.append(EMAIL)
    if prefs.chat:
        channels.append(CHAT)
    if not channels:
        return None
    return Recipient(user.pk, "", tuple(channels), prefs.digest_minutes)


class Audience:
    """Who hears of what, with the member lists cached for one batch of events."""

    def __init__(self) -> None:
        self._members: dict[tuple[str, str], list[Any]] = {}

    def members(self, group: str, tenant: str) -> list[Any]:
        """Active members of ``group`` who work for ``tenant`` (the queue's own rule: a
        reviewer sees a group's gates on runs of their tenant only; an operator who sees every
        tenant is not told about other tenants' gates)."""
        key = (group, tenant)
        if key not in self._members:
            users = get_user_model().objects.filter(groups__name=group, is_active=True)
            if tenant:
                users = users.filter(tenant_membership__tenant=tenant)
            else:
                users = users.filter(
                    Q(tenant_membership__isnull=True) | Q(tenant_membership__tenant="")
                )
            self._members[key] = list(
                users.select_related("notification_preference").distinct().order_by("pk")
            )
        return self._members[key]

    def for_groups(self, groups: Iterable[str], tenant: str, event: str) -> list[Recipient]:
        out: dict[str, Recipient] = {}
        for group in groups:
            for user in self.members(group, tenant):
                r = _user_recipient(user, event)
                if r is not None:
                    out.setdefault(r.key, r)
            key = channel_key(group, tenant)
            if event in GROUP_EVENTS and group_webhook(key):
                minutes = max(0, int(settings.SLUICE_NOTIFY_GROUP_DIGEST_MINUTES))
                out.setdefault(f"g:{key}", Recipient(None, key, (CHAT,), minutes))
        return list(out.values())

    def for_user(self, user_id: int | None, gate: Gate, tenant: str, event: str) -> list[Recipient]:
        """One named user (a claimant, a reassignee), if they still see the gate."""
        if user_id is None:
            return []
        from reviews.services import gates_visible_to

        user = (
            get_user_model()
            .objects.filter(pk=user_id, is_active=True)
            .select_related("notification_preference")
            .first()
        )
        if user is None or not _same_tenant(user, tenant):
            return []
        if not gates_visible_to(user).filter(pk=gate.pk).exists():
            return []
        r = _user_recipient(user, event)
        return [r] if r is not None else []

    def claimants(self, gates: list[Gate], event: str) -> dict[int, list[Recipient]]:
        """``for_user`` for the claimant of each gate, by gate id, in a few queries whatever
        the number of gates: the claimants in one, then which of their gates each still sees
        in one per claimant (a burst of claimed gates expiring together)."""
        from reviews.services import gates_visible_to

        by_user: dict[int, list[Gate]] = {}
        for g in gates:
            if g.claimed_by_id is not None:
                by_user.setdefault(g.claimed_by_id, []).append(g)
        if not by_user:
            return {}
        users = get_user_model().objects.filter(pk__in=by_user, is_active=True)
        out: dict[int, list[Recipient]] = {}
        for user in users.select_related("notification_preference"):
            mine = by_user[user.pk]
            r = _user_recipient(user, event)
            if r is None:
                continue
            seen = set(
                gates_visible_to(user)
                .filter(pk__in=[g.pk for g in mine])
                .values_list("pk", flat=True)
            )
            for g in mine:
                if g.pk in seen and _same_tenant(user, _tenant_of(g)):
                    out[g.pk] = [r]
        return out


def _same_tenant(user: Any, tenant: str) -> bool:
    from workflows.access import user_tenant

    return user_tenant(user) == tenant


# --- writing notifications (inside the gate's transaction) --------------------------------------


def _tenant_of(gate: Gate) -> str:
    cached = getattr(gate, "_sluice_tenant", None)
    if cached is None:
        if Gate.run.is_cached(gate):
            cached = gate.run.tenant
        else:
            cached = Run.objects.filter(pk=gate.run_id).values_list("tenant", flat=True).first()
        cached = cached or ""
        gate._sluice_tenant = cached  # type: ignore[attr-defined]
    return cached


def window_end(now: datetime, minutes: int) -> datetime:
    """The end of the digest window ``now`` falls in: windows of ``minutes`` aligned on the
    epoch (a 60-minute digest goes out on the hour), so every row of one window shares its
    ``due_at`` without reading anything, and one recipient gets at most one digest a window."""
    step = minutes * 60
    seconds = now.timestamp()
    end = (int(seconds // step) + 1) * step
    return datetime.fromtimestamp(end, tz=UTC)


def _write(entries: list[tuple[Gate, str, list[Recipient]]], now: datetime) -> int:
    """Write the notifications of ``entries`` (gate, event, recipients) and the outbox rows of
    the immediate ones; return how many notifications were written."""
    rows: list[Notification] = []
    for gate, event, recipients in entries:
        for r in recipients:
            due = window_end(now, r.digest_minutes) if r.digest_minutes else None
            rows.append(
                Notification(
                    user_id=r.user_id,
                    group=r.channel,
                    gate_id=gate.pk,
                    event=event,
                    channels=list(r.channels),
                    status=NotificationStatus.PENDING if due else NotificationStatus.QUEUED,
                    due_at=due,
                )
            )
    if not rows:
        return 0
    Notification.objects.bulk_create(rows)
    run_of = {gate.pk: gate.run_id for gate, _, _ in entries}
    boxes = [
        Outbox(
            kind=OUTBOX_KIND,
            key=f"notify:{n.pk}:{channel}",
            payload={"notifications": [n.pk], "channel": channel},
            run_id=run_of.get(n.gate_id),  # (shown with the run's other side effects)
            next_attempt_at=now,
        )
        for n in rows
        if n.status == NotificationStatus.QUEUED
        for channel in n.channels
    ]
    _enqueue(boxes)
    return len(rows)


def _enqueue(boxes: list[Outbox]) -> None:
    if not boxes:
        return
    Outbox.objects.bulk_create(boxes, ignore_conflicts=True)
    if settings.SLUICE_NOTIFY_DISPATCH_ON_COMMIT:
        keys = [b.key for b in boxes]
        transaction.on_commit(lambda: dispatch(keys))


def _safely(what: str, fn: Any, *args: Any) -> int:
    """Run ``fn`` in a savepoint: a notification that cannot be written is logged, and the gate
    change it belongs to still commits (the way a completion webhook is, workflows.webhooks)."""
    try:
        with transaction.atomic():
            return int(fn(*args) or 0)
    except Exception:
        log.exception("could not write the %s notifications", what)
        return 0


def gate_opened(gate: Gate) -> int:
    """Called by ``reviews.services.open_gate`` in the transaction that opens the gate."""

    def write() -> int:
        tenant = _tenant_of(gate)
        recipients = Audience().for_groups([gate.group], tenant, NotifyEvent.OPENED)
        return _write([(gate, NotifyEvent.OPENED, recipients)], clock.now())

    return _safely("gate opened", write)


def gates_expired(gate_ids: list[int]) -> int:
    """Called by the expiry sweep in the batch's transaction: tell each claimant."""

    def write() -> int:
        gates = list(
            Gate.objects.filter(
                pk__in=gate_ids, status=GateStatus.EXPIRED, claimed_by__isnull=False
            ).select_related("run")
        )
        told = Audience().claimants(gates, NotifyEvent.EXPIRED)
        entries = [(g, NotifyEvent.EXPIRED.value, told.get(g.pk, [])) for g in gates]
        return _write(entries, clock.now())

    return _safely("gates expired", write) if gate_ids else 0


def gates_escalated(gate_ids: list[int]) -> int:
    """Called by the escalation sweep in its transaction: tell the escalation group."""

    def write() -> int:
        audience = Audience()
        gates = Gate.objects.filter(pk__in=gate_ids).select_related("run")
        entries = [
            (
                g,
                NotifyEvent.ESCALATED.value,
                audience.for_groups([g.escalate_to], _tenant_of(g), NotifyEvent.ESCALATED),
            )
            for g in gates
            if g.escalate_to
        ]
        return _write(entries, clock.now())

    return _safely("gates escalated", write) if gate_ids else 0


def gate_reassigned(gate: Gate, to_user_id: int) -> int:
    """Called by ``reviews.services.reassign_gate`` in its transaction: tell the new holder."""

    def write() -> int:
        recipients = Audience().for_user(to_user_id, gate, _tenant_of(gate), "reassigned")
        return _write([(gate, NotifyEvent.REASSIGNED.value, recipients)], clock.now())

    return _safely("gate reassigned", write)


# --- the sweep: reminders and digests -----------------------------------------------------------


def reminder_time(opened: datetime, timeout: timedelta) -> datetime | None:
    """When a gate opened at ``opened`` with ``timeout`` is due for its reminder: after
    ``SLUICE_REVIEW_REMINDER_AT`` of its time (None when that is 0, off)."""
    fraction = float(settings.SLUICE_REVIEW_REMINDER_AT or 0)
    if not 0 < fraction < 1:
        return None
    return opened + timeout * fraction


def _lock(qs: Any) -> Any:
    if connection.features.has_select_for_update_skip_locked:
        return qs.select_for_update(skip_locked=True, of=("self",))
    return qs


def remind_due(now: datetime | None = None, batch: int = 500) -> int:
    """Send the reminders that are due (open gates whose ``remind_at`` passed). Each batch
    compare-and-swaps ``reminded_at`` from empty and writes the notifications in the same
    transaction, so a reminder is written once however many sweeps run. Returns how many
    gates were reminded. ``remind_at`` is on the engine's clock, as the gate's deadline."""
    now = now or clock.now()
    total = 0
    for _ in range(20):
        with transaction.atomic():
            due = Gate.objects.filter(
                status=GateStatus.OPEN, remind_at__lte=now, reminded_at__isnull=True
            )
            ids = list(_lock(due).order_by("remind_at", "id").values_list("pk", flat=True)[:batch])
            if not ids:
                break
            at = clock.now()
            fresh = Q(status=GateStatus.OPEN, reminded_at__isnull=True)
            Gate.objects.filter(fresh, pk__in=ids).update(reminded_at=at)
            gates = list(Gate.objects.filter(pk__in=ids, reminded_at=at).select_related("run"))
            audience = Audience()
            claimants = audience.claimants(gates, NotifyEvent.REMINDER)
            entries = []
            for g in gates:
                tenant = _tenant_of(g)
                if g.claimed_by_id is not None:
                    recipients = claimants.get(g.pk, [])
                else:
                    groups = [g.group] + ([g.escalate_to] if g.escalated_at else [])
                    recipients = audience.for_groups(groups, tenant, NotifyEvent.REMINDER)
                entries.append((g, NotifyEvent.REMINDER.value, recipients))
            _safely("reminder", _write, entries, at)
            total += len(gates)
        if len(ids) < batch:
            break
    return total


def send_digests(now: datetime | None = None, limit: int = 1000) -> int:
    """Fold the pending notifications of every recipient whose window ended into one message.

    Per recipient, one transaction: lock its pending rows (waiting for another sweeper that
    holds them, so a recipient never gets two digests of one window), compare-and-swap them
    pending → queued under the digest's key, and write one outbox row per channel. Rows that
    arrived after the window ended but before this sweep ride along. Returns how many digests
    were queued.
    """
    now = now or clock.now()
    due = (
        Notification.objects.filter(status=NotificationStatus.PENDING, due_at__lte=now)
        .order_by()  # (the model's ordering would make every row distinct)
        .values_list("user_id", "group")
        .distinct()[:limit]
    )
    sent = 0
    for user_id, group in list(due):
        try:
            sent += _send_digest(user_id, group)
        except Exception:
            log.exception("could not queue the digest of %s", user_id or group)
    return sent


def _send_digest(user_id: int | None, group: str) -> int:
    with transaction.atomic():
        pending = Notification.objects.filter(status=NotificationStatus.PENDING)
        if user_id is not None:
            pending = pending.filter(user_id=user_id)
        else:
            pending = pending.filter(user__isnull=True, group=group)
        # A plain row lock, not SKIP LOCKED: two sweepers must not split one recipient's rows
        # into two digests. The second waits for the first's commit, then finds the rows it
        # folded queued (READ COMMITTED rechecks the status of each row it waited for).
        if connection.features.has_select_for_update:
            pending = pending.select_for_update(of=("self",))
        rows = list(pending.order_by("id").values_list("pk", "channels"))
        if not rows:
            return 0
        who = f"u{user_id}" if user_id is not None else f"g:{group}"
        key = f"digest:{who}:{rows[0][0]}"
        ids = [pk for pk, _ in rows]
        n = Notification.objects.filter(pk__in=ids, status=NotificationStatus.PENDING).update(
            status=NotificationStatus.QUEUED, message_key=key
        )
        if n != len(ids):  # Only without row locks (SQLite) can another sweeper slip in.
            ids = list(Notification.objects.filter(message_key=key).values_list("pk", flat=True))
        if not ids:
            return 0
        channels = sorted({c for pk, chans in rows if pk in set(ids) for c in chans})
        now = clock.now()
        _enqueue(
            [
                Outbox(
                    kind=OUTBOX_KIND,
                    key=f"{key}:{channel}",
                    payload={"notifications": ids, "channel": channel, "digest": True},
                    next_attempt_at=now,
                )
                for channel in channels
            ]
        )
    return 1


def sweep() -> dict[str, int]:
    """The beat's notification pass (``reviews.notify``): reminders, then digests."""
    reminded = remind_due()
    return {"reminded": reminded, "digests": send_digests()}


# --- delivering (the outbox handler) ------------------------------------------------------------


def dispatch(keys: list[str]) -> None:
    """Ask a worker to deliver these rows now; the outbox beat delivers them anyway."""
    # The engine's doorbell path (one LPUSH, 1 s timeout), not Celery's 30 s on a hung broker.
    try:
        send_tasks([("reviews.deliver_notifications", [keys], "default")])
    except Exception as exc:
        log.warning("could not dispatch %s notifications; the beat will: %s", len(keys), exc)


def deliver_keys(keys: list[str]) -> int:
    """Deliver the pending outbox rows with these keys (each under its own fenced claim)."""
    rows = Outbox.objects.filter(key__in=keys, kind=OUTBOX_KIND, status=OutboxStatus.PENDING)
    return outbox.deliver_rows(rows)  # a row that fails unexpectedly does not stop the rest


@dataclass(frozen=True)
class Item:
    """One line of a message: what happened to which gate."""

    event: str
    label: str
    title: str
    subject: str
    pipeline: str
    deadline: str
    url: str
    status: str
    on_timeout: str


LABELS = {
    "opened": "New gate to review",
    "reminder": "Reminder: expires soon",
    "expired": "Expired",
    "escalated": "Escalated to your group",
    "reassigned": "Handed to you",
}


def _one_line(text: str, limit: int = 150) -> str:
    """Outside text on one line (no header injection, no layout tricks), cut to ``limit``."""
    flat = re.sub(r"\s+", " ", str(text or "")).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def gate_url(gate_id: int) -> str:
    return f"{settings.SLUICE_BASE_URL}/reviews/{gate_id}/"


def _items(notes: list[Notification]) -> list[Item]:
    items = []
    for n in notes:
        g = n.gate
        deadline = timezone.localtime(g.deadline).strftime("%Y-%m-%d %H:%M %Z")
        items.append(
            Item(
                event=n.event,
                label=LABELS.get(n.event, n.event),
                title=_one_line(g.title),
                subject=_one_line(g.subject) if g.subject != g.title else "",
                pipeline=g.pipeline,
                deadline=deadline,
                url=gate_url(g.pk),
                status=g.status,
                on_timeout=g.on_timeout,
            )
        )
    return items


def _subject(items: list[Item], digest: bool) -> str:
    if digest and len(items) > 1:
        return f"[Sluice] {len(items)} gate updates"
    item = items[0]
    return _one_line(f"[Sluice] {item.label}: {item.title}", 200)


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters: ``&``, ``<`` and ``>`` (so a title cannot make a
    link or an ``<!channel>`` mention)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chat_text(items: list[Item], digest: bool) -> str:
    lines = []
    if digest and len(items) > 1:
        lines.append(f"*Sluice: {len(items)} gate updates*")
    for item in items[:DIGEST_LISTED]:
        about = f" — {_slack_escape(item.subject)}" if item.subject else ""
        lines.append(
            f"{item.label}: <{item.url}|{_slack_escape(item.title)}>{about} "
            f"({_slack_escape(item.pipeline)}, due {item.deadline})"
        )
    if len(items) > DIGEST_LISTED:
        queue = f"{settings.SLUICE_BASE_URL}/reviews/"
        lines.append(f"… and {len(items) - DIGEST_LISTED} more: <{queue}|the review queue>")
    return "\n".join(lines)


def _message_id(key: str) -> str:
    host = urlsplit(settings.SLUICE_BASE_URL).hostname or "sluice.invalid"
    return f"<{re.sub(r'[^A-Za-z0-9.-]', '.', key)}@{host}>"


# What a message shows, and no more: the payload (large, untrusted) is never read.
LOAD_FIELDS = (
    "id",
    "user_id",
    "group",
    "gate_id",
    "event",
    "gate__id",
    "gate__title",
    "gate__subject",
    "gate__pipeline",
    "gate__deadline",
    "gate__status",
    "gate__on_timeout",
    "gate__group",
    "gate__escalate_to",
    "gate__run_id",
    "gate__run__id",
    "gate__run__tenant",
    "user__id",
    "user__username",
    "user__email",
    "user__is_active",
)


def _load(row: Outbox) -> tuple[Any, str, list[Notification]]:
    """The recipient (a user or a group channel key) and the notifications of ``row`` it may
    still be told about: a user who left the gate's group or tenant meanwhile is not."""
    from reviews.services import gates_visible_to

    ids = [int(i) for i in row.payload.get("notifications", [])]
    notes = list(
        Notification.objects.filter(pk__in=ids)
        .select_related("gate", "gate__run", "user")
        .only(*LOAD_FIELDS)
        .order_by("id")
    )
    if not notes:
        return None, "", []
    first = notes[0]
    if first.user_id is not None:
        user = first.user
        if user is None or not user.is_active:
            return None, "", []
        visible = set(
            gates_visible_to(user)
            .filter(pk__in={n.gate_id for n in notes}, run__tenant=_user_tenant(user))
            .values_list("pk", flat=True)
        )
        return user, "", [n for n in notes if n.gate_id in visible]
    key = first.group
    # A channel hears only of its own tenant's gates: the note's gate must give this very key
    # (its group's, or its escalation group's, in its run's tenant). Reading the tenant back
    # out of the key took a default-tenant group named "ops:leads" for tenant "ops", and the
    # channel heard nothing.
    return None, key, [n for n in notes if key in _channel_keys(n.gate)]


def _channel_keys(gate: Gate) -> set[str]:
    """The channel keys a gate's notes go to: its group's and its escalation group's, in its
    run's tenant. A default-tenant group named like a tenant's key ("globex:reviewers", where
    tenant globex exists) is left out: that key is tenant globex's channel, which must not
    hear of another tenant's gates."""
    from workflows.models import TenantMembership

    tenant = gate.run.tenant
    keys = set()
    for group in (gate.group, gate.escalate_to):
        if not group:
            continue
        prefix, colon, _ = group.partition(":")
        if not tenant and colon and TenantMembership.objects.filter(tenant=prefix).exists():
            log.warning(
                "group %r reads as tenant %r's channel: not told of its gates", group, prefix
            )
            continue
        keys.add(channel_key(group, tenant))
    return keys


def _user_tenant(user: Any) -> str:
    from workflows.access import user_tenant

    return user_tenant(user)


def deliver(row: Outbox) -> None:
    """The outbox handler for ``notify`` rows: one attempt on one channel. Raises to retry."""
    user, channel_key_, notes = _load(row)
    if user is not None:
        # The preferences as they are now, not as they were when the row was written: an
        # e-mail turned off, or an event unsubscribed from, since then is not sent (a digest
        # waits up to a day, a retry as long).
        prefs = Prefs.of(_prefs_row(user))
        notes = [n for n in notes if n.event in prefs.events]
    # A gate decided, expired or canceled since the note was written (a digest waits up to a
    # day, a retry after a mail outage as long) is no longer news to act on: "New gate to
    # review" for a gate someone else decided an hour ago sends people to a closed page.
    notes = [n for n in notes if n.event == "expired" or n.gate.status == GateStatus.OPEN]
    if not notes:
        return  # Nothing left this recipient may be told: done.
    items = _items(notes)
    digest = bool(row.payload.get("digest"))
    channel = row.payload.get("channel")
    if channel == EMAIL:
        if user is None or not user.email or not prefs.email:
            return
        _send_email(row.key, user, items, digest)
    elif channel == CHAT:
        if user is not None:
            url = prefs.chat_url if prefs.chat else ""
        else:
            url = group_webhook(channel_key_)
        if not url:
            return  # Turned off (or the channel removed) since: nothing to send.
        _send_chat(row.key, url, chat_text(items, digest))
    else:
        log.warning("notification %s: unknown channel %r", row.key, channel)


def _send_email(key: str, user: Any, items: list[Item], digest: bool) -> None:
    context = {
        "user": user,
        "items": items[:DIGEST_LISTED],
        "more": max(0, len(items) - DIGEST_LISTED),
        "queue_url": f"{settings.SLUICE_BASE_URL}/reviews/",
        "preferences_url": f"{settings.SLUICE_BASE_URL}/reviews/preferences/",
        "digest": digest and len(items) > 1,
    }
    message = EmailMultiAlternatives(
        subject=_subject(items, digest),
        body=render_to_string("reviews/email/notification.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
        headers={"Message-ID": _message_id(key), "X-Sluice-Key": key},
    )
    message.attach_alternative(
        render_to_string("reviews/email/notification.html", context), "text/html"
    )
    message.send(fail_silently=False)


def _send_chat(key: str, url: str, text: str) -> None:
    try:
        target = webhooks.check_callback_url(url, resolve=True)
    except webhooks.UnresolvedHostError as exc:
        raise NotificationFailed(str(exc)) from None  # tried again, as a failed post is
    except webhooks.CallbackUrlError as exc:
        # A refused address will not become acceptable by retrying: give up on this message.
        log.warning("notification %s not sent: %s", key, exc)
        return
    body = json.dumps({"text": text}).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Sluice-Notifications/1",
        "Idempotency-Key": key,
    }
    try:
        response = webhooks._post(target, body, headers)
    except httpx.HTTPError as exc:
        raise NotificationFailed(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise NotificationFailed(f"HTTP {response.status_code} from the chat webhook")


outbox.register_outbox_handler(OUTBOX_KIND, deliver)
