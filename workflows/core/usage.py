"""Per-step usage (tokens, cost) recorded by code running inside a step."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from workflows.core.jsonvalues import check_size, to_json

# Step.cost and Run.cost keep 14 digits, 6 of them decimals.
MAX_COST = Decimal("99999999.999999")


@dataclass
class StepScope:
    step_id: int | None
    run_id: Any
    attempt: int
    usage: dict[str, Any] = field(default_factory=dict)
    cost: Decimal = Decimal(0)


_current: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar(
    "sluice_step", default=None
)


def current_step() -> StepScope | None:
    """The step being executed in this thread, or None outside a step."""
    return _current.get()


def record_usage(cost: float | Decimal = 0, **usage: Any) -> None:
    """Add usage to the running step's journal entry (tokens summed, other keys replaced).

    Checked here, so that a value the journal cannot store fails the step that recorded it, at
    the call: ``cost`` must be a finite number, each value JSON (a ``Decimal`` is stored as
    its text). Raises ``TypeError`` otherwise."""
    scope = _current.get()
    if scope is None:
        return
    try:
        amount = Decimal(str(cost))
    except ArithmeticError:
        raise TypeError(f"record_usage: cost must be a number, not {cost!r}") from None
    if not amount.is_finite():
        raise TypeError(f"record_usage: cost must be a finite number, not {cost!r}")
    if amount < 0:
        # A refund would lower the run's spend under its budget: budgets only count up.
        raise TypeError(f"record_usage: cost must be 0 or more, not {cost!r}")
    if scope.cost + amount > MAX_COST:
        raise TypeError(
            f"record_usage: a step's cost must stay under {MAX_COST:,} (the journal's "
            f"column), not {scope.cost + amount!r}"
        )
    usage = {key: to_json(value, f"usage {key!r}") for key, value in usage.items()}
    check_size(usage, "usage")
    for key, value in usage.items():
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and key.endswith("tokens")
        ):
            scope.usage[key] = scope.usage.get(key, 0) + value
        else:
            scope.usage[key] = value
    scope.cost += amount


def enter(scope: StepScope) -> contextvars.Token[StepScope | None]:
    return _current.set(scope)


def leave(token: contextvars.Token[StepScope | None]) -> None:
    _current.reset(token)


def merge(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """Usage over all attempts of a step: token counts add up, other keys take the latest."""
    merged = dict(previous or {})
    for key, value in current.items():
        if (
            key.endswith("tokens")
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            merged[key] = merged.get(key, 0) + value
        else:
            merged[key] = value
    return merged
