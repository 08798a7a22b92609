"""Exceptions raised by the engine, public and internal."""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Base class for errors a caller of the public API can act on."""


class UnknownWorkflowError(SluiceError, LookupError):
    """No workflow is registered under the requested name."""


class InvalidInputError(SluiceError, ValueError):
    """The input of a run failed validation; ``errors`` lists the offending fields."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class PayloadTooLargeError(SluiceError, ValueError):
    """A value is larger than ``SLUICE_PAYLOAD_HARD_LIMIT``."""


class RunNotFoundError(SluiceError, LookupError):
    """No run has this id."""


class InvalidStateError(SluiceError):
    """The run is not in a state that allows the operation (e.g. cancel a finished run)."""


class NonRetryableError(Exception):
    """Raise from a step to fail it at once, without using the rest of its retry budget."""


class StepFailed(Exception):
    """Raised inside a workflow when a step failed for good (after its retries).

    The workflow may catch it and go on; uncaught, it fails the run.
    """

    def __init__(self, name: str, error: dict[str, Any]) -> None:
        self.step_name = name
        self.error = error
        super().__init__(
            f"step {name!r} failed: {error.get('type', 'Error')}: {error.get('message', '')}"
        )


class ChildWorkflowFailed(StepFailed):
    """A child workflow started with ``ctx.run_workflow`` failed or was canceled."""


class DeterminismError(BaseException):
    """Replay found a different step call than the journal recorded at that position (another
    kind or name, other arguments, another fan-out width).

    A BaseException so that a workflow's ``except Exception`` cannot swallow it and go on with
    a journal that no longer matches its code: the run always fails.
    """


class IdempotencyConflict(SluiceError, ValueError):
    """``start`` got an idempotency key already used for another workflow or another input."""

    def __init__(self, message: str, run_id: Any = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class Suspend(BaseException):
    """Internal: unwinds the workflow handler when it must wait for something.

    A BaseException so that a workflow's ``except Exception`` cannot swallow it.
    """


class LeaseLost(BaseException):
    """Internal: another worker (or a cancel/restart) took the run; stop without writing."""


class StepTimeout(Exception):
    """A step ran longer than its ``timeout``."""


class BudgetExceeded(BaseException):
    """The run's recorded cost reached its ``max_cost``; it stops before the next step.

    A BaseException so that a workflow's ``except Exception`` cannot spend past the budget.
    """


class BranchBudgetExceeded(NonRetryableError):
    """A fan-out branch was not started: the run's spent plus reserved cost reached its
    ``max_cost``. The branch fails with this error, and the run with ``BudgetExceeded``."""
