"""The engine's domain functions: start, send_event, cancel, restart, get_run, and the hooks
that run when a run ends. Views, API operations, tasks and admin actions call these.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils.module_loading import import_string

from workflows.core import audit, clock, instrument, payloads, transitions, undos
from workflows.core.audit import Actor
from workflows.core.calls import cut_message, is_interrupt, shown, storable_text
from workflows.core.definitions import (
    StepDef,
    WorkflowDef,
    get_workflow,
    replayable,
    resolve_step,
    workflow_for_run,
    workflow_name,
)
from workflows.core.doorbell import dispatch_on_commit, grace, request_wake, ring_on_commit
from workflows.core.errors import (
    IdempotencyConflict,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    UnknownWorkflowError,
)
from workflows.core.jsonvalues import same_json
from workflows.core.models import (
    ACTIVE_RUN,
    TERMINAL_RUN,
    Event,
    Outbox,
    Run,
    RunAction,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
)
from workflows.core.signals import run_finished, run_stopped
from workflows.core.storage import storage

log = logging.getLogger(__name__)


# A 422 names what is wrong field by field, but not without end: an input of 120,000 unknown
# keys answered 15.6 MB, each error twice (in the message and the details). The first ones are
# named, then how many more.
MAX_LISTED_ERRORS = 50
LISTED_ERRORS_CHARS = 6_000


def listed_errors(
    errors: Sequence[dict[str, Any]],
    line: Callable[[dict[str, Any]], str],
    total: int | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """``errors`` as an error names them: the text (each error's ``line``, joined by "; ") and
    the errors for its details. At most ``MAX_LISTED_ERRORS`` are named, in about
    ``LISTED_ERRORS_CHARS`` of text; the rest of the ``total`` (default: all of ``errors``) are
    counted at the end of the text and in a last error of type ``too_many_errors`` with the
    ``count`` of them all."""
    total = len(errors) if total is None else total
    shown: list[dict[str, Any]] = []
    lines: list[str] = []
    size = 0
    for error in errors[:MAX_LISTED_ERRORS]:
        text = line(error)
        size += len(text)
        if shown and size > LISTED_ERRORS_CHARS:
            break
        shown.append(error)
        lines.append(text)
    if total > len(shown):
        note = f"and {total - len(shown):,} more ({total:,} errors in all)"
        lines.append(note)
        blank = dict.fromkeys(shown[0], "") if shown else {}
        shown.append(
            {**blank, "field": "", "message": note, "type": "too_many_errors", "count": total}
        )
    return "; ".join(lines), shown


def validate_input(workflow: str, input: Any) -> dict[str, Any]:
    """Check a run's input against the workflow's input model; return it as JSON data."""
    wf = get_workflow(workflow)
    if not isinstance(input, dict):
        raise InvalidInputError(
            f"input of {workflow!r} must be a JSON object, not {type(input).__name__}"
        )
    try:
        data = payloads.to_json(input, "input")
        payloads.check_size(data, f"input of {workflow!r}")
    except TypeError as exc:
        raise InvalidInputError(f"invalid input for {workflow!r}: {exc}") from None
    assert wf.input_model is not None
    try:
        wf.input_model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        listing, errors = listed_errors(
            errors, lambda e: f"{e['field'] or '(input)'}: {e['message']}"
        )
        raise InvalidInputError(f"invalid input for {workflow!r}: {listing}", errors) from None
    return data  # type: ignore[no-any-return]


# A run's review timeout (``review_timeout``): the time reviewers have to decide each of its gates.
DEFAULT_REVIEW_TIMEOUT = timedelta(hours=24)
MIN_REVIEW_TIMEOUT = timedelta(minutes=1)
MAX_REVIEW_TIMEOUT = timedelta(days=30)
_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_review_timeout(value: Any) -> timedelta | None:
    """A run's ``review_timeout`` from seconds (a number), a string such as ``"90m"``, ``"36h"``
    or ``"7d"``, or a ``timedelta``; None stays None (the default, 24 hours).

    Raises ``InvalidInputError`` (field ``review_timeout``) for anything unreadable or outside
    1 minute to 30 days.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, bool):
        duration = None
    elif isinstance(value, int | float):
        duration = timedelta(seconds=value) if abs(value) < 1e12 else None
    elif isinstance(value, str) and (m := _DURATION.match(value.lower())):
        duration = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    else:
        duration = None
    if duration is None:
        message = "give seconds (a number) or a duration such as '90m', '36h' or '7d'"
    elif not MIN_REVIEW_TIMEOUT <= duration <= MAX_REVIEW_TIMEOUT:
        message = "must be from 1 minute to 30 days"
    else:
        return duration
    raise InvalidInputError(
        f"review_timeout: {message}",
        [{"field": "review_timeout", "message": message, "type": "value_error"}],
    )


