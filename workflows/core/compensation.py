"""Compensation (sagas): the undos of a failed or canceled run's completed steps.

A step call may register its undo: ``ctx.run(book_hotel, trip, compensate=cancel_hotel)`` or
``@step(compensate=cancel_hotel)``; the journal row keeps its dotted path (``Step.undo``).
When the handler fails, or the run is canceled, and a step with an undo had succeeded, the
run does not end yet: it becomes ``compensating`` (same transaction, generation fenced) and
a worker advancing it runs ``drive`` instead of the handler:

1. The plan: the live succeeded rows with an undo (inline steps and fan-out branches), last
   completed first (``finished_at``, then position and branch, descending). The journal does
   not change while a run compensates, so every replay computes the same plan.
2. Undo i is journaled at position ``last handler position + i``, kind ``compensate``, as a
   step of its own: it runs inline with the run lease, is checkpointed like any step (the
   commit that starts undo i+1 records undo i), is retried with the undo's RetryPolicy (the
   run parks, still ``compensating``, while the backoff runs), and a crash replays the plan:
   an undo already checkpointed is never run again; the one in flight runs again (undos are
   at-least-once, like steps: make them idempotent).
3. An undo that fails for good is recorded and compensation goes on with the others; the run
   then ends ``failed`` with a ``CompensationFailed`` error naming each failed undo (the
   original failure kept as ``cause``). Otherwise it ends as it would have without undos:
   ``failed`` (with the handler's error) or ``canceled``. ``on_complete`` runs once, then.

An undo receives the step's own positional and keyword arguments, plus ``result=`` the step's
result (JSON, revived to the step's return annotation when that is a pydantic model).
Canceling a compensating run stops it: the undos not yet run are skipped, and listed in the
run's error. See docs/engine.md ("Compensation").
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from workflows.core import payloads
from workflows.core.calls import error_dict, return_annotation
from workflows.core.context import Context, without_advance_failures
from workflows.core.definitions import resolve_step
from workflows.core.errors import DeterminismError, LeaseLost, StepFailed, Suspend
from workflows.core.models import Run, RunStatus, Step
from workflows.core.undos import (  # noqa: F401  (re-exported: compensation.plan, ...)
    first_undone_position,
    handler_end,
    has_undos,
    not_undone,
    plan,
    undo_label,
)

log = logging.getLogger(__name__)

# How many failed undos a CompensationFailed error lists (``undos_failed``); the count of all of
# them is ``undos_failed_count``.
UNDOS_FAILED_LISTED = 20


def _call_of(row: Step, run_id: Any) -> tuple[list[Any], dict[str, Any]]:
    """The undo's arguments: the step's own, plus ``result=`` its result."""
    call = payloads.unpack(row.args, run_id) or {}
    result = payloads.unpack(row.result, run_id)
    try:
        annotation = return_annotation(resolve_step(row.target)) if row.target else None
    except Exception:
        annotation = None
    kwargs = dict(call.get("kwargs") or {})
    kwargs["result"] = payloads.revive(result, annotation)
    return list(call.get("args") or []), kwargs


def drive(run: Run, owner: str) -> str:
    """Advance a compensating run (we hold its lease): run its undos in order, then end it.

    Returns "suspended" (parked for a retry backoff or a queued undo), "woken", "lease-lost",
    "failed" or "canceled".
    """
    rows = list(Step.objects.filter(run_id=run.pk, superseded=False).order_by("position", "branch"))
    ctx = Context(run, rows, owner)
    base = handler_end(run.pk)
    todo = plan(run.pk)
    failed: list[str] = []
    try:
        for i, row in enumerate(todo):
            ctx.skip_to(base + i)  # undo i always sits at base + i + 1, whatever came before
            failure = _undo_one(ctx, run, row)
            if failure:
                failed.append(failure)
        ctx.skip_to(base + len(todo))
        ctx.check_complete()
    except Suspend:
        try:
            return "suspended" if ctx.suspend() else "woken"
        except LeaseLost:
            ctx.charge_unrecorded()
            return "lease-lost"
    except LeaseLost:
        ctx.charge_unrecorded()  # a paid undo's cost, though its run was fenced out
        return "lease-lost"
    except DeterminismError as exc:
        failed.append(f"the undos no longer match their journal ({exc})")
    return _end(ctx, run, failed)


def _undo_one(ctx: Context, run: Run, row: Step) -> str:
    """Run the undo of ``row``; "" when it succeeded, else why it failed for good."""
    try:
        undo = resolve_step(row.undo)
    except Exception as exc:
        # Nothing to journal: the code of the undo is gone. Say so instead of looping.
        return f"undo of {undo_label(row)}: {row.undo!r} cannot be imported ({exc})"
    try:
        args, kwargs = _call_of(row, run.pk)
    except Exception as exc:
        return f"undo {undo.name} of {undo_label(row)}: its arguments cannot be read ({exc})"
    try:
        ctx.undo(undo, args, kwargs)
    except StepFailed as exc:
        message = (exc.error or {}).get("message", "") if isinstance(exc.error, dict) else ""
        kind = (exc.error or {}).get("type", "Error") if isinstance(exc.error, dict) else "Error"
        return f"undo {undo.name} of {undo_label(row)} failed: {kind}: {message}"[:500]
    return ""


def _end(ctx: Context, run: Run, failed: list[str]) -> str:
    # Without the count of failed advances it may hold (``executor.advance_failed``).
    cause = without_advance_failures(run.error, RunStatus.COMPENSATING) or {}
    status: str
    if failed:
        status = RunStatus.FAILED
        error: dict[str, Any] = {
            "type": "CompensationFailed",
            "message": (
                f"compensation failed: {len(failed)} undo(s) did not succeed: "
                + "; ".join(failed)
                + (f" (the run had {_cause_text(run, cause)})" if cause else "")
            )[:2000],
            # The first few (each already cut to 500 characters) and how many there were:
            # 2,000 failing undos made a 219 KB run error, sent to every page and webhook.
            "undos_failed": failed[:UNDOS_FAILED_LISTED],
            "undos_failed_count": len(failed),
            "cause": cause,
        }
    else:
        status = run.after_compensation or RunStatus.FAILED
        error = dict(cause)
        error["compensated"] = True
    try:
        with transaction.atomic():
            if not ctx.write_finish(status, error=error):
                raise LeaseLost
    except LeaseLost:
        ctx.charge_unrecorded()
        return "lease-lost"
    except Exception as exc:
        # A value the database refuses, say: end it anyway, failed, as the executor does.
        log.exception("could not record the end of compensating run %s", run.pk)
        ctx.discard_buffers()
        with transaction.atomic():
            if not ctx.write_finish(RunStatus.FAILED, error=error_dict(exc)):
                return "lease-lost"
        return RunStatus.FAILED
    return str(status)


def _cause_text(run: Run, cause: dict[str, Any]) -> str:
    what = "been canceled" if run.after_compensation == RunStatus.CANCELED else "failed"
    return f"{what}: {cause.get('type', 'Error')}: {cause.get('message', '')}"[:600]
