"""Sluice's durable workflow engine.

Public API (see the README)::

    from workflows import workflow, step, RetryPolicy, NonRetryableError
    from workflows import start, send_event, cancel, restart, get_run, fork
    from workflows import BudgetExceeded, DeterminismError, FanOutTooWide, IdempotencyConflict
"""

from __future__ import annotations

from typing import Any

from workflows.core.definitions import RetryPolicy, step, workflow
from workflows.core.errors import (
    BudgetExceeded,
    ChildWorkflowFailed,
    DeterminismError,
    IdempotencyConflict,
    InvalidInputError,
    InvalidStateError,
    NonRetryableError,
    PayloadTooLargeError,
    RunNotFoundError,
    StepFailed,
    UnknownWorkflowError,
)
from workflows.core.usage import current_step, record_usage

_SERVICES = {"start", "send_event", "cancel", "restart", "get_run"}


def __getattr__(name: str) -> Any:
    # The service functions touch models, which must not be imported before Django's app
    # registry is ready (this package is itself an installed app).
    if name in _SERVICES:
        from workflows.core import services

        return getattr(services, name)
    if name == "fork":
        from workflows.core import forking

        return forking.fork
    if name == "FanOutTooWide":  # defined beside ctx.map, which imports the models
        from workflows.core import context

        return context.FanOutTooWide
    raise AttributeError(f"module 'workflows' has no attribute {name!r}")


__all__ = [
    "BudgetExceeded",
    "ChildWorkflowFailed",
    "DeterminismError",
    "FanOutTooWide",
    "IdempotencyConflict",
    "InvalidInputError",
    "InvalidStateError",
    "NonRetryableError",
    "PayloadTooLargeError",
    "RetryPolicy",
    "RunNotFoundError",
    "StepFailed",
    "UnknownWorkflowError",
    "cancel",
    "current_step",
    "fork",
    "get_run",
    "record_usage",
    "restart",
    "send_event",
    "start",
    "step",
    "workflow",
]
