"""The gate lifecycle: open, claim, release, decide, expire, cancel. Views, the API, the admin and
the beat task call these; each state change is a named compare-and-swap.

::

    open ──decide──▶ decided
      │ ──expire──▶ expired (auto-advanced with on_timeout)
      │ ──cancel──▶ canceled (the run ended)
      └─ claim / release change claimed_by only, while open

Lock order. Deciding and canceling lock the run row first (``cancel`` does it in the engine),
then touch the gate and the journal row; the expiry sweep only ever *skips* locked rows. So two
transactions never wait on each other in opposite orders, and the races (decide vs expire, two
reviewers, decide vs cancel) serialize instead of deadlocking: exactly one of them closes the
gate and the loser gets a message saying who won and when.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from psycopg.types.json import Jsonb

from reviews.models import (
    Gate,
    GateApproval,
    GateCorrection,
    GateEvent,
    GateEventKind,
    GateStatus,
    decision_json,
)
from reviews.schema import corrections, initial_values, properties, validate_edits
from workflows import access
from workflows.core import clock
from workflows.core.doorbell import ring_on_commit, send_tasks
from workflows.core.errors import InvalidInputError, InvalidStateError, SluiceError
from workflows.core.services import complete_waiting_step, complete_waiting_steps, listed_errors
from workflows.models import Run, RunStatus, Step

log = logging.getLogger(__name__)

# The Celery task that resumes a burst of runs (``reviews.tasks.resume_runs``).
RESUME_RUNS = "reviews.resume_runs"


class GateNotFoundError(SluiceError, LookupError):
    """No gate has this id (or the caller may not see it)."""


class GateClosedError(InvalidStateError):
    """The gate was already decided, expired or canceled; the message says how and when."""

    def __init__(self, message: str, gate: Gate | None = None) -> None:
        super().__init__(message)
        self.gate = gate


class GateClaimedError(InvalidStateError):
    """Another reviewer holds the claim on this gate."""

    def __init__(self, message: str, gate: Gate | None = None) -> None:
        super().__init__(message)
        self.gate = gate


class AlreadyApprovedError(InvalidStateError):
    """This approver's approval of a four-eyes gate is already recorded (``decide_gate`` with
    ``repeat_ok=False``: a second tab's approval, which must not pass for a new one)."""

    def __init__(self, message: str, gate: Gate | None = None) -> None:
        super().__init__(message)
        self.gate = gate


class InvalidDecisionError(InvalidInputError):
    """The outcome is not one of the gate's choices, or the edits do not fit its fields.

    ``errors`` lists ``{"field", "message"}`` (field ``outcome`` or the edited field's name).
    """


# --- who may see what ---------------------------------------------------------------------------


def review_groups(user: Any) -> list[str]:
    """The user's auth group names, cached on the user object for the request."""
    return access.user_groups(user)


VIEW_GATE_PERMISSION = "reviews.view_gate"


def sees_every_gate(user: Any) -> bool:
    """An operator for gates: staff holding the gate view permission (superusers hold every
    one). Such a user sees, decides and frees the gates of every group and tenant; the staff
    flag alone does not (docs/security.md)."""
    return access.staff_with(user, VIEW_GATE_PERMISSION)


CHANGE_GATE_PERMISSION = "reviews.change_gate"


def overrides_claims(user: Any) -> bool:
    """May free or decide a gate another reviewer claimed: staff with the gate change
    permission (the admin's "release claims" action asks for the same)."""
    return access.staff_with(user, CHANGE_GATE_PERMISSION)


def is_reviewer(user: Any) -> bool:
    """A gate operator, or a member of at least one group (each group reviews the gates named
    after it)."""
    return bool(
        user.is_authenticated and user.is_active and (sees_every_gate(user) or review_groups(user))
    )


def gates_visible_to(user: Any) -> QuerySet[Gate]:
    """Gates ``user`` may see and decide: a gate operator all; a reviewer those of their groups
    on runs of their tenant (``workflows.access``; docs/security.md)."""
    if not user.is_authenticated or not user.is_active:
        return Gate.objects.none()
    if sees_every_gate(user):
        return Gate.objects.all()
    groups = review_groups(user)
    if not groups:
        return Gate.objects.none()
    # An escalated gate is seen by its own group and by the escalation group, on runs of the
    # reviewer's tenant only: escalation widens the group, never the tenant.
    return Gate.objects.filter(Gate.of_groups(groups), run__tenant=access.user_tenant(user))


def open_queue(
    user: Any,
    *,
    mine: bool = False,
    unclaimed: bool = False,
    pipeline: str = "",
    due_within: timedelta | None = None,
    now: datetime | None = None,
) -> QuerySet[Gate]:
    """Open gates for the reviewer queue, by deadline; only the columns the queue shows."""
    qs = gates_visible_to(user).filter(status=GateStatus.OPEN)
    if mine:
        qs = qs.filter(claimed_by=user)
    if unclaimed:
        qs = qs.filter(claimed_by__isnull=True)
    if pipeline:
        qs = qs.filter(pipeline=pipeline)
    if due_within is not None:
        qs = qs.filter(deadline__lte=(now or clock.now()) + due_within)
    return (
        qs.select_related("claimed_by")
        .only(
            "id",
            "run_id",
            "pipeline",
            "title",
            "subject",
            "excerpt",
            "group",
            "attempt",
            "deadline",
            "status",
            "on_timeout",
            "claimed_at",
            "created_at",
            "claimed_by__username",
        )
        .order_by("deadline", "id")
    )