def handler_kwargs(run: Run) -> dict[str, Any]:
    wf = workflow_for_run(run.workflow, run.version)
    assert wf.input_model is not None
    model = wf.input_model.model_validate(run.input)
    return {name: getattr(model, name) for name in type(model).model_fields}


def check_text_field(value: Any, field: str, max_length: int) -> str:
    """``value`` when it is text a column of ``max_length`` stores, else ``InvalidInputError``
    (field ``field``): too long, a NUL (PostgreSQL refuses it in text) or a lone surrogate (not
    Unicode). The API checks its own fields; this is for Python callers, who got the
    database's ``DataError`` instead."""
    if not isinstance(value, str):
        problem = f"{field} must be text, not {type(value).__name__}"
    elif len(value) > max_length:
        problem = f"{field} is {len(value):,} characters, over the {max_length} allowed"
    elif "\x00" in value:
        problem = f"{field} contains a NUL character, which cannot be stored"
    elif not value.isascii() and _lone_surrogate(value):
        problem = f"{field} contains a lone surrogate (not valid Unicode), which cannot be stored"
    else:
        return value
    raise InvalidInputError(problem, [{"field": field, "message": problem}])


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def create_run(
    workflow: str | WorkflowDef[Any],
    input: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    on_complete: str = "",
    context: dict[str, Any] | None = None,
    parent: Run | None = None,
    parent_step: Step | None = None,
    max_parallel: int | None = None,
    tenant: str = "",
    created_by: str = "",
    created_by_user_id: int | None = None,
    callback_url: str = "",
    max_cost: Any = None,
    review_timeout: Any = None,
) -> Run:
    """Insert a pending run and ring for it on commit. Call inside a transaction, or in
    autocommit mode, where its one statement, the INSERT, is a transaction of its own and the
    doorbell rings right after it (``start_or_find``). Keep it one statement.

    ``created_by_user_id``: the signed-in user who starts it (``Run.created_by_user_id``). A
    child run started by its parent's starter (``created_by`` the same) inherits the parent's.
    """
    workflow = workflow_name(workflow)
    wf = get_workflow(workflow)
    data = validate_input(workflow, input)
    review_timeout = parse_review_timeout(review_timeout)
    try:
        ctx_data = payloads.to_json(context or {}, "context")
        payloads.check_size(ctx_data, "context")
    except TypeError as exc:
        raise InvalidInputError(str(exc), [{"field": "context", "message": str(exc)}]) from None
    if tenant:
        check_text_field(tenant, "tenant", 100)
    if created_by:
        check_text_field(created_by, "created_by", 150)
    if on_complete:
        check_hook(on_complete)
    if created_by_user_id is None and parent is not None and created_by == parent.created_by:
        created_by_user_id = parent.created_by_user_id
    now = clock.now()
    run = Run(
        workflow=workflow,
        version=wf.version,
        input=data,
        context=ctx_data,
        idempotency_key=idempotency_key or None,
        on_complete=on_complete,
        parent=parent,
        parent_step=parent_step,
        max_parallel=max_parallel or wf.max_parallel or settings.SLUICE_MAX_PARALLEL,
        wake_requested_at=now,
        tenant=tenant,
        created_by=created_by,
        created_by_user_id=created_by_user_id,
        callback_url=callback_url,
        max_cost=max_cost,
        review_timeout=review_timeout,
    )
    storage().insert_run(run)
    ring_on_commit(run.pk, run.generation)
    return run


