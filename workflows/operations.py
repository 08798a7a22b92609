"""What operators do to runs from the admin and the run pages: cancel, retry the failed step,
restart from a step, fork from a step. Each is one call to the engine's services; this module
only picks the step to retry and turns the engine's refusals into messages for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workflows.core import compensation, forking, services
from workflows.core.audit import Actor
from workflows.core.errors import InvalidInputError, InvalidStateError, RunNotFoundError
from workflows.models import RunAction, Step, StepKind, StepStatus


@dataclass(frozen=True)
class Outcome:
    run_id: Any
    ok: bool
    message: str


def failed_position(run_id: Any) -> int | None:
    """The journal position of the run's first failed step (a failed branch counts for its
    group's position), or None when no step failed (the run failed elsewhere). A failed undo
    is not one: undos are journaled after the handler's steps, and a retry re-runs the
    handler (the restart then resumes at its first unfinished step)."""
    row = (
        Step.objects.filter(run_id=run_id, superseded=False, status=StepStatus.FAILED)
        .exclude(kind=StepKind.COMPENSATE)
        .order_by("position")
        .values_list("position", flat=True)
        .first()
    )
    return int(row) if row is not None else None


def retry_position(run_id: Any, failed: int | None) -> int | None:
    """Where "retry failed step" restarts a failed run: its failed step, or, when the run
    compensated, its first undone step if that comes earlier (what was undone runs again)."""
    undone = compensation.first_undone_position(run_id) if failed is not None else None
    if undone is not None and failed is not None:
        return min(failed, undone)
    return failed


def cancel_run(run_id: Any, actor: Actor, reason: str = "") -> Outcome:
    try:
        services.cancel(run_id, reason, actor=actor)
    except (InvalidStateError, InvalidInputError, RunNotFoundError) as exc:
        return Outcome(run_id, False, str(exc))
    return Outcome(run_id, True, "canceled")


def retry_failed_step(run_id: Any, actor: Actor | None = None, reason: str = "") -> Outcome:
    """Restart a failed run from its failed step's position (earlier results are kept). A
    failed fan-out re-runs only its branches that did not succeed; a run that failed between
    steps resumes after its last finished position."""
    try:
        run = services.get_run(run_id)
    except RunNotFoundError as exc:
        return Outcome(run_id, False, str(exc))
    if run.status != "failed":
        return Outcome(run_id, False, f"is {run.status}; only a failed run has a step to retry")
    failed = failed_position(run_id)
    try:
        # A compensated run restarts at the latest from its first undone step (the engine
        # moves ``from_step`` back there itself).
        run = services.restart(
            run_id,
            from_step=failed,
            only_failed_branches=True,
            actor=actor,
            reason=reason,
            action=RunAction.RETRY,
        )
    except (InvalidStateError, InvalidInputError, RunNotFoundError) as exc:
        return Outcome(run_id, False, str(exc))
    # A compensated run restarts at the latest at its first undone step: say where it did.
    actual = run.audit.order_by("-id").values_list("from_step", flat=True).first()
    if failed is not None and actual is not None and actual != failed:
        return Outcome(
            run_id, True, f"retrying from step {actual} (steps from {actual} on were undone)"
        )
    # Without a failed step it resumes at its first unfinished one (a canceled wait, say), or
    # after its last finished one when the handler raised between steps.
    at = failed or actual
    journaled = at is not None and Step.objects.filter(run_id=run_id, position=at).exists()
    where = f"step {at}" if journaled else "after its last finished step"
    return Outcome(run_id, True, f"retrying from {where}")


def restart_run(
    run_id: Any,
    from_step: int,
    actor: Actor | None = None,
    reason: str = "",
    max_cost: Any = None,
) -> Outcome:
    try:
        run = services.restart(
            run_id, from_step=from_step, actor=actor, reason=reason, max_cost=max_cost
        )
    except (InvalidStateError, InvalidInputError, RunNotFoundError) as exc:
        return Outcome(run_id, False, str(exc))
    # A compensated run restarts at its first undone step at the latest: say where it did.
    actual = run.audit.order_by("-id").values_list("from_step", flat=True).first() or from_step
    if actual != from_step:
        return Outcome(
            run_id, True, f"restarted from step {actual} (steps from {actual} on were undone)"
        )
    return Outcome(run_id, True, f"restarted from step {from_step}")


def fork_run(run_id: Any, from_step: int, actor: Actor | None = None, reason: str = "") -> Outcome:
    """A new run reusing ``run_id``'s journal before ``from_step``; the outcome's ``run_id`` is
    the new run's when it worked (the page goes there), the original's when it was refused."""
    try:
        new = forking.fork(run_id, from_step=from_step, actor=actor, reason=reason)
    except (InvalidInputError, RunNotFoundError) as exc:
        return Outcome(run_id, False, str(exc))
    return Outcome(new.pk, True, f"forked from step {from_step} as run {str(new.pk)[:8]}")
