"""The workflow context: what a handler calls (``ctx.run``, ``ctx.parallel``, ``ctx.sleep`` …).

One ``Context`` lives for one advance of a run. It replays the handler against the journal
(loaded once, in one query) and, at the frontier, executes new steps inline:

1. The transaction that starts step N+1 also records step N's result and renews the run lease,
   so a sequential step costs one commit, and a crash during N+1 is still counted (the row says
   "running, attempt 1").
2. Results are buffered in ``_dirty``/``_inserts`` until that next commit (or the suspension or
   the end of the run). A crash before it re-executes step N: steps are at-least-once.
3. Every commit first compare-and-swaps the run row on (lease owner, generation). If a cancel,
   a restart or another worker took the run, the commit raises ``LeaseLost`` and nothing of
   ours is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random as _random
import time
import uuid as _uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, overload

from django.conf import settings
from django.db import connection, transaction

from workflows.core import (
    clock,
    draining,
    instrument,
    leases,
    payloads,
    pools,
    transitions,
    usage,
)
from workflows.core.calls import (
    call_step,
    canonical_sets,
    duration_seconds,
    error_dict,
    is_retryable,
    log_failed_attempt,
    own_copies,
    retry_after,
    return_annotation,
    worker_lost,
)
from workflows.core.definitions import (
    StepDef,
    WorkflowDef,
    as_step,
    check_undo_call,
    resolve_step,
    step_path,
    undo_path,
    workflow_name,
)
from workflows.core.doorbell import (
    dispatch_batches_on_commit,
    dispatch_many_on_commit,
    dispatch_on_commit,
    grace,
    ring_on_commit,
)
from workflows.core.errors import (
    BudgetExceeded,
    ChildWorkflowFailed,
    DeterminismError,
    LeaseLost,
    PayloadTooLargeError,
    StepFailed,
    Suspend,
)
from workflows.core.leases import lease_seconds, lease_until
from workflows.core.models import Event, Run, RunStatus, Step, StepKind, StepStatus
from workflows.core.services import DEFAULT_REVIEW_TIMEOUT, create_run, run_terminal_hooks
from workflows.core.signals import run_finished
from workflows.core.storage import json_text, storage

# How deep runs may nest through run_workflow (a run, its child, the child's child ...).
MAX_CHILD_DEPTH = 32


class FanOutTooWide(ValueError):
    """A ``ctx.map`` / ``ctx.parallel`` wider than ``SLUICE_MAX_FANOUT``, refused before anything
    of it is written: its group and branches are one transaction, and every finishing branch
    works under the group's row lock, so one enormous fan-out holds a worker, the database and a
    cancel for seconds to minutes."""


# The keys of ``Run.error`` that count an active run's advances ended in an unexpected error in
# a row (``executor.advance_failed``), and hold the last one, until the run moves on.
ADVANCE_FAILURES = "advance_failures"
ADVANCE_ERROR = "advance_error"


def advance_failures(error: Any) -> int:
    """How many advances of an active run in a row ended in an unexpected error (0: none)."""
    if isinstance(error, dict):
        count = error.get(ADVANCE_FAILURES)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    return 0


def without_advance_failures(error: Any, status: str) -> Any:
    """``Run.error`` of an active run once it moved on: a running run's had nothing else (it
    is None again); a compensating run's is the failure it compensates for, kept."""
    if status != RunStatus.COMPENSATING or not isinstance(error, dict):
        return None
    return {k: v for k, v in error.items() if k not in (ADVANCE_FAILURES, ADVANCE_ERROR)} or None


def call_json(value: Any, what: str) -> Any:
    """A step call's arguments as the journal stores and digests them: plain JSON, every set in
    them a list in a canonical order (``calls.canonical_sets``), so that the same call gives
    the same digest in every process. ``call_digest``, ``_execute`` and ``_fan_out`` all
    encode through here."""
    return payloads.to_json(canonical_sets(value), what)


def call_digest(value: Any) -> str:
    """A short digest of a step call's arguments (canonical JSON), journaled with the step so
    that a replay notices a call made with other arguments. Cheap: no blob, no database."""
    try:
        data = call_json(value, "arguments")
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return ""  # Unserializable arguments fail the step anyway; nothing to compare.
    return _digest_text(text)


def legacy_digest(value: Any) -> str:
    """``call_digest`` as it was before sets were sorted (each set in the order it iterates
    in this process). Asked only when a journaled digest does not match ``call_digest``: a run
    journaled before the deploy that sorted them, with a set in a call's arguments, replays."""
    try:
        data = payloads.to_json(value, "arguments")
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return ""
    return _digest_text(text)


