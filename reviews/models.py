"""Gates and their audit trail.

A ``Gate`` is the human side of a waiting journal row (``Step`` of kind ``gate``): the run is
suspended on that step until the gate is decided, expires or is canceled. Every state change is
a compare-and-swap in ``reviews.services``; this module only declares the tables.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from workflows.models import Run, Step


class GateStatus(models.TextChoices):
    OPEN = "open"
    DECIDED = "decided"
    EXPIRED = "expired"
    CANCELED = "canceled"


CLOSED_GATE = (GateStatus.DECIDED, GateStatus.EXPIRED, GateStatus.CANCELED)


class Gate(models.Model):
    """One review gate: a question to people, with a deadline and a default answer."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="gates")
    step = models.OneToOneField(Step, on_delete=models.CASCADE, related_name="gate")
    # The run's workflow, copied here so the queue filters on it without a join.
    pipeline = models.CharField(max_length=200)
    title = models.CharField(max_length=200)
    # Which run this is, for the queue: the input's title and a one-line excerpt of its main
    # text, read when the gate opened (reviews.summary). Untrusted text, always escaped.
    subject = models.CharField(max_length=200, blank=True, default="")
    excerpt = models.CharField(max_length=300, blank=True, default="")
    instruction = models.TextField(blank=True, default="")
    # What the AI produced, for a person to check. Untrusted: always rendered escaped.
    payload = models.JSONField(null=True, blank=True)
    choices = models.JSONField(default=list)
    on_timeout = models.CharField(max_length=64)
    # The Django auth group whose members may decide (staff may decide any gate).
    group = models.CharField(max_length=150, default="reviewers")
    # JSON Schema of the values a reviewer may correct ({} when there are none).
    fields_schema = models.JSONField(default=dict, blank=True)
    # 1 for the first gate of this title in the run, 2 when the run looped back to it, …
    attempt = models.PositiveIntegerField(default=1)
    deadline = models.DateTimeField()
    status = models.CharField(max_length=16, choices=GateStatus.choices, default=GateStatus.OPEN)
    # A claim says "I am on it"; it is orthogonal to the status and ends with the gate.
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="claimed_gates",
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=64, blank=True, default="")
    comment = models.TextField(blank=True, default="")
    edits = models.JSONField(null=True, blank=True)
    # Who decided: a username, "api:<key prefix>", or "" when the gate expired.
    decided_by = models.CharField(max_length=150, blank=True, default="")
    decided_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="decided_gates",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    timed_out = models.BooleanField(default=False)
    # Four eyes: how many distinct approvers close the gate with "approve" (one rejection
    # closes it at once), and whether whoever started the run is barred from approving it.
    approvals_required = models.PositiveSmallIntegerField(default=1)
    separation_of_duties = models.BooleanField(default=False)
    # Escalation: a deadline column like ``deadline``. The expiry sweep sets ``escalated_at``
    # once the gate is still unclaimed at ``escalate_at``; from then on the members of
    # ``escalate_to`` see it too (``reviews.services.gates_visible_to``).
    escalate_at = models.DateTimeField(null=True, blank=True)
    escalate_to = models.CharField(max_length=150, blank=True, default="")
    escalated_at = models.DateTimeField(null=True, blank=True)
    # Reminder before the deadline (``SLUICE_REVIEW_REMINDER_AT`` of the time gone): another
    # deadline column, fired once by the beat sweep (``reviews.notifications.remind_due``).
    remind_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deadline", "id"]
        indexes = [
            # The queue (open gates by deadline) and the expiry sweep (open gates whose deadline
            # passed) both read this partial index, which holds only the open gates.
            models.Index(
                fields=["deadline", "id"], name="gate_open_deadline", condition=Q(status="open")
            ),
            models.Index(
                fields=["group", "deadline", "id"],
                name="gate_open_group_deadline",
                condition=Q(status="open"),
            ),
            models.Index(
                fields=["pipeline", "deadline"],
                name="gate_open_pipeline",
                condition=Q(status="open"),
            ),
            # A reviewer's share of the open gates: their groups' gates and those escalated to
            # their groups. Together they let the queue, its count and its pipeline list read
            # only that share (a bitmap OR of the two) when it is a small part of the backlog,
            # instead of walking every open gate by deadline to find it.
            models.Index(
                fields=["group", "pipeline"],
                name="gate_open_group_pipeline",
                condition=Q(status="open"),
            ),
            models.Index(
                fields=["escalate_to", "pipeline"],
                name="gate_open_escalated",
                condition=Q(status="open", escalated_at__isnull=False),
            ),
            # "My decisions" and the earlier attempts of a gate.
            models.Index(fields=["decided_by_user", "-decided_at"], name="gate_decided_by_user"),
            models.Index(fields=["run", "title", "id"], name="gate_run_title"),
            # Review insights and the evaluation dataset: closed gates by decision time.
            models.Index(
                fields=["decided_at"],
                name="gate_closed_decided_at",
                condition=Q(status__in=["decided", "expired"]),
            ),
            # The escalation sweep: open gates with an escalation not yet fired.
            models.Index(
                fields=["escalate_at"],
                name="gate_open_escalate_at",
                condition=Q(status="open", escalate_at__isnull=False, escalated_at__isnull=True),
            ),
            # The reminder sweep: open gates with a reminder not yet sent.
            models.Index(
                fields=["remind_at"],
                name="gate_open_remind_at",
                condition=Q(status="open", remind_at__isnull=False, reminded_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"

    @staticmethod
    def of_groups(groups: list[str]) -> Q:
        """The gates reviewers of ``groups`` work on: their own groups' gates, and gates that
        escalated to one of their groups (the queue and the run pages use this one rule)."""
        return Q(group__in=groups) | Q(escalate_to__in=groups, escalated_at__isnull=False)

    @property
    def is_open(self) -> bool:
        return self.status == GateStatus.OPEN

    def decision_data(self) -> dict[str, Any]:
        """The decision as the workflow receives it (journal JSON)."""
        return decision_json(
            outcome=self.outcome,
            comment=self.comment,
            edits=self.edits,
            decided_by=self.decided_by,
            timed_out=self.timed_out,
            decided_at=self.decided_at.isoformat() if self.decided_at else None,
        )


def decision_json(
    *,
    outcome: str,
    comment: str,
    edits: Any,
    decided_by: str,
    timed_out: bool,
    decided_at: str | None,
    approvals: list[str] | None = None,
) -> dict[str, Any]:
    data = {
        "outcome": outcome,
        "comment": comment,
        "edits": edits,
        "decided_by": decided_by,
        "timed_out": timed_out,
        "decided_at": decided_at,
    }
    # Only multi-approver gates carry the list, so the journal of every other gate (and the
    # replays that compare it) stays as it was.
    if approvals:
        data["approvals"] = approvals
    return data


class GateEventKind(models.TextChoices):
    OPENED = "opened"
    CLAIMED = "claimed"
    RELEASED = "released"
    DECIDED = "decided"
    EXPIRED = "expired"
    CANCELED = "canceled"
    # One approval of a gate that needs several (the last one is the ``decided`` event).
    APPROVED = "approved"
    ESCALATED = "escalated"
    REASSIGNED = "reassigned"


class GateEvent(models.Model):
    """The audit trail of a gate: what happened, who did it, when. Written, never edited."""

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=GateEventKind.choices)
    # A username, "api:<key prefix>", or "" for the system (the pipeline, the sweep, a cancel).
    actor = models.CharField(max_length=150, blank=True, default="")
    at = models.DateTimeField()
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["gate", "at"], name="gate_event_gate_at")]

    def __str__(self) -> str:
        return f"{self.kind} by {self.actor or 'system'}"


