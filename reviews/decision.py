"""``ctx.review(...)``: open a gate and suspend the run until a person (or the clock) decides.

Registered as ``Context.extensions["review"]`` by ``ReviewsConfig.ready()``. The gate rides on
the engine's generic suspension: ``ctx.wait_for(kind="gate", name=title, on_open=...)`` writes a
waiting journal row, and ``on_open`` creates the ``Gate`` in that same transaction, so a run is
never suspended on a gate nobody can see. On replay the journal returns the decision that
``reviews.services`` recorded, and it is wrapped into a ``Decision`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pydantic

from workflows.core import payloads
from workflows.core.calls import duration_seconds
from workflows.models import Step

# Without a ``timeout``, a gate gets its run's review timeout (``ctx.review_timeout``), which is
# this unless the run was started with ``review_timeout``.
DEFAULT_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Decision:
    """What a gate decided. ``edits`` is the reviewer's corrected values (an instance of the
    ``fields`` model when ``fields`` was a pydantic model), or None when nothing was edited."""

    outcome: str
    comment: str = ""
    edits: Any = None
    decided_by: str = ""
    timed_out: bool = False
    decided_at: datetime | None = None
    # Who approved a gate that needed several approvals (``approvals=2``), in order; empty for
    # a gate that needed one.
    approvals: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        return self.outcome == "approve"

    @classmethod
    def from_json(cls, data: dict[str, Any], fields: Any = None) -> Decision:
        edits = data.get("edits")
        model = _model_class(fields)
        if model is not None and isinstance(edits, dict):
            try:
                edits = model.model_validate(edits)
            except pydantic.ValidationError:
                pass  # The schema changed since the decision; hand back the recorded JSON.
        at = data.get("decided_at")
        return cls(
            outcome=str(data.get("outcome", "")),
            comment=str(data.get("comment") or ""),
            edits=edits,
            decided_by=str(data.get("decided_by") or ""),
            timed_out=bool(data.get("timed_out")),
            decided_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
            approvals=tuple(str(a) for a in data.get("approvals") or ()),
        )


def _model_class(fields: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(fields, pydantic.BaseModel):
        return type(fields)
    if isinstance(fields, type) and issubclass(fields, pydantic.BaseModel):
        return fields
    return None


def review(
    ctx: Any,
    title: str,
    instruction: str = "",
    payload: Any = None,
    timeout: timedelta | float | None = None,
    on_timeout: str = "approve",
    choices: Sequence[str] = ("approve", "reject"),
    group: str = "reviewers",
    fields: Any = None,
    approvals: int = 1,
    separation_of_duties: bool = False,
    escalate_after: timedelta | float | None = None,
    escalate_to: str = "",
) -> Decision:
    """Open a review gate and wait for its decision (see the module docstring).

    ``approvals=2`` needs two distinct approvers ("approve" must be a choice); any other outcome
    from one reviewer closes the gate at once. ``separation_of_duties=True`` bars whoever
    started the run (a user, or ``api:<key prefix>``) from approving it. ``escalate_after`` with
    ``escalate_to``: a gate still unclaimed after that long becomes visible to that group too.

    The arguments are checked on every replay, before anything is written, so a mistake in a
    pipeline fails its run with a clear message instead of opening a gate nobody can close.
    """
    from reviews.schema import schema_of
    from reviews.services import open_gate
    from reviews.summary import describe_run

    title = str(title).strip()
    if not title or len(title) > 200:
        raise ValueError("a gate needs a title of 1 to 200 characters")
    for name, text in (("title", title), ("instruction", instruction), ("group", group)):
        if "\x00" in str(text):  # PostgreSQL refuses a NUL in text
            raise ValueError(f"a gate's {name} may not contain a NUL character (\\x00)")
    options = tuple(str(c) for c in choices)
    if not options or len(set(options)) != len(options) or not all(options):
        raise ValueError(f"choices must be distinct non-empty strings, not {choices!r}")
    if any(len(c) > 64 for c in options):
        raise ValueError("each choice must be at most 64 characters")
    if on_timeout not in options:
        raise ValueError(f"on_timeout {on_timeout!r} is not one of the choices {options!r}")
    if timeout is None:
        timeout = getattr(ctx, "review_timeout", None) or DEFAULT_TIMEOUT
    seconds = duration_seconds(timeout, "a gate's timeout", positive=True)
    if not group or not isinstance(group, str) or len(group) > 150:
        raise ValueError(
            "a gate needs the name of the group that reviews it (at most 150 characters)"
        )
    needed = _approvals(approvals)
    if needed > 1 and "approve" not in options:
        raise ValueError(f"approvals={needed} needs 'approve' among the choices {options!r}")
    escalate = _escalation(escalate_after, escalate_to, group)
    schema = schema_of(fields)
    data = payloads.to_json(payload, "gate payload")
    payloads.check_size(data, f"payload of gate {title!r}")

    def on_open(step_row: Step) -> None:
        subject, excerpt = describe_run(ctx.record)
        step_row.run = ctx.record  # The run at hand: notifying its gate reads its tenant.
        open_gate(
            step_row,
            pipeline=ctx.record.workflow,
            title=title,
            instruction=str(instruction),
            payload=data,
            choices=list(options),
            on_timeout=on_timeout,
            group=group,
            fields_schema=schema,
            timeout=timedelta(seconds=seconds),
            subject=subject,
            excerpt=excerpt,
            approvals_required=needed,
            separation_of_duties=bool(separation_of_duties),
            escalate_after=escalate[0] if escalate else None,
            escalate_to=escalate[1] if escalate else "",
        )

    # The deadline lives on the Gate row and the reviews sweep fires it, so the engine's
    # own wait has no timeout.
    result = ctx.wait_for(kind="gate", name=title, on_open=on_open, timeout=None)
    return Decision.from_json(result or {}, fields)


MAX_APPROVALS = 10


def _approvals(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_APPROVALS:
        raise ValueError(f"approvals must be a whole number from 1 to {MAX_APPROVALS}: {value!r}")
    return value


def _escalation(after: Any, to: Any, group: str) -> tuple[timedelta, str] | None:
    """``(escalate_after, escalate_to)`` checked, or None when the gate does not escalate."""
    if after is None and not to:
        return None
    if after is None or not to:
        raise ValueError("escalate_after and escalate_to go together: when, and to which group")
    if not isinstance(to, str) or len(to) > 150:
        raise ValueError("escalate_to is the name of a group (at most 150 characters)")
    if to == group:
        raise ValueError(f"escalate_to {to!r} is the gate's own group; name a second group")
    try:
        seconds = duration_seconds(after, "escalate_after", positive=True)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return timedelta(seconds=seconds), to
