"""The engine's domain functions: start, send_event, cancel, restart, get_run, and the hooks
that run when a run ends. Views, API operations, tasks and admin actions call these.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

import pydantic
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from workflows import audit, payloads
from workflows.audit import Actor
from workflows.definitions import get_workflow
from workflows.doorbell import request_wake, ring_on_commit
from workflows.errors import InvalidInputError, InvalidStateError, RunNotFoundError
from workflows.models import (
    ACTIVE_RUN,
    TERMINAL_RUN,
    Event,
    Outbox,
    Run,
    RunAction,
    RunStatus,
    Step,
    StepStatus,
)
from workflows.signals import run_finished

log = logging.getLogger(__name__)


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
        listing = "; ".join(f"{e['field'] or '(input)'}: {e['message']}" for e in errors)
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
    wf = get_workflow(run.workflow)
    assert wf.input_model is not None
    model = wf.input_model.model_validate(run.input)
    return {name: getattr(model, name) for name in type(model).model_fields}


def create_run(
    workflow: str,
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
    callback_url: str = "",
    max_cost: Any = None,
    review_timeout: Any = None,
) -> Run:
    """Insert a pending run and ring for it on commit. Call inside a transaction."""
    from django.conf import settings

    wf = get_workflow(workflow)
    data = validate_input(workflow, input)
    review_timeout = parse_review_timeout(review_timeout)
    ctx_data = payloads.to_json(context or {}, "context")
    if on_complete:
        try:
            import_string(on_complete)
        except ImportError as exc:
            raise InvalidInputError(
                f"on_complete {on_complete!r} cannot be imported: {exc}"
            ) from None
    now = timezone.now()
    run = Run.objects.create(
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
        callback_url=callback_url,
        max_cost=max_cost,
        review_timeout=review_timeout,
    )
    ring_on_commit(run.pk, run.generation)
    return run


def start(
    workflow: str,
    input: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    on_complete: str = "",
    context: dict[str, Any] | None = None,
    max_parallel: int | None = None,
    **options: Any,
) -> Run:
    """Start a run of ``workflow``. A repeated ``idempotency_key`` returns the existing run.

    ``options``: ``tenant``, ``created_by``, ``callback_url``, ``max_cost``, ``review_timeout``
    (see ``Run``; ``parse_review_timeout`` reads the last).
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
    workflow: str,
    input: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    **options: Any,
) -> tuple[Run, bool]:
    """``start``, also saying whether this call created the run (True) or found the run an
    earlier call with the same ``idempotency_key`` created (False): the API answers 201 once."""
    if idempotency_key:
        existing = Run.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            run = create_run(workflow, input or {}, idempotency_key=idempotency_key, **options)
            return run, True
    except IntegrityError:
        # Two callers raced with the same key: the other insert won (the unique index made us
        # wait for its commit), so its run is visible now: return it, as found.
        if idempotency_key:
            existing = Run.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing, False
        raise


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
        qs = qs.select_for_update()
    return qs.get()


def send_event(run_id: Any, name: str, payload: Any = None) -> Event:
    """Deliver an event to a run. If no wait is open for it yet, it is kept for the next one."""
    try:
        data = payloads.to_json(payload, "event payload")
        payloads.check_size(data, "event payload")
    except TypeError as exc:
        raise InvalidInputError(str(exc)) from None
    # An event's payload is data from outside: stored escaped, it can never pass for a blob
    # reference when the waiting step hands it to the workflow.
    data = payloads.escape(data)
    now = timezone.now()
    with transaction.atomic():
        run = _locked(run_id)
        if run.is_terminal:
            raise InvalidStateError(f"run {run.pk} is {run.status}; it takes no more events")
        event = Event.objects.create(run=run, name=name, payload=data)
        waiting = (
            Step.objects.filter(
                run=run, kind="event", name=name, status=StepStatus.WAITING, superseded=False
            )
            .order_by("position")
            .first()
        )
        if waiting is not None and Step.objects.filter(
            pk=waiting.pk, status=StepStatus.WAITING
        ).update(status=StepStatus.SUCCEEDED, result=data, finished_at=now):
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


def _resolve_waiting(step_id: int, fields: dict[str, Any]) -> bool:
    now = timezone.now()
    fields = {"finished_at": now, **fields}
    run_id = Step.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
    n = Step.objects.filter(pk=step_id, status=StepStatus.WAITING, superseded=False).update(
        **fields
    )
    if n and run_id is not None:
        request_wake(run_id, now)
    return bool(n)