class GateApproval(models.Model):
    """One approver's "approve" on a gate that needs several. The unique constraints make the
    same approver count once even if two of their requests race past the service's check: a
    signed-in user by id (renamed, they are still the same approver; a new account given a
    former approver's name is not), an API key by its ``api:<prefix>`` name."""

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="approvals")
    # A username or "api:<key prefix>", like ``Gate.decided_by``.
    approver = models.CharField(max_length=150)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    comment = models.TextField(blank=True, default="")
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["gate", "user"],
                name="gate_approval_once_per_user",
                condition=Q(user__isnull=False),
            ),
            # Not every row without a user: a deleted user's rows keep their name and lose
            # the id, and two accounts that held one name in turn may both have approved.
            models.UniqueConstraint(
                fields=["gate", "approver"],
                name="gate_approval_once_per_key",
                condition=Q(user__isnull=True, approver__startswith="api:"),
            ),
        ]

    def __str__(self) -> str:
        return f"approved by {self.approver}"


class GateCorrection(models.Model):
    """One field a reviewer corrected when deciding a gate: the AI's value and the person's.

    Written with the decision (``reviews.insights.record_corrections``), one row per field whose
    value differs from what the gate showed, so the insights page counts corrections per
    pipeline, gate and field with a ``GROUP BY`` instead of diffing every gate's JSON.
    Both values are untrusted text (the AI's output, a person's edit): always rendered escaped.
    """

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="corrections")
    field = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "id"]
        indexes = [models.Index(fields=["field", "at"], name="gate_correction_field_at")]

    def __str__(self) -> str:
        return f"{self.field} corrected"