def open_pipelines(user: Any) -> list[str]:
    """Pipelines that have open gates this user can see (for the queue's filter).

    On PostgreSQL a loose index scan: each step of a recursive query asks for the first open
    gate the user may see in a pipeline after the last one found, along the ``(pipeline,
    deadline)`` index of open gates. Its cost grows with the number of pipelines, not of
    gates; a ``DISTINCT`` read every open gate (and joined its run) on every page view.
    """
    visible = gates_visible_to(user).filter(status=GateStatus.OPEN)
    if visible.query.is_empty():
        return []
    if connection.vendor != "postgresql":
        return list(visible.order_by("pipeline").values_list("pipeline", flat=True).distinct())
    first = visible.order_by("pipeline").values_list("pipeline", flat=True)[:1]
    after = (
        visible.filter(pipeline__gt=RawSQL('"found"."pipeline"', ()))
        .order_by("pipeline")
        .values_list("pipeline", flat=True)[:1]
    )
    first_sql, first_params = first.query.sql_with_params()
    after_sql, after_params = after.query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute(
            f"WITH RECURSIVE found(pipeline) AS (({first_sql}) UNION ALL "
            f"SELECT ({after_sql}) FROM found WHERE found.pipeline IS NOT NULL) "
            "SELECT pipeline FROM found WHERE pipeline IS NOT NULL",
            [*first_params, *after_params],
        )
        return [row[0] for row in cur.fetchall()]


def next_gate_for(user: Any, after: Gate | None = None) -> Gate | None:
    """The open gate to show after a decision: the most urgent one nobody else has claimed."""
    qs = (
        gates_visible_to(user)
        .filter(status=GateStatus.OPEN)
        .filter(Q(claimed_by__isnull=True) | Q(claimed_by=user))
    )
    if after is not None:
        qs = qs.exclude(pk=after.pk)
    # A four-eyes gate this reviewer already approved waits for someone else (by user id,
    # as ``approved_by`` decides: a renamed reviewer still approved it).
    qs = qs.exclude(approvals__user_id=user.pk)
    return qs.only("id", "title", "subject").order_by("deadline", "id").first()


def get_gate(gate_id: Any, user: Any = None) -> Gate:
    """A gate by id, scoped to what ``user`` may see when a user is given."""
    qs = Gate.objects.all() if user is None else gates_visible_to(user)
    try:
        return qs.select_related("run", "claimed_by").get(pk=gate_id)
    except (Gate.DoesNotExist, ValueError, TypeError):
        raise GateNotFoundError(f"no gate with id {gate_id}") from None