def start(
    workflow: str | WorkflowDef[Any],
    input: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    on_complete: str = "",
    context: dict[str, Any] | None = None,
    max_parallel: int | None = None,
    **options: Any,
) -> Run:
    """Start a run of ``workflow``: its registered name, or the ``@workflow`` handler itself
    (``start(summarize, {"text": ...})``). A repeated ``idempotency_key`` returns the existing run;
    the key used before for another workflow or another input raises ``IdempotencyConflict``.

    ``options``: ``tenant``, ``created_by``, ``created_by_user_id`` (the signed-in user who
    starts it: pass ``user.pk`` with their name), ``callback_url``, ``max_cost``,
    ``review_timeout`` (see ``Run``; ``parse_review_timeout`` reads the last).
    """
    run, _ = start_or_find(
        workflow,
        input,
        idempotency_key=idempotency_key,
        on_complete=on_complete,
        context=context,
        max_parallel=max_parallel,
        **options,
    )
    return run


def start_or_find(
    workflow: str | WorkflowDef[Any],
    input: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    **options: Any,
) -> tuple[Run, bool]:
    """``start``, also saying whether this call created the run (True) or found the run an
    earlier call with the same ``idempotency_key`` created (False): the API answers 201 once.

    A found run must be the same request: another workflow or another input under the key
    raises ``IdempotencyConflict`` (checked on both paths, the early look-up and the lost race).
    """
    workflow = workflow_name(workflow)
    if idempotency_key:
        check_text_field(idempotency_key, "idempotency_key", 255)
        existing = Run.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_start(existing, workflow, input), False
    try:
        if connection.get_autocommit() and not connection.in_atomic_block:
            # Autocommit: the INSERT commits by itself before it returns, and the doorbell
            # create_run asks for "on commit" rings at once, after it. BEGIN and COMMIT would be
            # two more round trips on every API start (W7 in docs/performance.md).
            run = create_run(workflow, input or {}, idempotency_key=idempotency_key, **options)
            return run, True
        with transaction.atomic():
            run = create_run(workflow, input or {}, idempotency_key=idempotency_key, **options)
            return run, True
    except IntegrityError:
        # Two callers raced with the same key: the other insert won (the unique index made us
        # wait for its commit), so its run is visible now: return it, as found.
        if idempotency_key:
            existing = Run.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                return _same_start(existing, workflow, input), False
        raise


def _same_start(run: Run, workflow: str, input: dict[str, Any] | None) -> Run:
    """``run`` if it was started for this workflow and input, else ``IdempotencyConflict``."""
    if run.workflow != workflow:
        raise IdempotencyConflict(
            f"idempotency key already used by run {run.pk} of workflow {run.workflow!r}, "
            f"not {workflow!r}",
            run.pk,
        )
    try:
        data = payloads.to_json(input or {}, "input")
    except TypeError:
        data = None
    if not same_json(run.input or {}, data):
        raise IdempotencyConflict(
            f"idempotency key already used by run {run.pk} with another input", run.pk
        )
    return run


def get_run(run_id: Any) -> Run:
    try:
        return Run.objects.get(pk=run_id)
    except (Run.DoesNotExist, ValueError, pydantic.ValidationError):
        raise RunNotFoundError(f"no run with id {run_id}") from None
    except Exception as exc:  # A malformed UUID raises ValidationError from Django.
        if exc.__class__.__name__ == "ValidationError":
            raise RunNotFoundError(f"no run with id {run_id}") from None
        raise


def _locked(run_id: Any) -> Run:
    get_run(run_id)  # clear error for unknown ids and malformed UUIDs
    qs = Run.objects.filter(pk=run_id)
    if connection.features.has_select_for_update:
        # FOR NO KEY UPDATE: it excludes every other writer of the run as FOR UPDATE does,
        # but not a row written meanwhile that refers to the run (an outbox row, a gate
        # event: their foreign key takes FOR KEY SHARE). FOR UPDATE made a decision or a cancel
        # deadlock with a sweep that updates a gate, then notifies about its run.
        qs = qs.select_for_update(no_key=True)
    run = qs.first()
    if run is None:  # pruned while this waited for its lock
        raise RunNotFoundError(f"no run with id {run_id}")
    return run


