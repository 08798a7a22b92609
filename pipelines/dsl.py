"""The state-machine DSL: the states and transitions a ``machine(...)`` is made of.

``state``, ``parallel``, ``human``, ``wait`` and ``final`` build immutable state objects;
``goto`` builds a (guarded) transition. ``pipelines.machine`` validates, draws and runs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

Guard = Callable[[dict[str, Any]], bool]


# --- the DSL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goto:
    target: str
    guard: Guard | None = None
    label: str = ""

    @property
    def text(self) -> str:
        if self.label:
            return self.label
        if self.guard is None:
            return ""
        name = getattr(self.guard, "__name__", "guard")
        return "guard" if name == "<lambda>" else name.replace("_", " ")


Transition = str | Goto | Sequence[str | Goto] | None


@dataclass(frozen=True)
class State:
    """Run a step; its result (a dict or pydantic model) merges into the context.

    ``compensate``: the state's undo, run (with the context the state got, and ``result=``
    the step's result) if the run fails or is canceled after the state succeeded."""

    run: Any = None
    on_done: Transition = None
    on_error: str | None = None
    compensate: Any = None


@dataclass(frozen=True)
class Parallel:
    """Run branch states at once; go on when ``min_success`` of them succeeded."""

    branches: Mapping[str, State]
    min_success: int | None = None
    on_done: Transition = None
    on_error: str | None = None


@dataclass(frozen=True)
class Human:
    """A review gate (``ctx.review``): the decision's outcome picks the next state."""

    instruction: str
    on: Mapping[str, str]
    # None: the run's review timeout (``review_timeout`` when it was started; else 24 hours).
    timeout: timedelta | None = None
    on_timeout: str = "approve"
    title: str = ""
    group: str = "reviewers"
    payload: Callable[[dict[str, Any]], Any] | Sequence[str] | None = None
    fields: dict[str, Any] | None = None
    # The same four-eyes and escalation options as ``ctx.review`` (docs/reviews.md).
    approvals: int = 1
    separation_of_duties: bool = False
    escalate_after: timedelta | None = None
    escalate_to: str = ""


@dataclass(frozen=True)
class Wait:
    """Wait for an event sent to the run (``send_event``); its payload merges into the context."""

    event: str
    on_done: Transition = None
    timeout: timedelta | None = None
    on_timeout: str | None = None


@dataclass(frozen=True)
class Final:
    status: str = "succeeded"


AnyState = State | Parallel | Human | Wait | Final


def goto(target: str, guard: Guard | None = None, *, label: str = "") -> Goto:
    """A transition to ``target``, taken when ``guard(context)`` is true (or always)."""
    return Goto(target, guard, label)


def state(
    *,
    run: Any,
    on_done: Transition = None,
    on_error: str | None = None,
    compensate: Any = None,
) -> State:
    return State(run=run, on_done=on_done, on_error=on_error, compensate=compensate)


def parallel(
    branches: Mapping[str, State],
    *,
    min_success: int | None = None,
    on_done: Transition = None,
    on_error: str | None = None,
) -> Parallel:
    return Parallel(dict(branches), min_success, on_done, on_error)


def human(
    *,
    instruction: str,
    on: Mapping[str, str],
    timeout: str | float | timedelta | None = None,
    on_timeout: str = "approve",
    title: str = "",
    group: str = "reviewers",
    payload: Callable[[dict[str, Any]], Any] | Sequence[str] | None = None,
    fields: dict[str, Any] | None = None,
    approvals: int = 1,
    separation_of_duties: bool = False,
    escalate_after: str | float | timedelta | None = None,
    escalate_to: str = "",
) -> Human:
    """A review gate. Without ``timeout`` it takes the run's review timeout (24 h unless the run
    was started with ``review_timeout``)."""
    return Human(
        instruction,
        dict(on),
        parse_duration(timeout) if timeout is not None else None,
        on_timeout,
        title,
        group,
        payload,
        fields,
        approvals,
        separation_of_duties,
        parse_duration(escalate_after) if escalate_after is not None else None,
        escalate_to,
    )


def wait(
    *,
    event: str,
    on_done: Transition = None,
    timeout: str | float | timedelta | None = None,
    on_timeout: str | None = None,
) -> Wait:
    return Wait(
        event, on_done, parse_duration(timeout) if timeout is not None else None, on_timeout
    )


def final(*, status: str = "succeeded") -> Final:
    if status not in ("succeeded", "failed"):
        raise ValueError("final(status=...) is 'succeeded' or 'failed'")
    return Final(status)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")


def parse_duration(value: str | float | timedelta) -> timedelta:
    """``timedelta``, seconds, or ``"90s"``, ``"30m"``, ``"24h"``, ``"2d"``."""
    if isinstance(value, timedelta):
        return value
    problem = ValueError(f"cannot read duration {value!r} (use e.g. '90s', '30m', '24h', '2d')")
    if isinstance(value, bool):
        raise problem
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value) if isinstance(value, str) else None
        if not m:
            raise problem
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # NaN, infinity, or past timedelta's ten thousand years
        raise problem from None


def targets_of(t: Transition) -> list[Goto]:
    """A transition as a list of gotos (a plain name is an unguarded goto)."""
    if t is None:
        return []
    if isinstance(t, str):
        return [Goto(t)]
    if isinstance(t, Goto):
        return [t]
    return [x if isinstance(x, Goto) else Goto(x) for x in t]