# --- messages -----------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    """14:02 today, or 2025-05-03 14:02 on another day (local time)."""
    if moment is None:
        return "an unknown time"
    local = timezone.localtime(moment)
    if local.date() == timezone.localdate():
        return local.strftime("%H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def closed_message(gate: Gate) -> str:
    """Why a gate no longer takes decisions, in the words a reviewer sees."""
    if gate.status == GateStatus.EXPIRED:
        return f"this gate expired at {_when(gate.deadline)} and auto-advanced with {gate.outcome}"
    if gate.status == GateStatus.DECIDED:
        return (
            f"already decided by {gate.decided_by or 'someone'} at {_when(gate.decided_at)} "
            f"({gate.outcome})"
        )
    if gate.status == GateStatus.CANCELED:
        return f"this gate was canceled at {_when(gate.decided_at)} because its run ended"
    return "this gate is open"


def closed_message_for(gate: Gate, user: Any) -> str:
    """``closed_message`` as ``user`` reads it: the person who decided sees "you rejected this
    gate at 14:02", not their own name as if someone else had."""
    mine = user is not None and getattr(user, "pk", None) is not None
    if mine and gate.status == GateStatus.DECIDED and gate.decided_by_user_id == user.pk:
        verb = {"approve": "approved", "reject": "rejected"}.get(gate.outcome)
        what = f"you {verb} this gate" if verb else f"you decided “{gate.outcome}” on this gate"
        return f"{what} at {_when(gate.decided_at)}"
    return closed_message(gate)


def next_attempt(gate: Gate, user: Any) -> Gate | None:
    """The gate the run opened after this one was turned down (rejected, or expired into a
    rejection) or canceled (its run was restarted while the gate was open): usually the same
    review again, attempt n + 1. None when the gate was approved, is still open, or the run
    opened nothing after it that ``user`` may see (a run canceled for good)."""
    if gate.is_open or gate.outcome == "approve":
        return None
    later = gates_visible_to(user).filter(run_id=gate.run_id, pk__gt=gate.pk)
    fields = ("id", "title", "attempt", "status")
    return (
        later.filter(title=gate.title).only(*fields).order_by("pk").first()
        or later.only(*fields).order_by("pk").first()
    )


def _claimed_message(gate: Gate) -> str:
    who = gate.claimed_by.get_username() if gate.claimed_by else "another reviewer"
    return (
        f"claimed by {who} at {_when(gate.claimed_at)}; only {who} (or an operator who may "
        "change gates) can decide it until it is released"
    )


# --- opening ------------------------------------------------------------------------------------


def open_gate(
    step_row: Step,
    *,
    pipeline: str,
    title: str,
    instruction: str,
    payload: Any,
    choices: list[str],
    on_timeout: str,
    group: str,
    fields_schema: dict[str, Any],
    timeout: timedelta,
    subject: str = "",
    excerpt: str = "",
    approvals_required: int = 1,
    separation_of_duties: bool = False,
    escalate_after: timedelta | None = None,
    escalate_to: str = "",
) -> Gate:
    """Create the gate of a waiting journal row. Called by ``ctx.review`` inside the transaction
    that writes that row, so the two commit together."""
    from reviews import notifications

    now = step_row.started_at or clock.now()
    earlier = Gate.objects.filter(run_id=step_row.run_id, title=title).count()
    gate = Gate.objects.create(
        run_id=step_row.run_id,
        step_id=step_row.pk,
        pipeline=pipeline,
        title=title,
        subject=subject[:200],
        excerpt=excerpt[:300],
        instruction=instruction,
        payload=payload,
        choices=choices,
        on_timeout=on_timeout,
        group=group,
        fields_schema=fields_schema,
        attempt=earlier + 1,
        deadline=now + timeout,
        approvals_required=approvals_required,
        separation_of_duties=separation_of_duties,
        escalate_at=now + escalate_after if escalate_after is not None else None,
        escalate_to=escalate_to,
        remind_at=notifications.reminder_time(now, timeout),
    )
    detail: dict[str, Any] = {
        "deadline": gate.deadline.isoformat(),
        "group": group,
        "attempt": gate.attempt,
    }
    if approvals_required > 1:
        detail["approvals_required"] = approvals_required
    if separation_of_duties:
        detail["separation_of_duties"] = True
    if gate.escalate_at is not None:
        detail["escalate_at"] = gate.escalate_at.isoformat()
        detail["escalate_to"] = escalate_to
    GateEvent.objects.create(gate=gate, kind=GateEventKind.OPENED, at=now, detail=detail)
    if Step.run.is_cached(step_row):
        gate.run = step_row.run
    notifications.gate_opened(gate)
    return gate


# --- claims -------------------------------------------------------------------------------------


def claim_gate(gate_id: Any, user: Any) -> Gate:
    """Claim an open gate for ``user`` ("I am on it"). Claiming your own claim is a no-op."""
    now = clock.now()
    with transaction.atomic():
        n = Gate.objects.filter(pk=gate_id, status=GateStatus.OPEN, claimed_by__isnull=True).update(
            claimed_by=user, claimed_at=now
        )
        if n:
            GateEvent.objects.create(
                gate_id=gate_id, kind=GateEventKind.CLAIMED, actor=user.get_username(), at=now
            )
    gate = get_gate(gate_id)
    if n or (gate.is_open and gate.claimed_by_id == user.pk):
        return gate
    if not gate.is_open:
        raise GateClosedError(closed_message(gate), gate)
    raise GateClaimedError(_claimed_message(gate), gate)


def release_gate(gate_id: Any, user: Any) -> Gate:
    """Give up the claim. Only its holder may, or staff who may change gates (``overrides_claims``:
    they can free a gate someone left)."""
    now = clock.now()
    with transaction.atomic():
        gate = get_gate(gate_id)
        holder = gate.claimed_by.get_username() if gate.claimed_by else ""
        qs = Gate.objects.filter(pk=gate_id, status=GateStatus.OPEN, claimed_by__isnull=False)
        if not overrides_claims(user):
            qs = qs.filter(claimed_by=user)
        # Compare-and-swap on the holder we read, so a claim taken meanwhile is not dropped.
        n = qs.filter(claimed_by_id=gate.claimed_by_id).update(claimed_by=None, claimed_at=None)
        if n:
            detail = {"holder": holder} if holder != user.get_username() else {}
            GateEvent.objects.create(
                gate_id=gate_id,
                kind=GateEventKind.RELEASED,
                actor=user.get_username(),
                at=now,
                detail=detail,
            )
    gate = get_gate(gate_id)
    if n or (gate.is_open and gate.claimed_by_id is None):
        return gate
    if not gate.is_open:
        raise GateClosedError(closed_message(gate), gate)
    raise GateClaimedError(_claimed_message(gate), gate)


# --- deciding -----------------------------------------------------------------------------------


def decide_gate(
    gate_id: Any,
    *,
    outcome: str,
    comment: str = "",
    edits: Any = None,
    actor: str,
    user: Any = None,
    repeat_ok: bool = True,
) -> Gate:
    """Record a person's (or a service's) decision and resume the run.

    1. Validate the outcome against the gate's choices and the edits against its fields
       (``InvalidDecisionError`` lists what is wrong, field by field).
    2. In one transaction: lock the run row (the same first lock ``cancel`` takes, so the two
       serialize), compare-and-swap the gate from open to decided, resolve its journal row with
       ``complete_waiting_step`` (which wakes the run on commit) and write the audit event.
    3. If the swap touched no row, someone else closed the gate first: raise ``GateClosedError``
       saying who and when (or ``GateClaimedError`` if another user holds the claim; a service
       deciding with ``user=None`` and staff are not bound by claims).

    A second approval of a four-eyes gate by the same approver counts once and writes nothing;
    with ``repeat_ok=False`` (the browser, which gives the comment back) it raises
    ``AlreadyApprovedError`` instead of returning as if it had counted.
    """
    gate = get_gate(gate_id)
    errors: list[dict[str, str]] = []
    if outcome not in gate.choices:
        errors.append(
            {
                "field": "outcome",
                "message": (
                    f"{outcome!r} is not a choice of this gate; "
                    f"choose one of {', '.join(gate.choices)}"
                ),
            }
        )
    clean, edit_errors = validate_edits(gate.fields_schema or {}, edits)
    errors += edit_errors
    if errors:
        listing, listed = listed_errors(errors, lambda e: f"{e['field']}: {e['message']}")
        raise InvalidDecisionError(f"invalid decision: {listing}", listed)
    comment = (comment or "").strip()
    check_separation_of_duties(gate, outcome, actor, user)
    now = clock.now()
    stale_step = False
    approved_once = already = False
    with transaction.atomic():
        _lock_run(gate.run_id)
        qs = Gate.objects.filter(pk=gate.pk, status=GateStatus.OPEN)
        if user is not None and not overrides_claims(user):
            qs = qs.filter(Q(claimed_by__isnull=True) | Q(claimed_by=user))
        approvals: list[str] = []
        if gate.approvals_required > 1 and outcome == "approve":
            # Four eyes. The run lock serializes every decision on this gate (and keeps the
            # expiry sweep and a cancel out), so counting the approvals here cannot race.
            step = record_approval(
                qs, gate, actor=actor, user=user, comment=comment, edits=clean, now=now
            )
            approved_once = step.outcome in ("partial", "already")
            already = step.outcome == "already"
            approvals = step.approvers
        if approved_once:
            n = 1
        else:
            decided_by = ", ".join(approvals) if approvals else actor
            n, stale_step = _close_decided(
                qs,
                gate,
                outcome=outcome,
                comment=comment,
                edits=clean,
                decided_by=decided_by[:150],
                actor=actor,
                user=user,
                now=now,
                approvals=approvals,
            )
    gate = get_gate(gate.pk)
    if already and not repeat_ok:
        raise AlreadyApprovedError(
            "you already approved this gate; it waits for another reviewer's approval", gate
        )
    if n and not stale_step:
        return gate
    if gate.is_open:
        raise GateClaimedError(_claimed_message(gate), gate)
    raise GateClosedError(closed_message(gate), gate)


def _close_decided(
    qs: QuerySet[Gate],
    gate: Gate,
    *,
    outcome: str,
    comment: str,
    edits: Any,
    decided_by: str,
    actor: str,
    user: Any,
    now: datetime,
    approvals: list[str],
) -> tuple[int, bool]:
    """The closing compare-and-swap of ``decide_gate``: open → decided, the journal row
    resolved, the audit event written. Returns (rows swapped, whether the step was stale)."""
    n = qs.update(
        status=GateStatus.DECIDED,
        outcome=outcome,
        comment=comment,
        edits=edits,
        decided_by=decided_by,
        decided_by_user=user,
        decided_at=now,
        timed_out=False,
    )
    if not n:
        return 0, False
    result = decision_json(
        outcome=outcome,
        comment=comment,
        edits=edits,
        decided_by=decided_by,
        timed_out=False,
        decided_at=now.isoformat(),
        approvals=approvals,
    )
    if complete_waiting_step(gate.step_id, result=result, extra={"decided_by": decided_by}):
        detail = _detail(outcome, comment, edits)
        if approvals:
            detail["approvals"] = approvals
        GateEvent.objects.create(
            gate=gate,
            kind=GateEventKind.DECIDED,
            actor=actor[:150],
            at=now,
            detail=detail,
        )
        record_corrections(gate, edits, now)
        return n, False
    # The journal row no longer waits (the run was restarted or canceled without the gate
    # hearing of it): the decision cannot reach the run, so close the gate as canceled rather
    # than pretend it was decided.
    Gate.objects.filter(pk=gate.pk).update(
        status=GateStatus.CANCELED,
        outcome="",
        comment="",
        edits=None,
        decided_by="",
        decided_by_user=None,
        timed_out=False,
    )
    GateEvent.objects.create(
        gate=gate,
        kind=GateEventKind.CANCELED,
        at=now,
        detail={"reason": "the run no longer waits for it"},
    )
    return n, True


# --- four eyes ----------------------------------------------------------------------------------


class SeparationOfDutiesError(InvalidStateError, PermissionError):
    """Whoever started the run may not approve it (the gate has ``separation_of_duties``).

    An ``InvalidStateError`` so that a caller handling "this gate does not take my decision"
    in general handles it too; the pages answer 403 and the API 403 ``forbidden``."""

    def __init__(self, message: str, gate: Gate | None = None) -> None:
        super().__init__(message)
        self.gate = gate


def started_the_run(gate: Gate, actor: str, user: Any = None) -> bool:
    """Whether ``actor`` (a username or ``api:<key prefix>``) started the gate's run.

    A signed-in ``user`` is compared by id when the run recorded its starter's
    (``Run.created_by_user_id``): a renamed starter is still barred, and an account later
    given their name is not. Otherwise (a key, a caller without a user, a run without the id)
    the names are compared."""
    run = gate.run
    if user is not None and run.created_by_user_id is not None:
        return bool(run.created_by_user_id == user.pk)
    return bool(actor) and run.created_by == actor


def check_separation_of_duties(gate: Gate, outcome: str, actor: str, user: Any = None) -> None:
    """Raise ``SeparationOfDutiesError`` if ``actor`` (signed in as ``user``, if one is given)
    started the run and tries to approve a gate with separation of duties. Rejecting (or any
    other outcome) stays allowed: the rule only stops anyone from waving through their own
    work."""
    if gate.separation_of_duties and outcome == "approve" and started_the_run(gate, actor, user):
        raise SeparationOfDutiesError(
            f"separation of duties: {actor} started this run, so another reviewer must approve it",
            gate,
        )


@dataclass(frozen=True)
class ApprovalStep:
    """What one approval did: ``partial`` (recorded, more needed), ``complete`` (this one was
    the last needed), ``already`` (this approver had approved; it counts once) or ``closed``
    (the gate no longer takes decisions from this caller)."""

    outcome: str
    approvers: list[str]


def approvers_of(gate_id: Any) -> list[str]:
    """The names the gate's approvals were recorded under, oldest first (to show them)."""
    return list(
        GateApproval.objects.filter(gate_id=gate_id)
        .order_by("at", "id")
        .values_list("approver", flat=True)
    )


def approved_by(gate_id: Any, *, actor: str, user: Any = None) -> bool:
    """Whether this approver already approved the gate. A signed-in ``user`` is known by id,
    never by name: a reviewer renamed after approving has approved (one person cannot close
    a four-eyes gate twice), and an account later given their name has not. A caller without
    a user (an API key, ``api:<prefix>``) is known by ``actor``."""
    approvals = GateApproval.objects.filter(gate_id=gate_id)
    who = user if user is not None else _named_user(actor)
    if who is not None:
        return approvals.filter(user_id=who.pk).exists()
    return approvals.filter(approver=actor[:150]).exists()


def _named_user(actor: str) -> Any:
    """The account ``actor`` names, for a decision made without a user (code calling
    ``decide_gate`` with ``actor=`` a username): its approval is that person's, by id, as
    their own on the web is. None for an API key (``api:<prefix>``) or a name no account has.
    (Matching name-only approvals by name instead took a deleted approver's approval for the
    new account later given their name.)"""
    if not actor or actor.startswith("api:"):
        return None
    return get_user_model().objects.filter(username=actor[:150]).first()


def record_approval(
    qs: QuerySet[Gate],
    gate: Gate,
    *,
    actor: str,
    user: Any,
    comment: str,
    now: datetime,
    edits: Any = None,
) -> ApprovalStep:
    """Record ``actor``'s approval of a gate that needs several. Call inside ``decide_gate``'s
    transaction, after the run row is locked.

    1. Lock the gate row if it still takes this caller's decision (``qs``: open, and not
       claimed by someone else); otherwise report ``closed`` and let the caller explain.
    2. An approver who already approved counts once: nothing is written.
    3. Otherwise write the approval; if it is not the last one needed, audit it as an
       ``approved`` event (with the approver's comment and edits: the decision itself carries
       the edits of the approval that closes the gate) and drop the approver's claim, so the
       next approver can decide.
    """
    locked = qs
    if connection.features.has_select_for_update:
        locked = locked.select_for_update(no_key=True)  # events refer to the gate: see _lock_run
    if not locked.exists():
        return ApprovalStep("closed", [])
    approver = actor[:150]
    rows = list(
        GateApproval.objects.filter(gate_id=gate.pk)
        .order_by("at", "id")
        .values_list("approver", "user_id")
    )
    approvers = [name for name, _ in rows]
    # Who approved is a user id (``approved_by``): the signed-in user's, or the account a
    # decision without a user names; a name for a key.
    who = user if user is not None else _named_user(approver)
    if who is not None:
        already = any(user_id == who.pk for _, user_id in rows)
    else:
        already = approver in approvers
    if already:
        return ApprovalStep("already", approvers)
    GateApproval.objects.create(gate=gate, approver=approver, user=who, comment=comment, at=now)
    approvers.append(approver)
    if len(approvers) >= gate.approvals_required:
        return ApprovalStep("complete", approvers)
    detail: dict[str, Any] = {"count": len(approvers), "required": gate.approvals_required}
    if comment:
        detail["comment"] = comment
    if edits is not None:
        detail["edits"] = edits
    GateEvent.objects.create(
        gate=gate, kind=GateEventKind.APPROVED, actor=approver, at=now, detail=detail
    )
    if user is not None:
        Gate.objects.filter(pk=gate.pk, claimed_by=user).update(claimed_by=None, claimed_at=None)
    return ApprovalStep("partial", approvers)


@dataclass(frozen=True)
class FormValues:
    """What a gate's edits form starts from (``values``): the AI's values or the schema's
    defaults (``reviews.schema.initial_values``), and on a four-eyes gate the edits of the
    latest approval that carried some, by ``edited_by``, for the ``corrected`` fields (those
    that differ from the AI's), so the next approver sees them and keeps them unless changed."""

    values: dict[str, Any]
    edited_by: str = ""
    corrected: tuple[str, ...] = ()


def form_values(gate: Gate) -> FormValues:
    schema = gate.fields_schema or {}
    values = initial_values(schema, gate.payload)
    approved = latest_approval_edits(gate)
    if approved is None:
        return FormValues(values)
    approver, edits = approved
    fields = properties(schema)
    changed = tuple(
        name for name, _, _ in corrections(schema, gate.payload, edits) if name in fields
    )
    values.update({name: value for name, value in edits.items() if name in fields})
    return FormValues(values, approver, changed)


def latest_approval_edits(gate: Gate) -> tuple[str, dict[str, Any]] | None:
    """(approver, edits) of the latest approval of a four-eyes gate that carried edits (its
    ``approved`` event: the decision carries only the closing approval's), or None."""
    if gate.approvals_required <= 1 or gate.pk is None:
        return None
    events = GateEvent.objects.filter(gate_id=gate.pk, kind=GateEventKind.APPROVED)
    for event in events.order_by("-at", "-id").only("actor", "detail"):
        edits = event.detail.get("edits") if isinstance(event.detail, dict) else None
        if isinstance(edits, dict):
            return event.actor, edits
    return None


def record_corrections(gate: Gate, edits: Any, now: datetime) -> None:
    """One ``GateCorrection`` per field the decision changed (what the insights page counts),
    written in the decision's transaction."""
    rows = [
        GateCorrection(gate_id=gate.pk, field=name[:200], before=before, after=after, at=now)
        for name, before, after in corrections(gate.fields_schema or {}, gate.payload, edits)
    ]
    if rows:
        GateCorrection.objects.bulk_create(rows)


def _detail(outcome: str, comment: str, edits: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"outcome": outcome}
    if comment:
        detail["comment"] = comment
    if edits is not None:
        detail["edits"] = edits
    return detail


def _lock_run(run_id: Any) -> None:
    """Lock the gate's run row against other writers (a cancel, an expiry, another decision):
    FOR NO KEY UPDATE, so that a sweep inserting a notification that refers to the run (its
    foreign key takes FOR KEY SHARE) does not deadlock with this (``services._locked``)."""
    qs = Run.objects.filter(pk=run_id)
    if connection.features.has_select_for_update:
        qs = qs.select_for_update(no_key=True)
    list(qs.values_list("pk", flat=True))


# --- expiry -------------------------------------------------------------------------------------


def expire_due_gates(
    now: datetime | None = None, batch: int | None = None, max_batches: int | None = None
) -> int:
    """Close every open gate whose deadline passed with its ``on_timeout`` outcome and resume
    the runs. Called by the ``reviews.expire_gates`` beat task; idempotent. Returns how many
    gates it expired.

    Works in batches, each one transaction:

    1. Pick due open gates and lock them and their runs, skipping any row someone holds (a
       second sweeper, a reviewer deciding that gate, a cancel of that run): their gate is
       left for the next sweep, by which time it is closed or still due. Compare-and-swap the
       picked gates open → expired (outcome = on_timeout, decided_by empty, timed_out) and
       read back which ones this batch closed. On PostgreSQL that is one statement,
       ``UPDATE … FROM (SELECT … FOR UPDATE OF gate, run SKIP LOCKED) RETURNING``.
    2. Resolve their waiting journal rows through the engine's ``complete_waiting_steps``,
       which wakes their runs (one statement per distinct outcome). A gate whose step no
       longer waits is closed as canceled, not as expired.
    3. Write the audit events (one statement) and the claimants' notifications, in the same
       transaction. The doorbells ring on commit, in bursts (``ring_for_runs``).

    A batch that fails is logged and the sweep stops there; the next one retries it.

    Deadlines are on the engine's clock (``workflows.core.clock``, the database's), as the
    step that opened the gate wrote them: a host whose clock is off expires nothing early
    or late.
    """
    now = now or clock.now()
    batch = batch or settings.SLUICE_GATE_EXPIRY_BATCH
    max_batches = max_batches or settings.SLUICE_GATE_EXPIRY_MAX_BATCHES
    total = 0
    skip: set[int] = set()
    for _ in range(max_batches):
        try:
            selected, expired, skipped = _expire_batch(now, batch, skip)
        except Exception:
            log.exception("gate expiry batch failed; the next sweep retries it")
            break
        total += expired
        skip |= skipped
        if selected < batch:
            break
    if total:
        log.info("expired %d gates", total)
    return total


@dataclass(frozen=True)
class _Expired:
    """A gate this batch closed, as the compare-and-swap returned it."""

    gate_id: int
    run_id: Any
    step_id: int
    outcome: str
    claimed_by_id: int | None
    approvals_required: int


def _expire_batch(now: datetime, batch: int, skip: set[int]) -> tuple[int, int, set[int]]:
    """One batch: (gates picked, gates expired, gates skipped because their run was held)."""
    with transaction.atomic():
        closed_at = clock.now()
        skipped: set[int] = set()
        if connection.vendor == "postgresql":
            rows = _close_due_postgres(now, batch, closed_at)
            selected = len(rows)
        else:
            selected, rows, skipped = _close_due(now, batch, skip, closed_at)
        if rows:
            resolved = _resolve_expired(rows, closed_at)
            # Tell the claimants, in this transaction (reviews.notifications).
            from reviews.notifications import gates_expired

            claimed = [r.gate_id for r in rows if r.claimed_by_id and r.step_id in resolved]
            if claimed:
                gates_expired(claimed)
    return selected, len(rows), skipped


_EXPIRE_SQL = """
UPDATE {gate} SET status = %s, outcome = on_timeout, comment = '', edits = NULL,
    decided_by = '', decided_by_user_id = NULL, decided_at = %s, timed_out = TRUE
WHERE id = ANY(ARRAY(
    SELECT d.id FROM {gate} AS d JOIN {run} AS r ON r.id = d.run_id
    WHERE d.status = %s AND d.deadline <= %s
    ORDER BY d.deadline, d.id
    LIMIT %s
    FOR UPDATE OF d, r SKIP LOCKED
)) AND status = %s
RETURNING id, run_id, step_id, outcome, claimed_by_id, approvals_required
"""


def _close_due_postgres(now: datetime, batch: int, closed_at: datetime) -> list[_Expired]:
    """Step 1 in one statement. The row locks make the compare-and-swap certain: nobody else
    can close a gate we locked, so every row picked comes back closed by us. A row whose
    gate or run is locked is skipped (never waited for), so the lock order of decide and
    cancel (run, then gate) cannot deadlock with us. The picked ids are an array
    (``ARRAY(SELECT …)``), so the update finds its rows by primary key whatever the number
    of open gates, instead of joining them against every open gate."""
    sql = _EXPIRE_SQL.format(gate=Gate._meta.db_table, run=Run._meta.db_table)
    params: list[Any] = [
        GateStatus.EXPIRED,
        closed_at,
        GateStatus.OPEN,
        now,
        batch,
        GateStatus.OPEN,
    ]
    with connection.cursor() as cur:
        cur.execute(sql, params)
        found = cur.fetchall()
    return sorted((_Expired(*row) for row in found), key=lambda r: r.gate_id)


def _close_due(
    now: datetime, batch: int, skip: set[int], closed_at: datetime
) -> tuple[int, list[_Expired], set[int]]:
    """Step 1 through the ORM (SQLite, the embedded default): select, lock where the
    database has row locks, compare-and-swap, read back."""
    skip_locked = connection.features.has_select_for_update_skip_locked
    due = Gate.objects.filter(status=GateStatus.OPEN, deadline__lte=now)
    if skip:
        due = due.exclude(pk__in=skip)
    if skip_locked:
        due = due.select_for_update(skip_locked=True)
    picked = list(
        due.order_by("deadline", "id").values_list("pk", "run_id", "step_id", "on_timeout")[:batch]
    )
    if not picked:
        return 0, [], set()
    runs = Run.objects.filter(pk__in={r[1] for r in picked})
    if skip_locked:
        runs = runs.select_for_update(skip_locked=True, no_key=True)
    locked = set(runs.values_list("pk", flat=True))
    skipped = {r[0] for r in picked if r[1] not in locked}
    ids = [r[0] for r in picked if r[1] in locked]
    if not ids:
        return len(skipped), [], skipped
    Gate.objects.filter(pk__in=ids, status=GateStatus.OPEN).update(
        status=GateStatus.EXPIRED,
        outcome=F("on_timeout"),
        comment="",
        edits=None,
        decided_by="",
        decided_by_user=None,
        decided_at=closed_at,
        timed_out=True,
    )
    # Keep exactly the gates this update closed: without row locks (SQLite serializes
    # writers instead) another closer could have slipped in between.
    rows = [
        _Expired(*row)
        for row in Gate.objects.filter(pk__in=ids, status=GateStatus.EXPIRED, decided_at=closed_at)
        .order_by("pk")
        .values_list("pk", "run_id", "step_id", "outcome", "claimed_by_id", "approvals_required")
    ]
    return len(ids) + len(skipped), rows, skipped


def _resolve_expired(rows: list[_Expired], closed_at: datetime) -> set[int]:
    """Resolve the journal rows of the gates this batch expired through the engine's
    ``complete_waiting_steps`` (one compare-and-swap per distinct outcome), ring for the runs
    it woke, and write the audit events. Returns the steps resolved.

    A gate whose step no longer waits (its run was restarted or canceled without the gate
    hearing of it) did not advance anything: it is closed as canceled, not as expired and
    auto-advanced, like a decision that comes too late (``decide_gate``).
    """
    by_outcome: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_outcome[r.outcome].append(r.step_id)
    resolved: set[int] = set()
    woken: list[tuple[Any, int]] = []
    for outcome, step_ids in by_outcome.items():
        result = decision_json(
            outcome=outcome,
            comment="",
            edits=None,
            decided_by="",
            timed_out=True,
            decided_at=closed_at.isoformat(),
        )
        done, runs = complete_waiting_steps(step_ids, result=result, timed_out=True, now=closed_at)
        resolved |= done
        woken += runs
    ring_for_runs(sorted({(str(pk), gen) for pk, gen in woken}))
    stale = [r.gate_id for r in rows if r.step_id not in resolved]
    if stale:
        Gate.objects.filter(pk__in=stale, status=GateStatus.EXPIRED).update(
            status=GateStatus.CANCELED, outcome="", timed_out=False
        )
    # A four-eyes gate that expired with some approvals keeps them (GateApproval rows), and
    # its audit event names them next to the default it advanced with. Only such gates can
    # have any, so the others cost no query.
    partial: dict[int, list[str]] = defaultdict(list)
    four_eyes = [r.gate_id for r in rows if r.approvals_required > 1]
    if four_eyes:
        approvals = GateApproval.objects.filter(gate_id__in=four_eyes).order_by("at", "id")
        for gate_id, approver in approvals.values_list("gate_id", "approver"):
            partial[gate_id].append(approver)
    _write_events(
        [
            (
                r.gate_id,
                GateEventKind.EXPIRED,
                {"outcome": r.outcome}
                | ({"approvals": partial[r.gate_id]} if r.gate_id in partial else {}),
            )
            if r.step_id in resolved
            else (
                r.gate_id,
                GateEventKind.CANCELED,
                {"reason": "the run no longer waits for it"},
            )
            for r in rows
        ],
        closed_at,
    )
    return resolved


def _write_events(events: list[tuple[int, str, dict[str, Any]]], at: datetime) -> None:
    """System audit events (no actor), written together: on PostgreSQL one
    ``INSERT … SELECT FROM unnest(arrays)``, which for a thousand gates costs a fraction of
    building and sending a thousand model instances."""
    if not events:
        return
    if connection.vendor != "postgresql":
        GateEvent.objects.bulk_create(
            [GateEvent(gate_id=g, kind=kind, at=at, detail=d) for g, kind, d in events]
        )
        return
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {GateEvent._meta.db_table} (gate_id, kind, actor, at, detail) "
            "SELECT g, k, '', %s, d FROM unnest(%s::bigint[], %s::varchar[], %s::jsonb[]) "
            "AS e(g, k, d)",
            [
                at,
                [g for g, _, _ in events],
                [str(kind) for _, kind, _ in events],
                [Jsonb(d) for _, _, d in events],
            ],
        )