def send_event(run_id: Any, name: str, payload: Any = None) -> Event:
    """Deliver an event to a run. If no wait is open for it yet, it is kept for the next one."""
    check_text_field(name, "name", 200)
    try:
        data = payloads.to_json(payload, "event payload")
        payloads.check_size(data, "event payload")
    except TypeError as exc:
        raise InvalidInputError(str(exc)) from None
    # An event's payload is data from outside: stored escaped, it can never pass for a blob
    # reference when the waiting step hands it to the workflow.
    data = payloads.escape(data)
    now = clock.now()
    with transaction.atomic():
        run = _locked(run_id)
        if run.is_terminal or run.status == RunStatus.COMPENSATING:
            # A compensating run only undoes what it did, then ends: nothing would ever take
            # the event (it was a 202 kept for no one).
            raise InvalidStateError(f"run {run.pk} is {run.status}; it takes no more events")
        event = Event.objects.create(run=run, name=name, payload=data)
        waiting = (
            Step.objects.filter(
                run=run, kind="event", name=name, status=StepStatus.WAITING, superseded=False
            )
            .order_by("position")
            .first()
        )
        if waiting is not None and transitions.resolve_wait(
            waiting.pk, {"status": StepStatus.SUCCEEDED, "result": data, "finished_at": now}
        ):
            event.consumed_by = waiting
            event.save(update_fields=["consumed_by"])
            request_wake(run.pk, now)
    return event