def run_terminal_hooks(run: Run) -> None:
    """Inside the transaction that ended ``run``: on_complete, signals, the parent's wait.

    ``on_complete`` runs in a savepoint: if it raises, its writes roll back, the failure is
    logged and recorded on the run, and the run still ends (a broken hook must not wedge it).
    """
    if run.on_complete:
        try:
            with transaction.atomic():
                import_string(run.on_complete)(run)
        except Exception as exc:
            log.exception("on_complete %s failed for run %s", run.on_complete, run.pk)
            err = dict(run.error or {})
            err["on_complete"] = f"{type(exc).__name__}: {exc}"
            Run.objects.filter(pk=run.pk).update(error=err)
            run.error = err
    run_finished.send(sender=Run, run=run)
    if run.parent_step_id:
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
    reason = (reason or "").strip()
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
                if _cancel_locked(run, message[:2000]):
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


def _cancel_locked(run: Run, reason: str) -> bool:
    now = timezone.now()
    n = Run.objects.filter(pk=run.pk, generation=run.generation, status__in=ACTIVE_RUN).update(
        status=RunStatus.CANCELED,
        generation=F("generation") + 1,
        lease_owner="",
        lease_expires_at=None,
        wake_requested_at=None,
        finished_at=now,
        error={"type": "Canceled", "message": reason},
    )
    if n != 1:
        return False
    Step.objects.filter(
        run=run,
        superseded=False,
        status__in=[
            StepStatus.PENDING,
            StepStatus.WAITING,
            StepStatus.RETRYING,
            StepStatus.RUNNING,
        ],
    ).update(status=StepStatus.CANCELED, finished_at=now, lease_owner="", lease_expires_at=None)
    run.refresh_from_db()
    for child in Run.objects.filter(parent=run, status__in=ACTIVE_RUN):
        _cancel_locked(child, f"parent run {run.pk} canceled")
    run_terminal_hooks(run)
    return True


def restart(
    run_id: Any,
    from_step: int | None = None,
    *,
    actor: Actor | None = None,
    reason: str = "",
    action: str = RunAction.RESTART,
) -> Run:
    """Run a finished run again from journal position ``from_step`` under a new generation.

    Journal rows from that position on (and rows a cancel interrupted) are superseded, not
    deleted. Without ``from_step`` the run resumes at its first unfinished position. A
    position past the journal is an ``InvalidInputError``. ``actor``, ``reason`` and
    ``action`` (``restart``, or ``retry`` for retrying the failed step) go into the run's
    audit trail, written in the same transaction.
    """
    with transaction.atomic():
        run = _locked(run_id)
        if not run.is_terminal:
            raise InvalidStateError(
                f"run {run.pk} is {run.status}; only a finished run can be restarted "
                "(cancel it first)"
            )
        live = Step.objects.filter(run=run, superseded=False, branch=-1)
        if from_step is None:
            first_bad = live.exclude(status=StepStatus.SUCCEEDED).order_by("position").first()
            from_step = first_bad.position if first_bad else 1
        if from_step < 1:
            raise InvalidInputError("from_step counts journal positions from 1")
        last = live.order_by("-position").values_list("position", flat=True).first() or 1
        if from_step > last:
            raise InvalidInputError(
                f"from_step {from_step} is past the journal: run {run.pk} has positions 1 to "
                f"{last}",
                [{"field": "from_step", "message": f"at most {last}", "type": "less_than_equal"}],
            )
        stale = Step.objects.filter(run=run, superseded=False).filter(
            Q(position__gte=from_step) | Q(status=StepStatus.CANCELED)
        )
        Event.objects.filter(consumed_by__in=stale).update(consumed_by=None)
        stale.update(superseded=True, lease_owner="", lease_expires_at=None)
        now = timezone.now()
        Run.objects.filter(pk=run.pk, generation=run.generation).update(
            status=RunStatus.PENDING,
            generation=F("generation") + 1,
            output=None,
            error=None,
            finished_at=None,
            lease_owner="",
            lease_expires_at=None,
            wake_requested_at=now,
        )
        audit.record(
            run,
            action,
            generation=run.generation,
            actor=actor,
            reason=reason,
            from_step=from_step,
        )
        ring_on_commit(run.pk, run.generation + 1)
    run.refresh_from_db()
    return run


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
            "next_attempt_at": when or timezone.now(),
        },
    )
    return obj


__all__ = [
    "ACTIVE_RUN",
    "TERMINAL_RUN",
    "cancel",
    "complete_waiting_step",
    "create_run",
    "enqueue_outbox",
    "get_run",
    "restart",
    "run_terminal_hooks",
    "send_event",
    "start",
    "start_or_find",
]