def ring_for_runs(runs: list[tuple[str, int]]) -> None:
    """Ring for the runs woken in this transaction, once it commits.

    A few runs get the engine's own doorbell each. A burst (many gates due at once) is sent as
    ``reviews.resume_runs`` messages of ``SLUICE_GATE_RESUME_CHUNK`` runs, each advancing its
    runs one after the other in whichever worker takes it: sending and receiving a Celery
    message costs about as much as resuming a run, so 10,000 single doorbells would double the
    work. Nothing is lost if a message is: every run is marked runnable
    (``wake_requested_at``) in this transaction, and the engine's sweep rings again for any
    run nobody took.
    """
    chunk = max(1, int(settings.SLUICE_GATE_RESUME_CHUNK))
    if len(runs) < chunk:
        for run_id, generation in runs:
            ring_on_commit(run_id, generation)
        return
    chunks = [runs[i : i + chunk] for i in range(0, len(runs), chunk)]
    transaction.on_commit(lambda: send_resume_chunks(chunks))


def send_resume_chunks(chunks: list[list[tuple[str, int]]]) -> None:
    """One round trip for the whole burst (``send_tasks``). Through Celery's ``apply_async``,
    each message also built a printable copy of its fifty run ids (``saferepr``) and a new
    Redis client: expiring 3,000 gates in one process took 390–446 ms that way, 337–425 ms
    this way (docs/performance.md)."""
    try:
        send_tasks(
            [
                (
                    RESUME_RUNS,
                    [[[str(run_id), generation] for run_id, generation in runs]],
                    "default",
                )
                for runs in chunks
            ]
        )
    except Exception:  # The engine's sweep rings again from the tables.
        log.warning("could not send resume messages; the sweep will ring", exc_info=True)