# --- notifications (reviews.notifications) ------------------------------------------------------


class NotifyEvent(models.TextChoices):
    OPENED = "opened", "A gate of my group opens"
    REMINDER = "reminder", "A gate is about to expire"
    EXPIRED = "expired", "A gate I claimed expired"
    ESCALATED = "escalated", "A gate escalates to my group"
    REASSIGNED = "reassigned", "A gate is handed to me"


class NotifyMode(models.TextChoices):
    IMMEDIATE = "immediate", "One message per event"
    DIGEST = "digest", "A digest per interval"


class NotificationPreference(models.Model):
    """How one user wants to hear about gates. No row: the defaults (``defaults_for``)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preference"
    )
    email_enabled = models.BooleanField(default=True)
    chat_enabled = models.BooleanField(default=False)
    # A Slack-compatible incoming webhook; checked by the webhooks' address guard on save and
    # again (resolved) before every delivery.
    chat_webhook_url = models.URLField(max_length=2000, blank=True, default="")
    mode = models.CharField(max_length=16, choices=NotifyMode.choices, default=NotifyMode.IMMEDIATE)
    digest_minutes = models.PositiveIntegerField(default=60)
    # The NotifyEvent values this user wants.
    events = models.JSONField(default=list)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"notifications of {self.user_id}"


class NotificationStatus(models.TextChoices):
    # Waiting for its digest (``due_at``: the end of the recipient's digest window).
    PENDING = "pending"
    # Handed to the outbox (at once, or in a digest).
    QUEUED = "queued"


class Notification(models.Model):
    """One event for one recipient: a user, or a group's chat channel (``user`` empty).

    Written in the transaction that changed the gate. Immediate ones get their outbox rows in
    that same transaction; digest ones wait (``pending``) until the sweep folds every pending
    row of the recipient into one message, in the transaction that writes its outbox rows.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notifications",
    )
    group = models.CharField(max_length=150, blank=True, default="")
    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=16, choices=NotifyEvent.choices)
    # The channels this row goes to ("email", "chat"), fixed when it was written.
    channels = models.JSONField(default=list)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    due_at = models.DateTimeField(null=True, blank=True)
    # The outbox key prefix of the message that carried it.
    message_key = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["due_at"], name="notification_pending_due", condition=Q(status="pending")
            ),
            models.Index(fields=["user", "status"], name="notification_user_status"),
        ]

    def __str__(self) -> str:
        return f"{self.event} of gate {self.gate_id} for {self.user_id or self.group}"


class GateRecord(models.Model):
    """A gate's audit trail kept after its run was pruned (``SLUICE_GATE_TRAIL_ON_PRUNE =
    "keep"``, the default): the decision (outcome, who and when, comment, edits, approvals)
    and every gate event, as JSON. No foreign key to the run, which is gone; retention never
    deletes these rows. Written by ``reviews.retention`` in the prune's own transaction."""

    gate_id = models.BigIntegerField(db_index=True)
    run_id = models.UUIDField(db_index=True)
    tenant = models.CharField(max_length=100, blank=True, default="", db_index=True)
    pipeline = models.CharField(max_length=200)
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=GateStatus.choices)
    outcome = models.CharField(max_length=64, blank=True, default="")
    decided_by = models.CharField(max_length=150, blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    # Everything else, as ``reviews.retention.trail`` writes it (the same shape as the archive
    # file's lines): the gate's fields, its approvals and its events.
    trail = models.JSONField()
    kept_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-kept_at", "id"]

    def __str__(self) -> str:
        return f"{self.title} ({self.status}) of pruned run {self.run_id}"