def complete_waiting_step(
    step_id: int,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Resolve a waiting step (gate decided, child finished) and wake its run.

    Call inside the caller's transaction. Compare-and-swap: returns False if the step was no
    longer waiting (canceled, superseded, already resolved), and then nothing changed.
    """
    fields: dict[str, Any] = {}
    if error is not None:
        fields.update(status=StepStatus.FAILED, error=error)
    else:
        # The result comes from a plug-in (a gate's decision with a reviewer's edits): data,
        # escaped so that it is never read as a blob reference.
        result = payloads.escape(payloads.to_json(result, "result"))
        fields.update(status=StepStatus.SUCCEEDED, result=result)
    if extra:
        fields["usage"] = extra
    return _resolve_waiting(step_id, fields)


def complete_waiting_steps(
    step_ids: list[int],
    *,
    result: Any = None,
    timed_out: bool = False,
    now: datetime | None = None,
) -> tuple[set[int], list[tuple[Any, int]]]:
    """The bulk form of ``complete_waiting_step`` for steps resolved with one result (gates
    that expired together with the same outcome): a compare-and-swap of the steps (waiting,
    not superseded → succeeded) that marks their runs runnable, one statement on PostgreSQL
    (``transitions.resolve_waits``).

    Call inside the caller's transaction. Returns the ids of the steps this call resolved (a
    step that no longer waited is left alone and missing here) and the (run id, generation)
    of the active runs it woke: the caller rings for them on commit (``ring_on_commit``, or
    in bursts). ``timed_out`` marks the steps as auto-advanced on expiry in the journal.
    """
    if not step_ids:
        return set(), []
    now = now or clock.now()
    data = payloads.escape(payloads.to_json(result, "result"))
    fields: dict[str, Any] = {"status": StepStatus.SUCCEEDED, "result": data, "finished_at": now}
    if timed_out:
        fields["usage"] = {"timed_out": True}
    done = transitions.resolve_waits(step_ids, fields, now)
    woken = {(run_id, generation) for _, run_id, generation in done if generation is not None}
    return {step_id for step_id, _, _ in done}, sorted(woken, key=lambda r: str(r[0]))


def _resolve_waiting(step_id: int, fields: dict[str, Any]) -> bool:
    now = clock.now()
    fields = {"finished_at": now, **fields}
    run_id = Step.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
    n = transitions.resolve_wait(step_id, fields)
    if n and run_id is not None:
        request_wake(run_id, now)
    return n


def check_hook(on_complete: str) -> None:
    """An ``on_complete`` path that names a plain function taking the run, or an
    ``InvalidInputError`` at start: an ``async def`` would be called and never awaited (the
    run succeeds, the hook never runs), and a value that is not callable fails only at the end."""
    try:
        hook = import_string(on_complete)
    except ImportError as exc:
        raise InvalidInputError(f"on_complete {on_complete!r} cannot be imported: {exc}") from None
    if not callable(hook):
        raise InvalidInputError(
            f"on_complete {on_complete!r} is a {type(hook).__name__}, not a function"
        )
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004  (an object whose __call__ is async)
    ):
        raise InvalidInputError(
            f"on_complete {on_complete!r} is an async function: it runs inside the transaction "
            "that ends the run, so it must be a plain function"
        )


def run_terminal_hooks(run: Run) -> None:
    """Inside the transaction that ended ``run``: on_complete, signals, the parent's wait.

    ``on_complete`` runs in a savepoint: if it raises, its writes roll back, the failure is
    logged and recorded on the run, and the run still ends (a broken hook must not wedge it).
    """
    if run.on_complete:
        try:
            with transaction.atomic():
                import_string(run.on_complete)(run)
        except BaseException as exc:
            # A hook's asyncio.CancelledError (a BaseException) is its own doing too: were it
            # let through, the run would replay and run the hook again and again. A stop of
            # the process goes on (the run ends on the next replay, its hook once).
            if is_interrupt(exc):
                raise
            log.exception("on_complete %s failed for run %s", run.on_complete, run.pk)
            err = dict(run.error or {})
            # Cut as a step's error is (``calls.cut_message``): the run page shows it whole.
            err["on_complete"] = f"{type(exc).__name__}: {storable_text(cut_message(shown(exc)))}"
            Run.objects.filter(pk=run.pk).update(error=err)
            run.error = err
    if run.status == RunStatus.FAILED:
        # One line per failed run for log-based alerting (the run pages have the rest).
        err = run.error or {}
        log.error(
            "run %s (%s) failed: %s: %s",
            run.pk,
            run.workflow,
            err.get("type", ""),
            str(err.get("message", ""))[:500],
        )
    run_finished.send(sender=Run, run=run)
    instrument.emit("run_finished", status=str(run.status), workflow=run.workflow)
    if run.parent_step_id:
        # What the child spent is the parent's spending too (its budget, its page): on the
        # step that waited for it and the parent's total, once, fenced on the wait. Read
        # afresh: the end's own write added the last step's cost in the database.
        # Whatever became of the wait (a parent canceled first, a child that finished its
        # undos after that): the money was spent. Once, as the child ends once.
        spent = Run.objects.filter(pk=run.pk).values_list("cost", flat=True).first()
        if spent:
            Step.objects.filter(pk=run.parent_step_id, superseded=False).update(
                cost=F("cost") + spent
            )
            if run.parent_id is not None:
                Run.objects.filter(pk=run.parent_id).update(cost=F("cost") + spent)
        if run.status == RunStatus.SUCCEEDED:
            # The output as the child stored it (inline, or the child's blob reference): the
            # parent's run_workflow call reads it with the child's blobs allowed.
            _resolve_waiting(
                run.parent_step_id, {"status": StepStatus.SUCCEEDED, "result": run.output}
            )
        else:
            message = (run.error or {}).get("message", "") if isinstance(run.error, dict) else ""
            complete_waiting_step(
                run.parent_step_id,
                error={
                    "type": "ChildWorkflowFailed",
                    "message": f"child run {run.pk} {run.status}: {message}",
                    "child_run": str(run.pk),
                },
            )


def cancel(run_id: Any, reason: str = "", *, actor: Actor | None = None) -> Run:
    """Cancel a run and its children. Bumps the generation so in-flight work is ignored.

    ``actor`` (who) and ``reason`` (why, optional) go into the run's error message and its
    audit trail, written in the same transaction as the cancel.
    """
    reason = audit.check_reason(reason)
    message = f"canceled by {actor.description}" if actor else "canceled"
    if reason:
        message = f"{message}: {reason}"
    for attempt in range(3):
        try:
            with transaction.atomic():
                run = _locked(run_id)
                if run.is_terminal:
                    raise InvalidStateError(
                        f"run {run.pk} already {run.status}; there is nothing to cancel"
                    )
                generation = run.generation
                if _cancel_locked(run, message[:2000], actor=actor, why=reason):
                    audit.record(
                        run, RunAction.CANCEL, generation=generation, actor=actor, reason=reason
                    )
            break
        except OperationalError:
            # Cancel locks the run, then its steps; a finishing branch locks its step, then
            # the run. PostgreSQL breaks such a deadlock by aborting one side: try again.
            if attempt == 2:
                raise
    run.refresh_from_db()
    return run


def _cancel_locked(run: Run, reason: str, *, actor: Actor | None = None, why: str = "") -> bool:
    """Cancel an active run (locked by the caller), fenced on its generation. ``reason`` is
    the run's error message; ``actor`` and ``why`` (the reason given) go into the audit entry
    of each child canceled with it (the caller records the run's own).

    A run with completed steps to undo is not canceled yet: it becomes compensating (its
    undos run, then it ends canceled, see ``workflows.core.compensation``). Canceling a run that
    is compensating stops it: the undos not yet run are skipped, and listed in its error.
    """
    # Locked and read afresh, fenced on the generation the caller saw: this cancels the run's
    # steps before its own row changes, so a run that moved on meanwhile (canceled, restarted)
    # must be left alone from the start, not only at the row's compare-and-swap.
    current = Run.objects.filter(pk=run.pk, generation=run.generation, status__in=ACTIVE_RUN)
    if connection.features.has_select_for_update:
        current = current.select_for_update(no_key=True)  # as ``_locked``
    fresh = current.values("status", "error").first()
    if fresh is None:
        return False
    run.status, run.error = fresh["status"], fresh["error"]
    now = clock.now()
    error: dict[str, Any] = {"type": "Canceled", "message": reason}
    compensate = False
    if run.status == RunStatus.COMPENSATING:
        skipped = undos.not_undone(run.pk)
        if skipped:
            error["message"] = (
                f"{reason}; compensation stopped before undoing: {', '.join(skipped)}"
            )[:2000]
            error["not_undone"] = skipped
        error["cause"] = run.error
    else:
        # The steps first. A branch whose success is committing now holds its row until it
        # has committed, and this waits for it: only then are the undos counted, so a branch
        # that succeeded during the cancel is undone too, not left booked. (A branch that
        # closes its group also waits for the run's row, which this holds: PostgreSQL ends
        # that deadlock by aborting one side, as before, and the branch runs again later.)
        transitions.cancel_steps(run.pk, now)
        compensate = undos.has_undos(run.pk)
    stopping_undos = run.status == RunStatus.COMPENSATING
    if not transitions.cancel(run, now, error, compensate=compensate):
        return False
    run.refresh_from_db()
    children = Run.objects.filter(parent=run, status__in=ACTIVE_RUN)
    if not stopping_undos:
        # A child already undoing its steps finishes its rollback: canceling the parent
        # stops the work, not the undoing of it (canceling a compensating run does that).
        children = children.exclude(status=RunStatus.COMPENSATING)
    for child in children:
        generation = child.generation
        said = reason if reason.startswith("canceled") else "canceled"  # by whom, why
        if _cancel_locked(child, f"parent run {run.pk} {said}"[:2000], actor=actor, why=why):
            # The child's own audit trail says who canceled it, and that it came from above.
            audit.record(
                child,
                RunAction.CANCEL,
                generation=generation,
                actor=actor,
                reason=f"parent run {run.pk} canceled" + (f": {why}" if why else ""),
            )
    if run.status == RunStatus.COMPENSATING:
        run_stopped.send(sender=Run, run=run)
        ring_on_commit(run.pk, run.generation)  # on_complete runs after the undos
    else:
        run_terminal_hooks(run)
    return True


def restart(
    run_id: Any,
    from_step: int | None = None,
    *,
    only_failed_branches: bool = False,
    max_cost: Any = None,
    actor: Actor | None = None,
    reason: str = "",
    action: str = RunAction.RESTART,
) -> Run:
    """Run a finished run again from journal position ``from_step`` under a new generation.

    Journal rows from that position on (and rows a cancel interrupted) are superseded, not
    deleted. Without ``from_step`` the run resumes at its first unfinished position, or, when
    every journaled position finished but the run failed or was canceled (the handler itself
    raised between steps), right after the last one: nothing that finished runs again. A run
    that succeeded runs again from position 1. A position past the journal is an
    ``InvalidInputError``.

    ``only_failed_branches``: when the restart position is a fan-out (``map``/``parallel``),
    only its branches that did not succeed run again; the siblings that succeeded keep their
    results. At any other position it changes nothing.

    A run that compensated (see ``workflows.core.compensation``) restarts at the latest from its
    first undone step: what was undone runs again, with the undos' own rows superseded.

    ``max_cost`` sets a new budget for the run (e.g. to go on after ``BudgetExceeded``). A
    budget caps what the run spends in all, every generation counted, so it must be above
    what the run has spent (an ``InvalidInputError`` otherwise).

    ``actor``, ``reason`` and ``action`` (``restart``, or ``retry`` for retrying the failed
    step) go into the run's audit trail, written in the same transaction.
    """
    if max_cost is not None:
        max_cost = Decimal(str(max_cost))
        if not max_cost.is_finite() or max_cost < 0:
            raise InvalidInputError(
                "max_cost must be a non-negative amount",
                [{"field": "max_cost", "message": "must be >= 0", "type": "greater_than_equal"}],
            )
    reason = audit.check_reason(reason)
    with transaction.atomic():
        run = _locked(run_id)
        if not run.is_terminal:
            raise InvalidStateError(
                f"run {run.pk} is {run.status}; only a finished run can be restarted "
                "(cancel it first)"
            )
        if run.parent_id is not None:
            # Its outcome went to the parent when it ended, and nothing takes a second one: a
            # child run again would work (and pay) for no one.
            raise InvalidStateError(
                f"run {run.pk} is a child of run {run.parent_id}, which took its outcome when "
                f"it ended: restart run {run.parent_id} from the step that started this one "
                "(or fork this run to run it on its own)"
            )
        if max_cost is not None and max_cost <= run.cost:
            # The budget caps the run's total, every generation counted: this one would stop
            # the restart before its first paid step.
            raise InvalidInputError(
                f"max_cost ${max_cost:.4f} is not above the ${run.cost:.4f} run {run.pk} has "
                "already spent: a budget caps what the run spends in all, every generation "
                "counted",
                [
                    {
                        "field": "max_cost",
                        "message": f"must be above {run.cost:.4f}",
                        "type": "greater_than",
                    }
                ],
            )
        try:
            # Before anything changes: a run whose code a deploy removed would fail at once.
            replayable(run.workflow, run.version)
        except UnknownWorkflowError as exc:
            raise InvalidStateError(f"run {run.pk} cannot be restarted: {exc}") from None
        live = Step.objects.filter(run=run, superseded=False, branch=-1).exclude(
            kind=StepKind.COMPENSATE
        )
        last = live.order_by("-position").values_list("position", flat=True).first() or 0
        undone, not_undone = undos.compensated(run.pk)
        if from_step is None:
            first_bad = live.exclude(status=StepStatus.SUCCEEDED).order_by("position").first()
            if first_bad is not None:
                from_step = first_bad.position
            elif run.status == RunStatus.SUCCEEDED:
                from_step = 1  # A run that succeeded runs again from the start.
            else:
                from_step = last + 1  # It failed between steps: keep everything journaled.
        elif from_step < 1:
            raise InvalidInputError("from_step counts journal positions from 1")
        elif from_step > max(last, 1):
            raise InvalidInputError(
                f"from_step {from_step} is past the journal: run {run.pk} has positions 1 to "
                f"{max(last, 1)}",
                [
                    {
                        "field": "from_step",
                        "message": f"at most {max(last, 1)}",
                        "type": "less_than_equal",
                    }
                ],
            )
        if undone is not None and undone < from_step:
            # The run compensated: the steps from the first undone one on were taken back,
            # so they run again (their undo rows, journaled after them, are superseded too).
            from_step = undone
        standing = [label for position, label in not_undone if position >= from_step]
        if standing:
            # A step whose undo failed (or never ran) still has its effect: running it again
            # would do it twice (a second hotel booked).
            raise InvalidStateError(
                f"run {run.pk} compensated, but the undo of {', '.join(standing)} did not "
                f"succeed, so its effect is still in place, and restarting from step "
                f"{from_step} would do it again. Take it back by hand, then fork the run from "
                "step 1 (a new run that does every step afresh)"
            )
        group = (
            live.filter(position=from_step, kind=StepKind.PARALLEL).first()
            if only_failed_branches and undone is None
            else None
        )
        stale = Step.objects.filter(run=run, superseded=False).filter(
            Q(position__gte=from_step) | Q(status=StepStatus.CANCELED)
        )
        if group is not None:
            # Keep the group's succeeded branches live: only the rest is superseded and re-run.
            stale = stale.exclude(position=from_step, branch__gte=0, status=StepStatus.SUCCEEDED)
        rerun = (
            list(
                Step.objects.filter(run=run, superseded=False, position=from_step, branch__gte=0)
                .exclude(status=StepStatus.SUCCEEDED)
                .order_by("branch")
            )
            if group is not None
            else []
        )
        # The branches run again on the code deployed now: its pool and retry policy (a fix
        # deploy is why an operator retries), not the failed rows' copies of the old ones.
        steps = {old.target: _branch_step(run, old, from_step) for old in rerun}
        transitions.supersede(stale)
        now = clock.now()
        generation = run.generation + 1
        if group is not None:
            budgeted = (max_cost if max_cost is not None else run.max_cost) is not None
            _reopen_group(run, group, rerun, generation, now, budgeted, steps)
        fields: dict[str, Any] = {}
        if max_cost is not None:
            fields["max_cost"] = max_cost
        transitions.restart(run, now, **fields)
        audit.record(
            run,
            action,
            generation=run.generation,
            actor=actor,
            reason=reason,
            from_step=from_step,
        )
        ring_on_commit(run.pk, generation)
    run.refresh_from_db()
    return run


def _budget_flagged(branch: Step, budgeted: bool) -> Any:
    """``branch``'s stored call, flagged to check the run's budget before it starts
    (``executor.budget_refusal``) if and only if ``budgeted``: the flag is set at fan-out,
    from the budget the run had then."""
    call = payloads.unpack(branch.args, branch.run_id) or {}
    if bool(call.get("budgeted")) == budgeted:
        return branch.args
    call = {k: v for k, v in call.items() if k != "budgeted"}
    if budgeted:
        call["budgeted"] = True
    data, blob = payloads.pack(call, branch.run_id, f"arguments of {branch.name}")
    if blob is not None:
        blob.save()
        data = payloads.blob_ref(blob)
    return data


def _branch_step(run: Run, row: Step, from_step: int) -> StepDef:
    """The step a failed branch runs again: its definition as deployed now."""
    try:
        return resolve_step(row.target)
    except Exception:
        raise InvalidStateError(
            f"run {run.pk}: step {row.name!r} is no longer at {row.target} (its code moved or "
            "was removed), so its failed branches cannot run again there. Restart the run "
            f"from step {from_step}: the handler's replay finds the step where it is now, and "
            "every branch of the fan-out runs again"
        ) from None


def _reopen_group(
    run: Run,
    group: Step,
    rerun: list[Step],
    generation: int,
    now: datetime,
    budgeted: bool,
    steps: dict[str, StepDef],
) -> None:
    """A fresh live copy of fan-out ``group`` waiting for fresh copies of the ``rerun``
    branches (their old rows were just superseded); the succeeded siblings stay as they are.
    Each copy keeps its undo, takes its step's pool and attempts from ``steps`` (the code
    deployed now), and checks the run's budget before it starts when the run has one now
    (``budgeted``: a restart may set the first)."""
    cap = max(1, run.max_parallel)
    copies = []
    for i, old in enumerate(rerun):
        copies.append(
            Step(
                run=run,
                generation=generation,
                position=old.position,
                branch=old.branch,
                kind=old.kind,
                name=old.name,
                status=StepStatus.PENDING,
                pool=steps[old.target].pool,
                held=i >= cap,
                target=old.target,
                undo=old.undo,
                args=_budget_flagged(old, budgeted),
                digest=old.digest,
                max_attempts=steps[old.target].retry.max_attempts,
                wake_at=now + grace(),
            )
        )
    args = dict(group.args or {})
    args["held"] = len(copies) > cap
    Step.objects.create(
        run=run,
        generation=generation,
        position=group.position,
        kind=group.kind,
        name=group.name,
        status=StepStatus.WAITING if copies else StepStatus.SUCCEEDED,
        remaining=len(copies),
        args=args,
        digest=group.digest,
        started_at=now,
        finished_at=None if copies else now,
    )
    Step.objects.bulk_create(copies)
    for row in copies:
        if not row.held:
            dispatch_on_commit(row.pk, row.pool)


def enqueue_outbox(
    kind: str,
    key: str,
    payload: dict[str, Any],
    run: Run | None = None,
    when: datetime | None = None,
) -> Outbox:
    """Record a side effect to deliver after commit (idempotent on ``key``)."""
    obj, _ = Outbox.objects.get_or_create(
        key=key,
        defaults={
            "kind": kind,
            "payload": payload,
            "run": run,
            "next_attempt_at": when or clock.now(),
        },
    )
    return obj


__all__ = [
    "ACTIVE_RUN",
    "TERMINAL_RUN",
    "cancel",
    "complete_waiting_step",
    "complete_waiting_steps",
    "create_run",
    "enqueue_outbox",
    "get_run",
    "restart",
    "run_terminal_hooks",
    "send_event",
    "start",
    "start_or_find",
]