# --- reassigning --------------------------------------------------------------------------------


class ReassignError(InvalidInputError):
    """The gate cannot be handed to that reviewer (unknown, cannot see the gate, …)."""


def may_reassign(gate: Gate, user: Any) -> bool:
    """The claimant of an open gate, a member of its escalation group once it escalated, or
    staff who may override claims (``overrides_claims``) may hand it to another reviewer."""
    if not gate.is_open or not user.is_authenticated:
        return False
    if overrides_claims(user) or (gate.claimed_by_id is not None and gate.claimed_by_id == user.pk):
        return True
    return gate.escalated_at is not None and gate.escalate_to in review_groups(user)


def reassign_gate(gate_id: Any, user: Any, to: str) -> Gate:
    """Hand an open gate to the reviewer named ``to``: they hold its claim from now on.

    1. ``user`` must be allowed (``may_reassign``); the target must be an active user who can
       see the gate (its group or, once escalated, its escalation group, and the run's
       tenant), so a gate is never handed to someone who could not open it.
    2. Compare-and-swap the claim from the holder read in step 1 to the target, so a claim or
       a decision that happened meanwhile is not overwritten.
    3. Audit it as a ``reassigned`` event (from whom, to whom) and notify the new holder, in
       the same transaction.
    """
    from django.contrib.auth import get_user_model

    gate = get_gate(gate_id, user)
    if not gate.is_open:
        raise GateClosedError(closed_message(gate), gate)
    if not may_reassign(gate, user):
        raise GateClaimedError(
            "only the reviewer who claimed this gate, a member of its escalation group once it "
            "escalated, or staff who may override claims can reassign it",
            gate,
        )
    name = (to or "").strip()
    # A NUL is no username (and PostgreSQL refuses it in a query's text).
    found = get_user_model().objects.filter(username=name, is_active=True)
    target = found.first() if "\x00" not in name else None
    if target is None or not gates_visible_to(target).filter(pk=gate.pk).exists():
        raise ReassignError(
            f"{name or 'nobody'} is not a reviewer who can see this gate",
            [{"field": "to", "message": "name a reviewer of the gate's group and tenant"}],
        )
    if gate.claimed_by_id == target.pk:
        raise ReassignError(
            f"{name} already holds this gate", [{"field": "to", "message": "already holds it"}]
        )
    if gate.separation_of_duties and started_the_run(gate, name, target):
        raise ReassignError(
            f"{name} started this run, so with separation of duties they may not approve it",
            [{"field": "to", "message": "name a reviewer who did not start the run"}],
        )
    holder = gate.claimed_by.get_username() if gate.claimed_by else ""
    now = clock.now()
    with transaction.atomic():
        # Holding the claim, someone who may not approve would keep every other approver out.
        # Checked under the run's lock, as a decision takes it first: an approval by the
        # target that commits meanwhile is seen here, not after the claim moved to them.
        _lock_run(gate.run_id)
        if gate.approvals_required > 1 and approved_by(gate.pk, actor=name, user=target):
            raise ReassignError(
                f"{name} has already approved this gate, which needs another reviewer's approval",
                [{"field": "to", "message": "name a reviewer who has not approved it yet"}],
            )
        n = Gate.objects.filter(
            pk=gate.pk, status=GateStatus.OPEN, claimed_by_id=gate.claimed_by_id
        ).update(claimed_by=target, claimed_at=now)
        if n:
            GateEvent.objects.create(
                gate=gate,
                kind=GateEventKind.REASSIGNED,
                actor=user.get_username(),
                at=now,
                detail={"from": holder, "to": target.get_username()},
            )
            from reviews.notifications import gate_reassigned

            gate_reassigned(gate, target.pk)
    gate = get_gate(gate.pk)
    if n:
        return gate
    if not gate.is_open:
        raise GateClosedError(closed_message(gate), gate)
    raise GateClaimedError(_claimed_message(gate), gate)


