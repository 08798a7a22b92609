"""What a run's journal says about its undos (saga compensation), as plain queries.

Split from ``workflows.core.compensation`` (which runs the undos through a ``Context``) so that
the services can ask "does this run have undos?" without importing the context: the core has
no import cycles (tests/workflows/test_core_structure.py).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Max

from workflows.core.models import Step, StepKind, StepStatus


def plan(run_id: Any) -> list[Step]:
    """The completed steps to undo, in the order their undos run (last completed first)."""
    return list(
        Step.objects.filter(run_id=run_id, superseded=False, status=StepStatus.SUCCEEDED)
        .exclude(undo="")
        .exclude(kind=StepKind.COMPENSATE)
        .order_by("-finished_at", "-position", "-branch", "-id")
    )


def has_undos(run_id: Any) -> bool:
    return (
        Step.objects.filter(run_id=run_id, superseded=False, status=StepStatus.SUCCEEDED)
        .exclude(undo="")
        .exclude(kind=StepKind.COMPENSATE)
        .exists()
    )


def handler_end(run_id: Any) -> int:
    """The last journal position the handler itself wrote; undos are journaled after it."""
    last = (
        Step.objects.filter(run_id=run_id, superseded=False, branch=-1)
        .exclude(kind=StepKind.COMPENSATE)
        .aggregate(last=Max("position"))["last"]
    )
    return int(last or 0)


def undo_label(row: Step) -> str:
    """How a step to undo is named in messages: ``book_hotel (#2)`` or ``book (#3.1)``."""
    return f"{row.name} (#{row.label})"


def _undone(run_id: Any) -> tuple[list[Step], set[int]]:
    """The plan, and the indexes in it of the steps whose undo succeeded (undo i is journaled
    at position ``handler_end + i + 1``)."""
    base = handler_end(run_id)
    done = {
        pos - base - 1
        for pos in Step.objects.filter(
            run_id=run_id,
            superseded=False,
            kind=StepKind.COMPENSATE,
            status=StepStatus.SUCCEEDED,
        ).values_list("position", flat=True)
    }
    return plan(run_id), done


def not_undone(run_id: Any) -> list[str]:
    """The steps whose undo has not succeeded (a cancel stops compensation: these stay)."""
    steps, done = _undone(run_id)
    return [undo_label(row) for i, row in enumerate(steps) if i not in done]


def compensated(run_id: Any) -> tuple[int | None, list[tuple[int, str]]]:
    """What a restart must know of a run that compensated (``(None, [])`` if it did not):

    - the earliest position whose step was undone: a restart must run that step again, its
      effect was taken back;
    - the steps whose undo did not succeed (it failed, or a cancel stopped the compensation
      first), as (position, label): each still has its effect, and running it again would do
      it twice (book a second hotel)."""
    if not Step.objects.filter(run_id=run_id, superseded=False, kind=StepKind.COMPENSATE).exists():
        return None, []
    steps, done = _undone(run_id)
    undone = [row.position for i, row in enumerate(steps) if i in done]
    standing = [(row.position, undo_label(row)) for i, row in enumerate(steps) if i not in done]
    return (min(undone) if undone else None), standing


def first_undone_position(run_id: Any) -> int | None:
    """The earliest position whose step was undone, if the run compensated (``compensated``)."""
    return compensated(run_id)[0]
