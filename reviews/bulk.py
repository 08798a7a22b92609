"""Bulk decisions: approve or reject many gates of the queue with one comment.

Each gate is decided on its own through ``services.decide_gate``, with its own transaction and
compare-and-swap, exactly as if the reviewer had opened it and pressed the button: a gate that
expired, was decided or claimed by someone else meanwhile is skipped with the reason, and the
others are decided regardless. Only gates the reviewer may see are touched (``gates_visible_to``:
their groups, their tenant); an id they may not see is skipped as "not found", the same answer
as for an id that does not exist, so the result leaks nothing.

Four-eyes gates (``approvals=2``) take a bulk approval as one approval: when more are needed the
gate stays open, and the result lists it as approved "1 of 2" rather than decided. A gate the
reviewer already approved, or may not approve under separation of duties, is skipped with why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reviews import services
from reviews.models import Gate, GateStatus
from reviews.schema import properties, validate_edits

# One form post decides at most this many gates (a queue page shows 50).
MAX_BULK = 200
OUTCOMES = ("approve", "reject")


@dataclass(frozen=True)
class Skipped:
    gate_id: int
    title: str
    reason: str  # "expired", "claimed", "decided", "canceled", "needs_edits", "no_choice", …
    message: str  # the reason in a reviewer's words


@dataclass(frozen=True)
class Partial:
    """A four-eyes gate whose approval was recorded but that awaits more approvers."""

    gate: Gate
    count: int  # approvals so far, this one included
    required: int


@dataclass
class BulkResult:
    outcome: str
    decided: list[Gate] = field(default_factory=list)
    partial: list[Partial] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _closed_reason(gate: Gate) -> str:
    reasons: dict[str, str] = {
        GateStatus.EXPIRED: "expired",
        GateStatus.DECIDED: "decided",
        GateStatus.CANCELED: "canceled",
    }
    return reasons.get(gate.status, "closed")


def _prefilled_edits(gate: Gate) -> tuple[Any, list[dict[str, str]]]:
    """What deciding the gate's page without touching its fields would send: the schema's
    defaults or the AI's values. Errors when a required field has none (it needs edits)."""
    schema = gate.fields_schema or {}
    if not properties(schema):
        return None, []
    values = services.form_values(gate).values  # a four-eyes gate: the first approver's too
    # decide_gate validates them again and stores the clean form; hand it the raw values.
    return values, validate_edits(schema, values)[1]


def bulk_decide(
    user: Any, gate_ids: list[Any], *, outcome: str, comment: str = "", actor: str = ""
) -> BulkResult:
    """Decide each of ``gate_ids`` with ``outcome`` and ``comment`` as ``user``; report which
    were decided and which were skipped, and why. Ids are taken in the order given, once."""
    if outcome not in OUTCOMES:
        raise services.InvalidDecisionError(
            f"bulk decisions approve or reject, not {outcome!r}",
            [{"field": "outcome", "message": "choose approve or reject"}],
        )
    actor = actor or user.get_username()
    ids: list[int] = []
    for raw in gate_ids:
        try:
            pk = int(raw)
        except (TypeError, ValueError):
            continue
        if pk not in ids:
            ids.append(pk)
    ids = ids[:MAX_BULK]
    # An id no gate can have (SQLite refuses an integer past 64 bits) is simply not found.
    possible = [pk for pk in ids if 0 < pk < 2**63]
    visible = {
        g.pk: g
        for g in services.gates_visible_to(user)
        .filter(pk__in=possible)
        .select_related("claimed_by")
    }
    result = BulkResult(outcome=outcome)

    def skip(gate: Gate | None, pk: int, reason: str, message: str) -> None:
        title = gate.title if gate is not None else f"gate {pk}"
        result.skipped.append(Skipped(pk, title, reason, message))

    for pk in ids:
        gate = visible.get(pk)
        if gate is None:
            skip(None, pk, "not_found", "not found, or not in your groups")
            continue
        if not gate.is_open:
            skip(gate, pk, _closed_reason(gate), services.closed_message_for(gate, user))
            continue
        if gate.claimed_by_id not in (None, user.pk) and not services.overrides_claims(user):
            holder = gate.claimed_by.get_username() if gate.claimed_by else "another reviewer"
            skip(gate, pk, "claimed", f"claimed by {holder}")
            continue
        if outcome not in gate.choices:
            skip(gate, pk, "no_choice", f"“{outcome}” is not one of its choices")
            continue
        four_eyes = outcome == "approve" and gate.approvals_required > 1
        if four_eyes and services.approved_by(gate.pk, actor=actor, user=user):
            # decide_gate would count it once and change nothing: say so instead of "approved".
            skip(gate, pk, "already_approved", "you already approved it; it awaits others")
            continue
        # Only an approval carries the fields' values; a rejection changes none of them.
        edits, errors = _prefilled_edits(gate) if outcome == "approve" else (None, [])
        if errors:
            fields = ", ".join(sorted({e["field"] for e in errors}))
            skip(gate, pk, "needs_edits", f"needs edits ({fields}): open it to fill them in")
            continue
        try:
            decided = services.decide_gate(
                gate.pk, outcome=outcome, comment=comment, edits=edits, actor=actor, user=user
            )
        except services.SeparationOfDutiesError as exc:
            skip(gate, pk, "separation_of_duties", str(exc))
        except services.GateClaimedError as exc:
            skip(gate, pk, "claimed", str(exc).split(";")[0])
        except services.GateClosedError as exc:
            closed = exc.gate or services.get_gate(gate.pk)
            skip(gate, pk, _closed_reason(closed), services.closed_message_for(closed, user))
        except services.InvalidDecisionError as exc:
            skip(gate, pk, "needs_edits", f"needs edits: {exc}")
        else:
            if decided.is_open:
                count = len(services.approvers_of(decided.pk))
                result.partial.append(Partial(decided, count, decided.approvals_required))
            else:
                result.decided.append(decided)
    return result