def _digest_text(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _undo_of(
    sd: StepDef,
    compensate: Callable[..., Any] | None,
    args: Sequence[Any],
    kwargs: dict[str, Any],
) -> str:
    """The undo path journaled with a new step call ("" without one). Checked before the step
    runs: the undo must be importable, and must accept the call compensation will make with
    these arguments (``undo(*args, result=..., **kwargs)``)."""
    if compensate is None and sd.compensate is None:
        return ""
    if "result" in kwargs:
        raise TypeError(
            f"step {sd.name!r} has an undo, which receives the step's result as `result=`: "
            "the step itself cannot take a keyword argument named `result`"
        )
    path = undo_path(sd, compensate)
    check_undo_call(sd, compensate if compensate is not None else sd.compensate, args, kwargs)
    return path


@dataclass(slots=True)
class BranchOutcome:
    """A fan-out branch as replay reads it: which one and how it ended, nothing more.

    A run's final replay reads every branch of its fan-outs (100 rows for a map over 100
    items); a model instance each cost more than the rest of that replay."""

    position: int
    branch: int
    name: str
    status: str
    result: Any
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Call[R]:
    """A step call not yet made: built by ``ctx.call``, made by ``ctx.parallel``. ``R`` is
    the step's return type (what the call's slot of ``ctx.parallel``'s result holds)."""

    step: StepDef[..., R]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    compensate: Callable[..., Any] | None = None


class Context:
    """The ``ctx`` argument of a workflow handler."""

    # Plug-ins register their implementation here, so the engine never imports them; each has
    # an explicit method below that calls it (``review``: the reviews app's gate).
    extensions: dict[str, Callable[..., Any]] = {}

    def __init__(self, run: Run, journal: Iterable[Step | BranchOutcome], owner: str) -> None:
        self._record = run
        self.owner = owner
        self.generation = run.generation
        self._rows: dict[int, Step] = {}
        self._branches: dict[int, list[Step | BranchOutcome]] = defaultdict(list)
        self._max_position = 0
        for row in journal:
            if isinstance(row, Step) and row.branch < 0:
                self._rows[row.position] = row
                self._max_position = max(self._max_position, row.position)
            else:
                self._branches[row.position].append(row)
        self._pos = 0
        self._dirty: list[Step] = []
        self._inserts: list[Step] = []
        self._cost = Decimal(0)
        self._spent = Decimal(run.cost or 0)
        self._current = ""
        self._shown_step = run.current_step
        # A mismatch found on replay, kept so that a handler that swallowed it (a bare
        # ``except BaseException``) still fails the run when it returns.
        self._mismatch: DeterminismError | None = None
        # Likewise a suspension or a budget stop: the handler returning after swallowing one
        # must not end the run as succeeded (``check_complete``).
        self._suspended = False
        self._budget_stop: BudgetExceeded | None = None
        # A step run inline was interrupted by a BaseException (``_run_handler``).
        self.interrupted = False
        # The run's definition could not be loaded: it fails without compensating.
        self.code_gone = False
        # The handler has returned: nothing may journal a step any more (``_next``).
        self.returned = False
        # ``ctx.patched`` answers, so asking twice in one replay gives one answer, one marker.
        self._patches: dict[str, bool] = {}
        # take_run() just set the lease.
        self._lease_renewed: datetime | None = clock.now()
        # The run was suspended in the commit that wrote a fan-out (and its lease let go).
        self._parked = False
        # This worker began to shut down before a step it was to run here (``_execute``).
        self.drained = False
        # Advances of this run that ended in an unexpected error, counted in its error
        # (``executor.advance_failed``): the next commit, which moves the run on, clears them.
        self._clear_failures = advance_failures(run.error) > 0

    # --- public surface -------------------------------------------------------------------

    @property
    def record(self) -> Run:
        """The run's row (read-only for handlers)."""
        return self._record

    @property
    def run_id(self) -> Any:
        return self._record.pk

    @property
    def input(self) -> dict[str, Any]:
        return self._record.input

    @property
    def context(self) -> dict[str, Any]:
        """The caller's ``context`` given to ``start`` (ticket ids and the like)."""
        return self._record.context

    @property
    def review_timeout(self) -> timedelta:
        """How long reviewers have to decide a gate of this run: the run's ``review_timeout``
        (``start(..., review_timeout=...)``, the API, the start form) or 24 hours."""

        return self._record.review_timeout or DEFAULT_REVIEW_TIMEOUT

    def review(self, *args: Any, **kwargs: Any) -> Any:
        """A human review gate: suspends the run until a reviewer decides (or the gate
        expires) and returns the decision. Provided by the reviews app
        (``reviews.decision.review``, registered as ``Context.extensions["review"]``)."""
        ext = Context.extensions.get("review")
        if ext is None:
            raise RuntimeError("ctx.review needs the reviews app in INSTALLED_APPS")
        return ext(self, *args, **kwargs)

    # ``ctx.call``/``ctx.run`` are typed like a call of ``fn`` (ParamSpec). Their saga keyword
    # ``compensate=`` cannot sit in a ParamSpec signature (PEP 612: nothing between *P.args
    # and **P.kwargs), so a second overload takes it, keyword-only: the result is still
    # typed, the step's arguments are not checked there. It comes first: a call without
    # ``compensate=`` does not match it and falls through to the ParamSpec one.

    @overload
    def call[R](
        self, fn: Callable[..., R], /, *args: Any, compensate: Callable[..., Any], **kwargs: Any
    ) -> Call[R]: ...

    @overload
    def call[**P, R](self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Call[R]: ...

    def call(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        compensate: Any = None,  # Callable | None; Any: a ParamSpec overload may pass anything
        **kwargs: Any,
    ) -> Call[Any]:
        """Describe a step call for ``ctx.parallel`` without making it."""
        return Call(as_step(fn), args, kwargs, compensate)

    @overload
    def run[R](
        self, fn: Callable[..., R], /, *args: Any, compensate: Callable[..., Any], **kwargs: Any
    ) -> R: ...

    @overload
    def run[**P, R](self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def run(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        compensate: Any = None,  # Callable | None; Any: a ParamSpec overload may pass anything
        **kwargs: Any,
    ) -> Any:
        """Run a step inline (or return its journaled result on replay).

        ``compensate``: the step's undo (overrides ``@step(compensate=...)``), run with the
        step's arguments and ``result=`` its result if the run fails or is canceled later.
        """
        sd = as_step(fn)
        pos, row = self._next(StepKind.STEP, sd.name)
        if row is None:
            if sd.budgeted:
                self._check_budget(sd.name)
            undo = _undo_of(sd, compensate, args, kwargs)
            return self._execute(sd, args, kwargs, pos, None, undo=undo)
        return self._resume(sd, args, kwargs, pos, row)

    def _resume(
        self,
        sd: StepDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        pos: int,
        row: Step,
        kind: str = StepKind.STEP,
    ) -> Any:
        """A journaled step call on replay: its result, its failure, or run it (again)."""
        if row.digest:  # Rows written before digests were journaled are not compared.
            call = {"args": list(args), "kwargs": kwargs}
            digest = call_digest(call)
            if digest and digest != row.digest and legacy_digest(call) != row.digest:
                self._fail_determinism(
                    f"non-deterministic workflow: at position {pos} the journal has step "
                    f"{row.name!r} called with other arguments than the code now passes"
                )
        if row.status == StepStatus.SUCCEEDED:
            return self._value(sd, row.result)
        if row.status == StepStatus.FAILED:
            if (row.error or {}).get("type") == "BudgetExceeded":
                raise self._over_budget((row.error or {}).get("message", "budget exceeded"))
            raise StepFailed(row.name, row.error or {})
        now = clock.now()
        if (
            kind == StepKind.STEP
            and sd.budgeted
            and row.status
            in (
                StepStatus.RUNNING,
                StepStatus.RETRYING,
                StepStatus.PENDING,
            )
        ):
            # Another attempt is another call, paid like the first: it needs the budget too
            # (its failed attempts may have spent it). Undos are never budget-checked.
            in_flight = (
                row.status == StepStatus.RUNNING
                and row.lease_owner
                and row.lease_owner != self.owner
                and row.lease_expires_at
                and row.lease_expires_at > now
            )
            due = row.status != StepStatus.RETRYING or not (row.wake_at and row.wake_at > now)
            if due and not in_flight:
                try:
                    self._check_budget(row.name)
                except BudgetExceeded as stop:
                    # The step ends here, failed for the budget (not left retrying, or
                    # pending where a worker could still claim it): a replay raises it again.
                    row.status = StepStatus.FAILED
                    row.error = {"type": "BudgetExceeded", "message": str(stop)}
                    row.finished_at = now
                    row.lease_owner = ""
                    row.lease_expires_at = None
                    self._dirty.append(row)
                    raise
        if row.status == StepStatus.RUNNING:
            if (
                row.lease_owner
                and row.lease_owner != self.owner
                and row.lease_expires_at
                and (row.lease_expires_at > now)
            ):
                # Another worker is executing it (it was queued in its pool).
                raise self._suspension()
            # The attempt recorded as running died with its worker: it counts.
            if row.attempt >= row.max_attempts:
                return self._fail(
                    row,
                    worker_lost(row, exhausted=True),
                )
            return self._execute(sd, args, kwargs, pos, row, kind=kind)
        if row.status == StepStatus.RETRYING:
            if row.wake_at and row.wake_at > now:
                raise self._suspension()
            return self._execute(sd, args, kwargs, pos, row, kind=kind)
        if row.status == StepStatus.PENDING:
            return self._execute(sd, args, kwargs, pos, row, kind=kind)
        raise self._suspension()

    def undo(self, sd: StepDef, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run the undo ``sd`` as the next journal position, a step of kind "compensate"
        (``workflows.core.compensation`` drives these while the run is compensating). Journaled,
        retried with the undo's RetryPolicy, never budget-checked: an undo must run even when
        the run spent its budget."""
        pos, row = self._next(StepKind.COMPENSATE, sd.name)
        if row is None:
            return self._execute(sd, tuple(args), kwargs, pos, None, kind=StepKind.COMPENSATE)
        return self._resume(sd, tuple(args), kwargs, pos, row, kind=StepKind.COMPENSATE)

    def skip_to(self, position: int) -> None:
        """Continue journaling after ``position`` (the undos follow the handler's journal)."""
        self._pos = position

    def parallel(self, calls: Sequence[Call[Any]], *, return_exceptions: bool = False) -> list[Any]:
        """Run the calls as parallel branches, joined in the database; results in order."""
        calls = list(calls)
        for call in calls:
            if not isinstance(call, Call):
                raise TypeError(
                    "ctx.parallel() takes ctx.call(step, *args) items (the calls to make), not "
                    f"{type(call).__name__}: ctx.run() runs a step now, and a bare step has no "
                    "arguments"
                )
        name = "parallel:" + ",".join(c.step.name for c in calls)
        return self._fan_out(calls, name[:200], return_exceptions)

    @overload
    def map[T, R](
        self, fn: Callable[[T], R], items: Iterable[T], *, return_exceptions: Literal[False] = ...
    ) -> list[R]: ...

    @overload
    def map[T, R](
        self, fn: Callable[[T], R], items: Iterable[T], *, return_exceptions: bool
    ) -> list[R | StepFailed]: ...

    def map(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        compensate: Callable[..., Any] | None = None,
    ) -> list[Any]:
        """Run ``fn(item)`` for each item as parallel branches; results in order.

        ``compensate``: each succeeded branch's undo (see ``run``)."""
        sd = as_step(fn)
        legacy: list[Call[Any]] | None = None
        if isinstance(items, set | frozenset):
            # Mapped in a canonical order, the same in every process (a set of strings
            # iterates in an order that changes with the process: see ``call_json``). A map
            # journaled before that, in the set's own order, replays in that order.
            legacy = [Call(sd, (item,), {}, compensate) for item in items]
            items = canonical_sets(items)
        return self._fan_out(
            [Call(sd, (item,), {}, compensate) for item in items],
            f"map:{sd.name}"[:200],
            return_exceptions,
            legacy=legacy,
        )

    def sleep(self, duration: timedelta | float) -> None:
        """A durable timer: the run suspends and the sweep wakes it when the time has come."""
        seconds = duration_seconds(duration, "ctx.sleep()")
        pos, row = self._next(StepKind.SLEEP, "sleep")
        if row is None:
            now = clock.now()
            done = seconds <= 0
            self._inserts.append(
                self._new_row(
                    pos,
                    StepKind.SLEEP,
                    "sleep",
                    StepStatus.SUCCEEDED if done else StepStatus.WAITING,
                    args={"seconds": seconds},
                    wake_at=now + timedelta(seconds=seconds),
                    started_at=now,
                    finished_at=now if done else None,
                )
            )
            if done:
                return None
            raise self._suspension()
        if row.status == StepStatus.SUCCEEDED:
            return None
        raise self._suspension()

    def wait_for_event(
        self, name: str, *, timeout: timedelta | float | None = None, default: Any = None
    ) -> Any:
        """Wait for ``send_event(run_id, name, payload)``; return the payload or ``default``.

        An event sent before the wait is kept and consumed here, once.
        """
        if not isinstance(name, str) or not name or len(name) > 200 or "\x00" in name:
            raise ValueError(
                f"wait_for_event() needs an event name of 1 to 200 characters, not {name!r}"[:300]
            )
        seconds = (
            None if timeout is None else duration_seconds(timeout, "wait_for_event(timeout=...)")
        )
        pos, row = self._next(StepKind.EVENT, name)
        if row is None:
            now = clock.now()
            row = self._new_row(
                pos,
                StepKind.EVENT,
                name,
                StepStatus.WAITING,
                args={
                    "default": payloads.escape(payloads.to_json(default, "default")),
                    "timeout": seconds,
                },
                wake_at=now + timedelta(seconds=seconds) if seconds is not None else None,
                started_at=now,
            )
            with self._writing():
                # The run row update in _flush locks the run, and send_event locks it too:
                # either the event is committed before we look, or it sees our waiting row.
                self._flush()
                row.save()
                event = (
                    Event.objects.filter(
                        run_id=self._record.pk, name=name, consumed_by__isnull=True
                    )
                    .order_by("id")
                    .first()
                )
                if event is not None and transitions.consume_event(event.pk, row):
                    row.status = StepStatus.SUCCEEDED
                    row.result = event.payload
                    row.finished_at = now
                    row.save(update_fields=["status", "result", "finished_at"])
            if row.status == StepStatus.SUCCEEDED:
                return payloads.unpack(row.result, self.run_id)
            raise self._suspension()
        if row.status == StepStatus.SUCCEEDED:
            return payloads.unpack(row.result, self.run_id)
        raise self._suspension()

    def run_workflow(
        self, workflow: str | WorkflowDef[Any], input: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Start a child run of ``workflow`` (a name or the ``@workflow`` handler) and wait
        for its output. Its failure raises here."""
        name = workflow_name(workflow)
        pos, row = self._next(StepKind.CHILD, name)
        if row is None:
            self._check_budget(name)
            self._check_depth(name)
            limit = self._record.max_cost
            if limit is not None:
                # The child spends from what is left of this run's budget (its cost is added
                # to this run's when it ends); a cap the author gives may only be lower.
                left = limit - self._spent
                given = options.pop("max_cost", None)
                options["max_cost"] = left if given is None else min(Decimal(str(given)), left)
            now = clock.now()
            row = self._new_row(pos, StepKind.CHILD, name, StepStatus.WAITING, started_at=now)
            with self._writing():
                self._flush()
                row.save()
                child = create_run(
                    name,
                    input or {},
                    parent=self._record,
                    parent_step=row,
                    context=options.pop("context", self._record.context),
                    tenant=options.pop("tenant", self._record.tenant),
                    # Who started the parent started the child's work too (separation of
                    # duties on the child's gates, and the starter may see it).
                    created_by=options.pop("created_by", self._record.created_by),
                    # Its gates are decided in the time this run's reviewers are given.
                    review_timeout=options.pop("review_timeout", self._record.review_timeout),
                    **options,
                )
                row.args = {"run_id": str(child.pk)}
                row.save(update_fields=["args"])
            raise self._suspension()
        if row.status == StepStatus.SUCCEEDED:
            # The child's output arrives as the child's own reference (the hand-over).
            return payloads.unpack(row.result, self.run_id, child_step=row.pk)
        if row.status == StepStatus.FAILED:
            raise ChildWorkflowFailed(row.name, row.error or {})
        raise self._suspension()

    def _check_depth(self, name: str) -> None:
        """A child run may not start past ``MAX_CHILD_DEPTH`` levels of runs: a workflow that
        starts itself (by mistake, or without a base case) would otherwise make runs for ever,
        each a worker's time and each a paid call or more."""
        depth, parent = 2, self._record.parent_id  # the child's level: this run's, plus one
        while parent is not None and depth <= MAX_CHILD_DEPTH:
            depth += 1
            parent = Run.objects.filter(pk=parent).values_list("parent_id", flat=True).first()
        if depth > MAX_CHILD_DEPTH:
            raise RuntimeError(
                f"run_workflow({name!r}) would start a run {depth} levels deep; at most "
                f"{MAX_CHILD_DEPTH} are allowed (does the workflow start itself without a base "
                "case?)"
            )

    def now(self) -> datetime:
        """The current time, journaled so a replay sees the same value."""
        return datetime.fromisoformat(self._recorded(StepKind.NOW, lambda: clock.now().isoformat()))

    def random(self) -> float:
        """A random float in [0, 1), journaled."""
        return float(self._recorded(StepKind.RANDOM, _random.random))

    def uuid(self) -> _uuid.UUID:
        """A random UUID, journaled."""
        return _uuid.UUID(self._recorded(StepKind.UUID, lambda: str(_uuid.uuid4())))

    def wait_for(
        self,
        kind: str,
        name: str,
        *,
        on_open: Callable[[Step], None],
        timeout: timedelta | float | None = None,
        default: Any = None,
    ) -> Any:
        """Suspend on something a plug-in resolves (a review gate, say).

        ``on_open(step_row)`` runs in the transaction that writes the waiting row; the plug-in
        later calls ``workflows.core.services.complete_waiting_step`` to resume the run.
        ``timeout`` (a ``timedelta`` or seconds, at most ten years) is checked as
        ``wait_for_event``'s is.
        """
        seconds = None if timeout is None else duration_seconds(timeout, "wait_for(timeout=...)")
        pos, row = self._next(kind, name)
        if row is None:
            now = clock.now()
            row = self._new_row(
                pos,
                kind,
                name,
                StepStatus.WAITING,
                args={"default": payloads.escape(payloads.to_json(default, "default"))},
                wake_at=now + timedelta(seconds=seconds) if seconds is not None else None,
                started_at=now,
            )
            with self._writing():
                self._flush()
                row.save()
                on_open(row)
            raise self._suspension()
        if row.status == StepStatus.SUCCEEDED:
            return payloads.unpack(row.result, self.run_id)
        if row.status == StepStatus.FAILED:
            raise StepFailed(row.name, row.error or {})
        raise self._suspension()

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new code path of a change named ``patch_id``.

        Temporal's patching, on a positional journal:

        - A run that reaches this point for the first time (no journal entry here) takes the
          new path: True, and a marker is journaled at this position.
        - A replay that finds the marker here (the run took the new path before) gets True.
        - A replay that finds anything else here is a run that was in flight before the patch
          was deployed and passed this point on the old code: False, and no position is used,
          so the old path's steps meet their journal entries where they were written.

        Once no run from before the patch is in flight, replace the ``if``/``else`` with
        ``ctx.deprecate_patch(patch_id)`` and the new branch alone; later still, drop that too.
        """
        self._check_patch_id(patch_id)
        if patch_id in self._patches:
            return self._patches[patch_id]
        if self._mismatch is not None:
            raise DeterminismError(str(self._mismatch))
        found = self._take_marker(patch_id)
        if found is None:
            self._record_marker(patch_id)
            found = True
        self._patches[patch_id] = found
        return found

    def deprecate_patch(self, patch_id: str) -> None:
        """Mark that the old path of patch ``patch_id`` is gone (only the new code remains).

        A run that took the new path has the marker here: it is consumed, and the steps after
        it keep their positions. A new run journals the marker too, so that a later version
        without this call still replays it (markers nobody asks for are skipped). A replay
        without the marker is a run from before the patch, still in flight: its journal holds
        the old path's steps, which this code no longer has, so it fails at once with a
        ``DeterminismError`` naming the patch, instead of at some later step.
        """
        self._check_patch_id(patch_id)
        if patch_id in self._patches:
            return
        if self._mismatch is not None:
            raise DeterminismError(str(self._mismatch))
        found = self._take_marker(patch_id)
        if found is None:
            self._record_marker(patch_id)
        elif not found:
            row = self._rows.get(self._pos + 1)
            self._fail_determinism(
                f"non-deterministic workflow: patch {patch_id!r} is deprecated, but this run "
                f"started before it and passed this point on the old code (at position "
                f"{self._pos + 1} the journal has {row.kind if row else '?'} "
                f"{row.name if row else '?'!r}, not the patch's marker); keep "
                f"`if ctx.patched({patch_id!r})` and the old branch until no such run is in "
                "flight"
            )
        self._patches[patch_id] = True

    @staticmethod
    def _check_patch_id(patch_id: str) -> None:
        if not isinstance(patch_id, str) or not patch_id.strip() or len(patch_id) > 200:
            raise ValueError("a patch id is a non-empty string of at most 200 characters")

    def _take_marker(self, patch_id: str) -> bool | None:
        """Look for ``patch_id``'s marker among the markers journaled at the next positions.

        True: found, and the position moved past it (and past other markers before it, which
        the code no longer asks for). False: the journal has something else here (a run from
        before the patch); nothing consumed. None: no journal here, the run is new at this
        point."""
        pos = self._pos + 1
        row = self._rows.get(pos)
        if row is None:
            return None
        while row is not None and row.kind == StepKind.PATCH:
            if row.name == patch_id:
                self._pos = pos
                return True
            pos += 1
            row = self._rows.get(pos)
        return False

    def _record_marker(self, patch_id: str) -> None:
        self._pos += 1
        now = clock.now()
        self._inserts.append(
            self._new_row(
                self._pos,
                StepKind.PATCH,
                patch_id,
                StepStatus.SUCCEEDED,
                started_at=now,
                finished_at=now,
            )
        )

    def _skip_markers(self) -> None:
        """Step past patch markers the code no longer asks for (its ``patched`` or
        ``deprecate_patch`` call was removed once no run needed it): they hold no result, and
        the runs that recorded them took the path the code now has."""
        row = self._rows.get(self._pos + 1)
        while row is not None and row.kind == StepKind.PATCH:
            self._pos += 1
            row = self._rows.get(self._pos + 1)

    # --- replay bookkeeping -----------------------------------------------------------------

    def _next(self, kind: str, name: str) -> tuple[int, Step | None]:
        if self.returned:
            raise RuntimeError(
                f"{kind} {name!r} was called after the workflow handler returned: a lazy "
                "value in its return value (a generator, map() or filter() calling ctx) runs "
                "only when the result is stored; make it a list inside the handler"
            )
        if self._mismatch is not None:
            # The handler swallowed a mismatch: it may not journal or wait for anything more.
            raise DeterminismError(str(self._mismatch))
        self._skip_markers()
        self._pos += 1
        self._current = name
        row = self._rows.get(self._pos)
        if row is not None and (row.kind != kind or row.name != name):
            self._fail_determinism(
                f"non-deterministic workflow: at position {self._pos} the journal has "
                f"{row.kind} {row.name!r} but the code now calls {kind} {name!r}"
            )
        return self._pos, row

    @property
    def mismatch(self) -> DeterminismError | None:
        """The first determinism mismatch this replay found (even if the handler caught it)."""
        return self._mismatch

    def _fail_determinism(self, message: str) -> None:
        self._mismatch = self._mismatch or DeterminismError(message)
        raise DeterminismError(message)

    def _suspension(self) -> Suspend:
        """The ``Suspend`` to raise, remembered (``check_complete``)."""
        self._suspended = True
        return Suspend()

    def _over_budget(self, message: str) -> BudgetExceeded:
        """The ``BudgetExceeded`` to raise, remembered (``check_complete``)."""
        self._budget_stop = BudgetExceeded(message)
        return self._budget_stop

    def check_complete(self) -> None:
        """After the handler returned: no mismatch may have been swallowed, and the journal
        must not hold entries the code never reached."""
        if self._mismatch is not None:
            raise self._mismatch
        if self._budget_stop is not None:
            raise self._budget_stop
        if self._suspended:
            raise Suspend  # it waits for what it waited for, whatever the handler did after
        self._skip_markers()
        if self._max_position > self._pos:
            row = self._rows[self._max_position]
            self._fail_determinism(
                f"non-deterministic workflow: the code returned after position {self._pos} but "
                f"the journal has {row.kind} {row.name!r} at position {self._max_position}"
            )

    def _new_row(self, pos: int, kind: str, name: str, status: str, **fields: Any) -> Step:
        return Step.new(
            run_id=self._record.pk,
            generation=self.generation,
            position=pos,
            kind=kind,
            name=name,
            status=status,
            **fields,
        )

    def _recorded(self, kind: str, make: Callable[[], Any]) -> Any:
        pos, row = self._next(kind, kind)
        if row is not None:
            return row.result
        value = make()
        now = clock.now()
        self._inserts.append(
            self._new_row(
                pos, kind, kind, StepStatus.SUCCEEDED, result=value, started_at=now, finished_at=now
            )
        )
        return value

    def _value(self, sd: StepDef, data: Any) -> Any:
        return payloads.revive(payloads.unpack(data, self.run_id), return_annotation(sd))

    # --- writing ----------------------------------------------------------------------------

    def flush(self, **run_fields: Any) -> None:
        """Write buffered journal rows; compare-and-swap the run on (owner, generation).

        Call inside a transaction. Raises ``LeaseLost`` when the run is no longer ours.
        """
        self._flush(**run_fields)

    def _flush(self, **run_fields: Any) -> None:
        now = clock.now()
        fields: dict[str, Any] = {"lease_expires_at": lease_until(now), **run_fields}
        if self._clear_failures:
            fields.setdefault(
                "error", without_advance_failures(self._record.error, self._record.status)
            )
        if self._current:
            fields.setdefault("current_step", self._current[:200])
        # The run row first: it fences (a cancel or restart bumped the generation) and it locks
        # the run for the rest of the transaction.
        if not transitions.checkpoint(
            self._record.pk,
            self.owner,
            self.generation,
            fields=fields,
            cost=self._cost,
            dirty=self._dirty,
            inserts=self._inserts,
        ):
            raise LeaseLost
        self._lease_renewed = now
        self._shown_step = fields.get("current_step", self._shown_step)
        if self._clear_failures:
            self._record.error = fields["error"]
            self._clear_failures = False
        self._cost = Decimal(0)
        self._dirty.clear()
        self._inserts.clear()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A transaction that flushes the buffers. If it rolls back, the buffers come back:
        the results they hold were not written, and must be with the next commit."""
        saved = (list(self._dirty), list(self._inserts), self._cost, self._spent)
        try:
            with transaction.atomic():
                yield
        except BaseException:
            self._dirty[:] = saved[0]
            self._inserts[:] = saved[1]
            self._cost, self._spent = saved[2], saved[3]
            for row in self._inserts:
                row.pk = None
            raise

    def charge_unrecorded(self) -> None:
        """The run was fenced out (canceled, restarted, taken over) with costs not written:
        the results are dropped, the money they cost is recorded all the same."""
        if self._cost > 0:
            rows = [(r.pk, r.cost) for r in self._dirty if r.pk is not None and r.cost]
            transitions.charge_unrecorded(self._record.pk, self._cost, rows)
            self._cost = Decimal(0)

    def discard_buffers(self) -> None:
        """Forget unwritten results (the run is being failed because they cannot be written)."""
        self._dirty.clear()
        self._inserts.clear()
        self._cost = Decimal(0)

    def _pack(self, value: Any, what: str) -> Any:
        return self._stored(*payloads.pack(value, self._record.pk, what))

    def _stored(self, data: Any, blob: Any) -> Any:
        if blob is not None:
            blob.save()
            return payloads.blob_ref(blob)
        return data

    def _execute(
        self,
        sd: StepDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        pos: int,
        row: Step | None,
        *,
        kind: str = StepKind.STEP,
        undo: str = "",
    ) -> Any:
        """Run a step here and now: claim it (with the previous result) in one commit, call it,
        buffer the result for the next commit. Not on a worker that is shutting down
        (``workflows.core.draining``): the run is let go there, its results so far written, for
        a worker that is not (``suspend``)."""
        if draining.draining():
            self.drained = True
            raise self._suspension()
        now = clock.now()
        conf = pools.get_pool(sd.pool)
        call = {"args": list(args), "kwargs": kwargs}
        what = f"arguments of {sd.name}"
        try:
            # One encoding serves the digest, the size checks and the column (as call_digest
            # and _pack would each make it).
            data = call_json(call, what)
            encoded = payloads.encode_sorted(data, what)
            size = payloads.check_encoded(data, encoded, what)
            packed_args = self._stored(*payloads.pack_data(data, size, self._record.pk))
        except (TypeError, PayloadTooLargeError) as exc:
            row = row or self._new_row(pos, kind, sd.name, StepStatus.RUNNING)
            if row.pk is None:
                self._inserts.append(row)
            return self._fail(row, error_dict(exc), now=now)
        digest = _digest_text(encoded) if row is None else row.digest
        target = step_path(sd)
        if conf.is_limited:
            try:
                resolve_step(target)
            except Exception:
                # A full pool queues the step for whichever worker frees a slot, which must
                # be able to import it.
                raise TypeError(
                    f"step {sd.name!r} runs in the limited pool {sd.pool!r}, so it must be a "
                    "module-level function (a queued step runs in another process)"
                ) from None
        attempt = (row.attempt if row is not None else 0) + 1
        if row is None and not conf.is_limited and not self._inserts:
            row = self._new_row(
                pos,
                kind,
                sd.name,
                StepStatus.RUNNING,
                pool=sd.pool,
                target=target,
                args=packed_args,
                digest=digest,
                undo=undo,
                max_attempts=sd.retry.max_attempts,
                attempt=1,
                started_at=now,
            )  # No step lease: the run's lease covers the steps its worker runs inline.
            if packed_args is data:  # inline and not escaped: ``encoded`` is its text
                json_text(row, "args", encoded)
            # The heartbeat keeps the lease alive; rewrite it here only when it is getting old,
            # so a checkpoint usually leaves the run row untouched (no index churn).
            renew = self._lease_renewed is None or (now - self._lease_renewed).total_seconds() > (
                lease_seconds() / 3
            )
            fields: dict[str, Any] = {}
            if renew:
                fields["lease_expires_at"] = lease_until(now)
            if sd.name != self._shown_step:
                fields["current_step"] = sd.name[:200]
            if self._clear_failures:
                fields["error"] = without_advance_failures(self._record.error, self._record.status)
            # One commit: the previous results, this step "running, attempt 1", the lease.
            ok = transitions.checkpoint(
                self._record.pk,
                self.owner,
                self.generation,
                fields=fields,
                cost=self._cost,
                dirty=self._dirty,
                inserts=[row],
            )
            if renew:
                self._lease_renewed = now
            self._shown_step = sd.name
            if not ok:
                raise LeaseLost
            if self._clear_failures:
                self._record.error = fields["error"]
                self._clear_failures = False
            self._cost = Decimal(0)
            self._dirty.clear()
            self._current = sd.name
            return self._call(sd, args, kwargs, row)
        with self._writing():
            self._flush()
            capacity = pools.try_acquire(sd.pool, now) if conf.is_limited else True
            if capacity is not True and target:
                # The pool is full: queue the step there; whoever frees a slot runs it.
                wake = capacity if isinstance(capacity, datetime) else now + grace()
                if row is None:
                    row = self._new_row(
                        pos,
                        kind,
                        sd.name,
                        StepStatus.PENDING,
                        pool=sd.pool,
                        target=target,
                        args=packed_args,
                        digest=digest,
                        undo=undo,
                        max_attempts=sd.retry.max_attempts,
                        wake_at=wake,
                    )
                    row.save()
                else:
                    transitions.queue(row, wake_at=wake, target=target, args=packed_args)
                dispatch_on_commit(row.pk, sd.pool)
                queued = True
            else:
                queued = False
                fields = {
                    "status": StepStatus.RUNNING,
                    "attempt": attempt,
                    "lease_owner": self.owner,
                    "lease_expires_at": lease_until(now),
                    "started_at": now,
                    "finished_at": None,  # the previous attempt's end, until this one ends
                    "wake_at": None,
                }
                if row is None:
                    row = Step(
                        run_id=self._record.pk,
                        generation=self.generation,
                        position=pos,
                        kind=kind,
                        name=sd.name,
                        pool=sd.pool,
                        target=target,
                        args=packed_args,
                        digest=digest,
                        undo=undo,
                        max_attempts=sd.retry.max_attempts,
                        **fields,
                    )
                    row.save()
                else:
                    if not transitions.claim_inline(row, {**fields, "args": packed_args}):
                        queued = True  # Someone else claimed it meanwhile; wait for them.
                    for key, value in fields.items():
                        setattr(row, key, value)
        if queued:
            raise self._suspension()
        # It holds a slot of a limited pool under its own lease, taken by the run's owner.
        leases.hold(row.pk, self.owner)
        try:
            return self._call(sd, args, kwargs, row)
        finally:
            leases.drop(row.pk)

    def _call(self, sd: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any], row: Step) -> Any:
        scope = usage.StepScope(step_id=row.pk, run_id=self._record.pk, attempt=row.attempt)
        token = usage.enter(scope)
        started = time.perf_counter()
        try:
            with instrument.step_scope(sd.name, row.pk):
                if row.kind != StepKind.COMPENSATE:  # an undo's arguments are read from JSON
                    # Its own copy of a mutable argument, as a branch has and as a replay
                    # (which does not call it) leaves the handler's object unchanged.
                    args, kwargs = own_copies(args, kwargs)
                value = call_step(sd, args, kwargs)
                column, blob, text = payloads.pack_text(
                    value, self._record.pk, f"result of {sd.name}"
                )
                data = self._stored(column, blob)
        except Exception as exc:
            usage.leave(token)
            self._record_usage(row, scope)
            try:
                return self._failed_attempt(sd, row, exc)
            finally:
                self._emit_step(sd, row, scope, started)
        except BaseException:
            usage.leave(token)
            self.interrupted = True  # a lost worker, not the handler's doing: _run_handler
            raise
        usage.leave(token)
        self._record_usage(row, scope)
        row.status = StepStatus.SUCCEEDED
        self._emit_step(sd, row, scope, started)
        row.result = data
        json_text(row, "result", text)
        row.error = None
        row.finished_at = clock.now()
        row.lease_owner = ""
        row.lease_expires_at = None
        self._dirty.append(row)
        # The handler gets its own copy of the value, as a replay gets it from the journal:
        # changing it in place must change neither the row buffered for the next commit nor
        # the text kept for it (which would then disagree).
        if text is not None:
            handed = json.loads(text)
        elif blob is None:
            handed = copy.deepcopy(data)
        else:
            handed = data
        return payloads.revive(payloads.unpack(handed, self.run_id), return_annotation(sd))

    def _emit_step(self, sd: StepDef, row: Step, scope: usage.StepScope, started: float) -> None:
        instrument.emit(
            "step_finished",
            pool=sd.pool,
            seconds=time.perf_counter() - started,
            outcome=str(row.status),
            usage=scope.usage,
            cost=scope.cost,
        )

    def _record_usage(self, row: Step, scope: usage.StepScope) -> None:
        if scope.usage:
            row.usage = usage.merge(row.usage, scope.usage)
        if scope.cost:
            row.cost = (row.cost or Decimal(0)) + scope.cost
            self._cost += scope.cost
            self._spent += scope.cost

    def _check_budget(self, name: str) -> None:
        limit = self._record.max_cost
        if limit is not None and self._spent >= limit:
            raise self._over_budget(
                f"budget exceeded: the run has spent ${self._spent:.4f} of its ${limit:.4f} "
                f"budget (max_cost); stopped before step {name!r}"
            )

    def _failed_attempt(self, sd: StepDef, row: Step, exc: Exception) -> Any:
        now = clock.now()
        err = error_dict(exc, attempt=row.attempt)
        if is_retryable(exc) and row.attempt < row.max_attempts:
            delay = max(sd.retry.backoff(row.attempt), retry_after(exc) or 0.0)
            log_failed_attempt(row.name, self.run_id, row.attempt, row.max_attempts, err, delay)
            row.status = StepStatus.RETRYING
            row.error = err
            row.wake_at = now + timedelta(seconds=delay)
            row.finished_at = now
            row.lease_owner = ""
            row.lease_expires_at = None
            self._dirty.append(row)
            raise self._suspension()  # The sweep rings for the run when the backoff is over.
        log_failed_attempt(row.name, self.run_id, row.attempt, row.max_attempts, err, None)
        return self._fail(row, err, now=now)

    def _fail(self, row: Step, err: dict[str, Any], now: datetime | None = None) -> Any:
        row.status = StepStatus.FAILED
        row.error = err
        row.finished_at = now or clock.now()
        row.lease_owner = ""
        row.lease_expires_at = None
        if row.pk is not None:
            self._dirty.append(row)
        raise StepFailed(row.name, err)

    def _fan_out(
        self,
        calls: list[Call[Any]],
        name: str,
        return_exceptions: bool,
        legacy: list[Call[Any]] | None = None,
    ) -> list[Any]:
        pos, group = self._next(StepKind.PARALLEL, name)
        limit = settings.SLUICE_MAX_FANOUT
        if group is None and len(calls) > limit:
            # Only a fan-out not journaled yet: one written before the limit was (or while it
            # was higher) replays as it was. Nothing is written, so a replay refuses it again.
            raise FanOutTooWide(
                f"ctx.{name.split(':', 1)[0]} {name!r} at position {pos} fans out {len(calls):,} "
                f"branches, more than SLUICE_MAX_FANOUT ({limit:,}) allows: split the work "
                "into child runs (ctx.run_workflow, each mapping a part) or batch the items "
                "(one branch per batch of items), or raise SLUICE_MAX_FANOUT"
            )
        digest = (
            call_digest([[c.step.name, list(c.args), c.kwargs] for c in calls])
            if group is None or group.digest
            else ""
        )
        if group is not None:
            width = len(self._branches.get(pos, ()))
            if width and width != len(calls):
                self._fail_determinism(
                    f"non-deterministic workflow: at position {pos} the journal has {name!r} "
                    f"with {width} branches but the code now fans out {len(calls)}"
                )
            if group.digest and digest and digest != group.digest:
                # Journaled before sets were sorted (``legacy_digest``): a map over a set in
                # the set's own order, or a set in a branch's arguments.
                for older in (legacy, calls):
                    shapes = [[c.step.name, list(c.args), c.kwargs] for c in older or ()]
                    if older and legacy_digest(shapes) == group.digest:
                        calls, digest = older, group.digest
                        break
            if group.digest and digest and digest != group.digest:
                self._fail_determinism(
                    f"non-deterministic workflow: at position {pos} the journal has {name!r} "
                    "with other branch arguments than the code now passes"
                )
        if group is None:
            self._check_budget(name)
            now = clock.now()
            if not calls:
                self._inserts.append(
                    self._new_row(
                        pos,
                        StepKind.PARALLEL,
                        name,
                        StepStatus.SUCCEEDED,
                        started_at=now,
                        finished_at=now,
                        digest=digest,
                    )
                )
                return []
            branches = []
            cap = max(1, self._record.max_parallel)
            # Under a budget each branch checks it again when a worker is about to start it.
            budgeted = {"budgeted": True} if self._record.max_cost is not None else {}
            checked: set[str] = set()
            for i, c in enumerate(calls):
                target = step_path(c.step)
                try:
                    if target not in checked:
                        resolve_step(target)
                        checked.add(target)
                except Exception:
                    raise TypeError(
                        f"step {c.step.name!r} cannot run in parallel: branches run in other "
                        "processes, so the step must be a module-level function"
                    ) from None
                branches.append(
                    self._new_row(
                        pos,
                        StepKind.BRANCH,
                        c.step.name,
                        StepStatus.PENDING,
                        branch=i,
                        pool=c.step.pool,
                        held=i >= cap,
                        target=target,
                        undo=_undo_of(c.step, c.compensate, c.args, c.kwargs),
                        args=self._pack(
                            canonical_sets({"args": list(c.args), "kwargs": c.kwargs, **budgeted}),
                            f"arguments of {c.step.name}",
                        ),
                        max_attempts=c.step.retry.max_attempts,
                        wake_at=now + grace(),
                    )
                )
            group = self._new_row(
                pos,
                StepKind.PARALLEL,
                name,
                StepStatus.WAITING,
                remaining=len(calls),
                started_at=now,
                digest=digest,
                args={"branches": len(calls), "held": len(calls) > cap},
            )
            with self._writing():
                self._flush()
                # In a pool limited by concurrency, reserve the free slots for the first
                # branches now (one pool lock for the whole fan-out) and ring only for those;
                # the rest wait for a finishing step to hand its slot over (the sweep rings
                # for them too if that chain ever breaks), instead of flooding the broker
                # with doorbells that would only find the pool full.
                by_pool: dict[str, list[Step]] = defaultdict(list)
                for b in branches:
                    if not b.held:
                        by_pool[b.pool].append(b)
                # The reserved slots are rung for in batches, several per message (see
                # workflows.core.branches): the whole first wave starts at once.
                ring: list[Step] = []
                reserved: list[Step] = []
                for pool_name, rows in by_pool.items():
                    conf = pools.get_pool(pool_name)
                    if conf.max_concurrency and not conf.rate_limit:
                        free = pools.reserve(pool_name, len(rows), now)
                        for b in rows[:free]:
                            b.status = StepStatus.RUNNING
                            b.lease_owner = pools.RESERVED
                            b.lease_expires_at = now + grace()
                        reserved += rows[:free]
                    else:
                        ring += rows
                storage().insert_steps([group, *branches])
                # The run parks in this same commit (unless something woke it meanwhile), so
                # the worker is idle, not writing, while the first branches start.
                parked = self._record.status != RunStatus.COMPENSATING and (
                    transitions.park(self._record.pk, self.owner, self.generation)
                )
                dispatch_many_on_commit(ring)
                dispatch_batches_on_commit(reserved)
            self._parked = parked  # committed
            raise self._suspension()
        if group.status == StepStatus.WAITING:
            raise self._suspension()
        results: list[Any] = []
        ended = sorted(self._branches.get(pos, []), key=lambda r: r.branch)
        refused = [b for b in ended if (b.error or {}).get("type") == "BranchBudgetExceeded"]
        if refused:
            # Not a StepFailed: a workflow's except (or return_exceptions) cannot spend on.
            raise self._over_budget(
                f"{(refused[0].error or {}).get('message', 'budget exceeded')} "
                f"({len(refused)} of {len(ended)} branches not started)"
            )
        for i, one in enumerate(ended):
            if one.status == StepStatus.SUCCEEDED:
                sd = calls[i].step if i < len(calls) else None
                results.append(
                    payloads.revive(
                        payloads.unpack(one.result, self.run_id),
                        return_annotation(sd) if sd else None,
                    )
                )
            else:
                failure = StepFailed(
                    one.name, one.error or {"type": "Canceled", "message": one.status}
                )
                if not return_exceptions:
                    raise failure
                results.append(failure)
        return results

    # --- endings ----------------------------------------------------------------------------

    def suspend(self) -> bool:
        """Write what is buffered and park the run. False when it was woken meanwhile.

        A compensating run parks as it is (status "compensating", no lease holder). A run
        whose worker is shutting down (``drained``) is not parked: its results so far are
        written and it is let go, runnable, and rung for at once, to go on on another worker."""
        if self.drained:
            with self._writing():
                self._flush()
                if transitions.release(self._record.pk, self.owner, self.generation, clock.now()):
                    ring_on_commit(self._record.pk, self.generation)
            return True
        if self._parked and not self._dirty and not self._inserts:
            return True  # Parked with the fan-out that it waits for.
        parked = (
            RunStatus.COMPENSATING
            if self._record.status == RunStatus.COMPENSATING
            else RunStatus.SUSPENDED
        )
        with self._writing():
            self._flush()
            # Unless something made the run runnable while we replayed: then the lease is let
            # go so the caller takes it again and replays once more.
            return transitions.suspend(self._record.pk, self.owner, self.generation, parked)

    def finish(
        self, status: str, *, output: Any = None, error: dict[str, Any] | None = None
    ) -> None:
        """End the run: one transaction records it, runs ``on_complete`` and the signals.

        An end with nothing to write but the run's own row (and the last step's result) is one
        statement on PostgreSQL, atomic by itself: then it goes alone, in autocommit, and saves
        the BEGIN and COMMIT round trips. That is a success with no ``on_complete``, no parent
        waiting for it, and no ``run_finished`` receiver wanting it (``idle_for``)."""
        if self._ends_alone(status):
            if not self.write_finish(status, output=output, error=error):
                raise LeaseLost
            return
        with transaction.atomic():
            if not self.write_finish(status, output=output, error=error):
                raise LeaseLost

    def _ends_alone(self, status: str) -> bool:
        run = self._record
        return (
            status == RunStatus.SUCCEEDED
            and not run.on_complete
            and not run.parent_step_id
            and len(self._inserts) <= 1
            and storage().vendor == "postgresql"
            and connection.get_autocommit()
            and run_finished.idle_for(run, status)
        )

    def write_finish(
        self, status: str, *, output: Any = None, error: dict[str, Any] | None = None
    ) -> bool:
        """Inside the caller's transaction: record the end and run the terminal hooks.

        Returns False, having written nothing, when the run is no longer ours (on PostgreSQL;
        elsewhere it raises ``LeaseLost``). Several runs may end in one transaction this way
        (``executor.advance_many``): each run's end and its hooks still commit together.
        """

        now = clock.now()
        compensate = status == RunStatus.FAILED and self._must_compensate()
        fields: dict[str, Any] = {
            "status": status,
            "output": output,
            "error": error,
            "finished_at": now,
            "lease_owner": "",
            "lease_expires_at": None,
            "wake_requested_at": None,
        }
        if compensate:
            # Not the end yet: the undos of the completed steps run first (their own
            # advances, ringed for on commit); on_complete runs once they are done.
            fields.update(
                status=RunStatus.COMPENSATING,
                after_compensation=RunStatus.FAILED,
                finished_at=None,
                wake_requested_at=now,
            )
        cost = self._cost
        try:
            self._flush(**fields)
        except LeaseLost:  # the run's compare-and-swap failed: nothing was written
            return False
        if compensate:
            self._took(fields, cost)
            ring_on_commit(self._record.pk, self.generation)
            return True
        self.ended(fields, cost)
        return True

    def plain_end(self, output: Any) -> dict[str, Any] | None:
        """The run columns of a success that writes the run row and nothing else (no journal
        row buffered, no cost to add), for ending many runs in one statement
        (``executor.advance_many``); None when this end needs ``write_finish``."""
        if self._dirty or self._inserts or self._cost:
            return None
        return {
            "status": RunStatus.SUCCEEDED,
            "output": output,
            "error": None,
            "finished_at": clock.now(),
            "lease_owner": "",
            "lease_expires_at": None,
            "wake_requested_at": None,
            "current_step": (self._current or self._record.current_step or "")[:200],
        }

    def ended(self, fields: dict[str, Any], cost: Decimal = Decimal(0)) -> None:
        """The run row now holds ``fields`` (written by this transaction): mirror them on the
        record and run the terminal hooks, in the same transaction."""
        self._took(fields, cost)
        run_terminal_hooks(self._record)

    def _took(self, fields: dict[str, Any], cost: Decimal) -> None:
        # What we wrote is what the row now holds: no need to read it back.
        for key, value in fields.items():
            setattr(self._record, key, value)
        self._record.cost = Decimal(self._record.cost or 0) + cost
        if self._current:
            self._record.current_step = self._current[:200]

    def _must_compensate(self) -> bool:
        """The handler failed: does a step it completed have an undo still to run?"""
        if self._record.status == RunStatus.COMPENSATING:
            return False  # The undos ran; this is the real end.
        if self.code_gone:
            return False
        if any(row.undo and row.status == StepStatus.SUCCEEDED for row in self._dirty):
            return True  # A result not written yet (it is, with the end)
        return (
            Step.objects.filter(
                run_id=self._record.pk, superseded=False, status=StepStatus.SUCCEEDED
            )
            .exclude(undo="")
            .exclude(kind=StepKind.COMPENSATE)
            .exists()
        )