# --- escalation ---------------------------------------------------------------------------------


def escalate_due_gates(now: datetime | None = None, batch: int | None = None) -> int:
    """Escalate every open, unclaimed gate whose ``escalate_at`` passed: from now on the members
    of its ``escalate_to`` group see it too. Called by the same beat task as the expiry sweep
    (a deadline column, not a scheduled task per gate); idempotent. Returns how many gates it
    escalated.

    1. Select the due gates ``FOR UPDATE SKIP LOCKED`` (a decision or a claim in flight, or a
       second sweeper, makes us skip the row; the next sweep sees it again if still due).
    2. Compare-and-swap ``escalated_at`` from empty to now, on the gates still open and
       unclaimed, and read back which ones this sweep set.
    3. Write one ``escalated`` audit event per gate, and notify the escalation group
       (``reviews.notifications``) in the same transaction.

    A gate claimed when it becomes due is not escalated while the claim lasts: someone is on
    it. If the claim is released before the deadline, the next sweep escalates it.
    """
    now = now or clock.now()
    batch = batch or settings.SLUICE_GATE_EXPIRY_BATCH
    skip_locked = connection.features.has_select_for_update_skip_locked
    with transaction.atomic():
        due = Gate.objects.filter(
            status=GateStatus.OPEN,
            escalate_at__lte=now,
            escalated_at__isnull=True,
            claimed_by__isnull=True,
        )
        if skip_locked:
            due = due.select_for_update(skip_locked=True)
        ids = list(due.order_by("escalate_at", "id").values_list("pk", flat=True)[:batch])
        if not ids:
            return 0
        at = clock.now()
        Gate.objects.filter(
            pk__in=ids, status=GateStatus.OPEN, escalated_at__isnull=True, claimed_by__isnull=True
        ).update(escalated_at=at)
        mine = list(
            Gate.objects.filter(pk__in=ids, escalated_at=at).values_list("pk", "escalate_to")
        )
        GateEvent.objects.bulk_create(
            [
                GateEvent(gate_id=pk, kind=GateEventKind.ESCALATED, at=at, detail={"to": to})
                for pk, to in mine
            ]
        )
        from reviews.notifications import gates_escalated

        gates_escalated([pk for pk, _ in mine])
    if mine:
        log.info("escalated %d gates", len(mine))
    return len(mine)


# --- canceling ----------------------------------------------------------------------------------


def cancel_open_gates(run: Run, reason: str = "") -> int:
    """Close the open gates of a run that ended, or that a cancel stopped while its undos
    run. Runs inside the transaction that did it (``workflows.core.signals.run_finished``,
    ``run_stopped``), which holds the run's lock."""
    now = clock.now()
    reason = reason or f"run {run.status}"
    open_gates = Gate.objects.filter(run_id=run.pk, status=GateStatus.OPEN)
    ids = list(open_gates.values_list("pk", flat=True))
    if not ids:
        return 0
    n = Gate.objects.filter(pk__in=ids, status=GateStatus.OPEN).update(
        status=GateStatus.CANCELED, decided_at=now
    )
    GateEvent.objects.bulk_create(
        [
            GateEvent(
                gate_id=gate_id,
                kind=GateEventKind.CANCELED,
                at=now,
                detail={"reason": reason},
            )
            for gate_id in ids
        ]
    )
    return n


def run_may_hold_gates(run: Run, status: str) -> bool:
    """Whether ``run``, ending with ``status``, may leave a gate open: one that succeeded got
    past every gate it opened (it cannot return while suspended on one), so only failed and
    canceled runs can."""
    return status != RunStatus.SUCCEEDED


def on_run_stopped(sender: Any, run: Run, **kwargs: Any) -> None:
    """Receiver of ``run_stopped``: a canceled run that undoes its steps first takes no more
    decisions, so its gates close now, not when the undos are done."""
    cancel_open_gates(run, "run canceled")


def on_run_finished(sender: Any, run: Run, **kwargs: Any) -> None:
    """Receiver of ``run_finished`` (``wants``: ``run_may_hold_gates``); skipping the query
    for a run that succeeded keeps the common path free."""
    if not run_may_hold_gates(run, run.status):
        return
    cancel_open_gates(run)
