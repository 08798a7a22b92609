"""Advancing runs and executing branch steps: what a worker does when a doorbell rings.

``advance(run_id, generation)`` takes the run lease by compare-and-swap, loads the journal in
one query and replays the handler (see ``workflows.core.context``). ``execute_step(step_id)`` claims
one queued step (a fan-out branch, or a step that waited for room in its pool), runs it, and
records the outcome; the branch that finishes a group rings for the run, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DataError,
    InterfaceError,
    InternalError,
    OperationalError,
    transaction,
)
from django.db.models import Avg, Count, Q
from django.db.transaction import TransactionManagementError

from workflows.core import (
    branches,
    clock,
    compensation,
    doorbell,
    draining,
    instrument,
    payloads,
    pools,
    transitions,
    usage,
)
from workflows.core.calls import (
    call_step,
    error_dict,
    is_interrupt,
    is_retryable,
    log_failed_attempt,
    retry_after,
)
from workflows.core.context import (
    ADVANCE_ERROR,
    ADVANCE_FAILURES,
    BranchOutcome,
    Context,
    advance_failures,
    without_advance_failures,
)
from workflows.core.definitions import newer_than_here, replayable, resolve_step
from workflows.core.doorbell import (
    dispatch_on_commit,
    grace,
    request_wake,
    ring_on_commit,
)
from workflows.core.errors import (
    BranchBudgetExceeded,
    BudgetExceeded,
    DeterminismError,
    LeaseLost,
    PayloadTooLargeError,
    Suspend,
    UnknownWorkflowError,
)
from workflows.core.leases import (
    drop,
    drop_run,
    ensure_heartbeat,
    hold,
    hold_run,
    job_owner,
    owner_id,
)
from workflows.core.models import ACTIVE_RUN, LEASED_RUN, Run, RunStatus, Step, StepStatus
from workflows.core.services import handler_kwargs
from workflows.core.storage import JOURNAL_COLUMNS, storage

log = logging.getLogger(__name__)

MAX_REPLAYS_PER_MESSAGE = 50
# A run whose code this process does not have yet (``definitions.newer_than_here``), and how
# long it is left before it is rung for again (the sweep rings it a grace later).
NOT_HERE = "not-here"
NOT_HERE_WAIT = timedelta(seconds=30)
# After this many advances of a run in a row end in an unexpected error (one the engine lets
# escape, outside the handler: a bad definition, an engine bug), the run is failed with it
# (``advance_failed``): let go each time, it was rung for by the sweep for ever.
MAX_ADVANCE_FAILURES = 5


def advance(run_id: Any, generation: int, taken: Run | None = None) -> str:
    """Advance one run as far as it goes. Returns what happened (for logs and tests).

    ``taken``: the run, its lease already taken by this thread (``complete_step``)."""
    with instrument.run_scope(run_id, generation):
        return _advance(run_id, generation, taken)


def _advance(run_id: Any, generation: int, taken: Run | None = None) -> str:
    owner = taken.lease_owner if taken is not None else owner_id()
    outcome = "skipped"
    for _ in range(MAX_REPLAYS_PER_MESSAGE):
        run = taken or transitions.take(run_id, generation, owner, clock.now())
        taken = None
        if run is None:
            return outcome
        hold_run(run.pk, owner)
        ensure_heartbeat()
        try:
            if _not_here(run, owner):
                return NOT_HERE
            if run.status == RunStatus.COMPENSATING:
                outcome = compensation.drive(run, owner)
                if outcome != "woken":
                    return outcome
                continue
            # A run that never reached a step has no journal: skip the query (every journal
            # write also records the step's name on the run).
            journal = load_journals([run.pk])[run.pk] if run.current_step else []
            outcome = _replay(run, journal, owner)
        except Exception as exc:
            if advance_failed(run, owner, exc):
                return RunStatus.FAILED
            raise
        except BaseException:
            let_go(run, owner)
            raise
        finally:
            drop_run(run.pk)
        if outcome != "woken":
            return outcome
    return outcome


_BRANCH = [
    JOURNAL_COLUMNS.index(name) for name in ("position", "branch", "name", "status", "result")
]
_RUN, _ERROR = JOURNAL_COLUMNS.index("run_id"), JOURNAL_COLUMNS.index("error")


def load_journals(run_ids: list[Any]) -> dict[Any, list[Step | BranchOutcome]]:
    """The live journals of these runs, in one query, in replay order. A branch row comes back
    as its outcome alone (``BranchOutcome``): replay reads nothing else of it, and a model
    instance for each of a wide fan-out's branches was most of the cost of its final replay."""
    journals: dict[Any, list[Step | BranchOutcome]] = {pk: [] for pk in run_ids}
    if not run_ids:
        return journals
    position, branch, name, status, result = _BRANCH
    for values in storage().journal_rows(run_ids):
        if values[branch] >= 0:
            row: Step | BranchOutcome = BranchOutcome(
                values[position],
                values[branch],
                values[name],
                values[status],
                values[result],
                values[_ERROR],
            )
        else:
            row = Step.from_db(DEFAULT_DB_ALIAS, JOURNAL_COLUMNS, values)
        journals[values[_RUN]].append(row)
    return journals


def let_go(run: Run, owner: str) -> None:
    """After an unexpected error (the database went away, a bug): release the lease so the
    run is not held by a worker that is no longer advancing it; the sweep rings again after
    the doorbell grace. Best effort: if even this fails, the lease simply expires."""
    try:
        transitions.release(run.pk, owner, run.generation, clock.now())
    except Exception:
        log.exception("could not release run %s after an error", run.pk)


def transient(exc: BaseException) -> bool:
    """``exc`` is the infrastructure's (the database or the broker unreachable, a deadlock, a
    timeout, a transaction an earlier error aborted), which the next try may well not meet:
    not counted against the run. Its causes are looked at too: an error raised while
    handling one of those (or re-raised as another type) is that one."""
    if type(exc).__module__.partition(".")[0] in ("redis", "kombu", "amqp", "psycopg"):
        # The driver's own, raised as it is: Django wraps every database error it passes on
        # (``raise DataError from psycopg's``), so the chain below never asks this.
        return True
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(
            cause, OperationalError | InterfaceError | TransactionManagementError | OSError
        ):
            return True
        if isinstance(cause, InternalError) and "current transaction is aborted" in str(cause):
            return True  # an earlier error's; a trigger's RAISE, say, is not transient
        cause = cause.__cause__ or cause.__context__
    return False


def advance_failed(run: Run, owner: str, exc: Exception) -> bool:
    """An advance of ``run`` (whose lease we hold) ended in an unexpected error: count it and
    let the run go for the sweep, or fail the run with it when it is the
    ``MAX_ADVANCE_FAILURES``th in a row. True when the run was failed.

    The count lives in the run's ``error`` (``context.ADVANCE_FAILURES``, with the error as
    ``ADVANCE_ERROR``, or as the error itself for a running run, which has none otherwise),
    written by the statement that lets the run go: no column, nothing on the path of a run
    that advances. The commit that next moves the run on clears it (``Context._flush``), so a
    long run that meets an error now and then is not failed for it. An error of the
    infrastructure (``transient``) is not counted: the run is let go, as before."""
    if transient(exc):
        let_go(run, owner)
        return False
    count = advance_failures(run.error) + 1
    log.error(
        "advancing run %s failed (%d of %d in a row): %s: %s",
        run.pk,
        count,
        MAX_ADVANCE_FAILURES,
        type(exc).__name__,
        str(exc)[:500],
    )
    if count >= MAX_ADVANCE_FAILURES:
        try:
            _fail_wedged(run, owner, exc, count)
            return True
        except LeaseLost:
            return False  # no longer ours (canceled, restarted): nothing to fail or count
        except Exception:
            log.exception("could not fail run %s after %d failed advances", run.pk, count)
    err = error_dict(exc)
    base = without_advance_failures(run.error, run.status)
    if run.status == RunStatus.COMPENSATING:
        record = {**(base or {}), ADVANCE_ERROR: err, ADVANCE_FAILURES: count}
    else:
        record = {**err, ADVANCE_FAILURES: count}
    try:
        counted = Run.objects.filter(
            pk=run.pk, lease_owner=owner, generation=run.generation, status__in=LEASED_RUN
        ).update(lease_owner="", lease_expires_at=None, wake_requested_at=clock.now(), error=record)
    except Exception:
        log.exception("could not count the failed advance of run %s", run.pk)
        counted = 0
    if not counted:
        let_go(run, owner)
    return False


def _fail_wedged(run: Run, owner: str, exc: Exception, count: int) -> None:
    """Fail ``run`` (still ours) with ``exc``, the error its last ``count`` advances ended in.
    As any failure does: its undos run (a running run becomes compensating), then its
    ``on_complete`` and its parent's wait."""
    error = error_dict(exc)
    error["message"] = (
        f"{error['message']} (the engine could not advance this run {count} times in a row "
        "for this error, outside the workflow's code; the run was failed rather than retried "
        "for ever: fix the definition or the engine, then restart the run)"
    )[:4000]
    error["failed_advances"] = count
    if run.status == RunStatus.COMPENSATING:
        error["cause"] = without_advance_failures(run.error, run.status)
    ctx = Context(run, [], owner)
    ctx.finish(RunStatus.FAILED, error=error)


def _not_here(run: Run, owner: str) -> bool:
    """A rolling deploy: newer code started this run (``definitions.newer_than_here``). It is
    let go for a worker that has that code, before anything of it runs here (its handler or
    its undos), and rung for again in ``NOT_HERE_WAIT``: not every few seconds for an hour."""
    newer = newer_than_here(run.workflow, run.version, run.created_at)
    if newer is None:
        return False
    log.warning("run %s: %s; leaving it for a worker with the new code", run.pk, newer)
    try:
        transitions.release(run.pk, owner, run.generation, clock.now() + NOT_HERE_WAIT)
    except Exception:
        log.exception("could not release run %s", run.pk)
    return True


def _run_handler(ctx: Context, run: Run) -> tuple[str, Any]:
    """Replay the handler: ("suspend" | "lease-lost" | "succeeded" | "failed", value)."""
    try:
        wf = replayable(run.workflow, run.version)
    except UnknownWorkflowError as exc:
        # The run's code is gone (a deploy removed it): it fails, and what it did stays done.
        # Its undos would take back the work of a run that may well have succeeded before a
        # restart; restoring the definition and retrying the run carries on from here.
        ctx.code_gone = True
        return RunStatus.FAILED, error_dict(exc)
    try:
        kwargs = handler_kwargs(run)
        value = wf.fn(ctx, **kwargs)
        ctx.returned = True
        ctx.check_complete()
        return RunStatus.SUCCEEDED, ctx._pack(value, "workflow output")
    except Suspend:
        if ctx.mismatch is not None:  # swallowed by the handler, which then waited
            return RunStatus.FAILED, error_dict(ctx.mismatch)
        return "suspend", None
    except LeaseLost:
        return "lease-lost", None
    except (BudgetExceeded, DeterminismError, PayloadTooLargeError, Exception) as exc:
        if ctx.mismatch is not None and not isinstance(exc, DeterminismError):
            return RunStatus.FAILED, error_dict(ctx.mismatch)
        return RunStatus.FAILED, error_dict(exc)
    except BaseException as exc:
        # A stop of the process, or a step interrupted while it ran inline, is a lost worker:
        # the run is let go and replayed (the step's attempt is counted). Anything else comes
        # from the workflow's own code (an asyncio.CancelledError, say), and would come again
        # on every replay: it fails the run, as an Exception does.
        if is_interrupt(exc) or ctx.interrupted:
            raise
        return RunStatus.FAILED, error_dict(exc)


def _replay(run: Run, journal: list[Step | BranchOutcome], owner: str) -> str:
    ctx = Context(run, journal, owner)
    outcome, value = _run_handler(ctx, run)
    try:
        if outcome == "suspend":
            return "suspended" if ctx.suspend() else "woken"
        if outcome in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            _end(ctx, outcome, value)
        if outcome == "lease-lost":
            ctx.charge_unrecorded()
        return str(outcome)
    except LeaseLost:
        ctx.charge_unrecorded()
        return "lease-lost"


def _end(ctx: Context, outcome: str, value: Any) -> None:
    """Record the run's end. If writing it fails (a value the database refuses, a hook that
    raises), the run still ends: failed, with that error, its unwritten buffers dropped."""
    kwargs = {"output": value} if outcome == RunStatus.SUCCEEDED else {"error": value}
    try:
        ctx.finish(outcome, **kwargs)
    except LeaseLost:
        raise
    except Exception as exc:
        log.exception("could not record the end of run %s; failing it", ctx.run_id)
        ctx.discard_buffers()
        ctx.finish(RunStatus.FAILED, error=error_dict(exc))


def advance_many(items: list[tuple[Any, int]]) -> dict[str, int]:
    """Advance a burst of runs (gates that closed together, say) with fewer round trips.

    1. Take all their leases in one statement and load all their journals in one query.
    2. Replay each run. Runs that suspend do so one by one, as in ``advance``.
    3. Runs that end are written in one transaction: each run's end and its hooks still commit
       together, and a run that is no longer ours (fenced out) writes nothing and is skipped.
    4. A run woken while it replayed goes through ``advance`` again.
    """
    owner = owner_id()
    runs = transitions.take_many(items, owner, clock.now())
    if not runs:
        return {}
    for run in runs:
        hold_run(run.pk)
    ensure_heartbeat()
    try:
        return _advance_taken(runs, owner)
    except BaseException:
        for run in runs:
            let_go(run, owner)
        raise
    finally:
        for run in runs:
            drop_run(run.pk)


def _advance_taken(runs: list[Run], owner: str) -> dict[str, int]:
    journals: dict[Any, list[Step | BranchOutcome]] = {run.pk: [] for run in runs}
    journals.update(load_journals([run.pk for run in runs if run.current_step]))
    counts: dict[str, int] = {}
    ending: list[tuple[Context, str, Any]] = []
    again: list[Run] = []
    for run in runs:
        if _not_here(run, owner):
            counts[NOT_HERE] = counts.get(NOT_HERE, 0) + 1
            continue
        if run.status == RunStatus.COMPENSATING:
            again.append(run)  # Its undos run one run at a time, in ``advance``.
            continue
        try:
            ctx = Context(run, journals[run.pk], owner)
            with instrument.run_scope(run.pk, run.generation):
                outcome, value = _run_handler(ctx, run)
            if outcome == "suspend":
                try:
                    outcome = "suspended" if ctx.suspend() else "woken"
                except LeaseLost:
                    outcome = "lease-lost"
                if outcome == "woken":
                    again.append(run)
            elif outcome in (RunStatus.SUCCEEDED, RunStatus.FAILED):
                ending.append((ctx, outcome, value))
                continue
            if outcome == "lease-lost":
                ctx.charge_unrecorded()
        except Exception as exc:
            # One run's unexpected error (the database refusing its write, a bug) is its own:
            # it is let go for the sweep (counted, and failed after too many in a row), and
            # the burst's other runs go on. Letting them all go would replay every run that
            # shares a burst with it, for as long as it fails.
            log.exception("could not advance run %s in a burst", run.pk)
            outcome = RunStatus.FAILED if advance_failed(run, owner, exc) else "error"
        counts[outcome] = counts.get(outcome, 0) + 1
    if ending:
        ending = _end_together(ending, owner, counts)
    if ending:
        with transaction.atomic():
            for ctx, outcome, value in ending:
                # A savepoint each: one run that cannot end (fenced out, a hook that raises)
                # must not roll back the others' ends.
                try:
                    with transaction.atomic():
                        done = ctx.write_finish(
                            outcome,
                            **(
                                {"output": value}
                                if outcome == RunStatus.SUCCEEDED
                                else {"error": value}
                            ),
                        )
                        if not done:
                            raise LeaseLost
                    key = str(outcome)
                except LeaseLost:
                    key = "lease-lost"
                    ctx.charge_unrecorded()
                except Exception:
                    log.exception("could not end run %s in a burst; advancing it alone", ctx.run_id)
                    ctx.discard_buffers()
                    again.append(ctx.record)
                    continue
                counts[key] = counts.get(key, 0) + 1
    for run in again:
        let_go(run, owner)
        drop_run(run.pk)
        advance(run.pk, run.generation)
    return counts


def _end_together(
    ending: list[tuple[Context, str, Any]], owner: str, counts: dict[str, int]
) -> list[tuple[Context, str, Any]]:
    """End the plain successes of a burst (nothing to write but the run row: a run that
    resumed past a gate and returned) in one statement, and their hooks, in one transaction.
    Returns the ends left for one savepoint each: the others, or all of them if that
    transaction failed (a hook that raised), since it then wrote nothing."""
    plain: list[tuple[Context, dict[str, Any]]] = []
    rest: list[tuple[Context, str, Any]] = []
    for ctx, outcome, value in ending:
        fields = ctx.plain_end(value) if outcome == RunStatus.SUCCEEDED else None
        if fields is None:
            rest.append((ctx, outcome, value))
        else:
            plain.append((ctx, fields))
    if not plain:
        return rest
    try:
        with transaction.atomic():
            ended = {
                str(pk)
                for pk in transitions.end_many(
                    owner, [(ctx.run_id, ctx.generation, fields) for ctx, fields in plain]
                )
            }
            for ctx, fields in plain:
                if str(ctx.run_id) in ended:
                    ctx.ended(fields)
    except Exception:
        log.exception("could not end %s runs together; ending them one by one", len(plain))
        return rest + [(ctx, RunStatus.SUCCEEDED, fields["output"]) for ctx, fields in plain]
    counts[RunStatus.SUCCEEDED] = counts.get(RunStatus.SUCCEEDED, 0) + len(ended)
    if len(plain) > len(ended):
        counts["lease-lost"] = counts.get("lease-lost", 0) + len(plain) - len(ended)
    return rest


# --- steps executed by a worker of their pool --------------------------------------------------


def claim_step(step_id: int, owner: str) -> Step | None:
    """Compare-and-swap a pending step to running under ``owner``, if its pool has room."""
    now = clock.now()
    # A branch whose slot was reserved when it was fanned out needs no pool lock: one
    # compare-and-swap from the reserved owner, returning the row.
    reserved = transitions.claim_reserved(step_id, owner, now)
    if reserved is not None:
        hold(step_id, owner)
        return reserved
    with transaction.atomic():
        row = (
            Step.objects.filter(pk=step_id, status=StepStatus.PENDING, held=False, superseded=False)
            .select_related("run")
            .first()
        )
        if row is None or row.run.status not in ACTIVE_RUN:
            return None
        capacity = pools.try_acquire(row.pool, now)
        if capacity is False:
            return None  # The pool is full; a finishing step hands its slot over.
        if isinstance(capacity, datetime):
            transitions.defer(row.pk, capacity)
            return None
        if not transitions.claim(row.pk, owner, now):
            return None
    row.status = StepStatus.RUNNING
    row.attempt += 1
    row.lease_owner = owner
    hold(row.pk, owner)
    return row


def execute_step(step_id: int) -> int:
    """Run a queued step, then keep running steps handed over from the same pool.

    When the last step this worker ran completed its group (or was the step its run waited
    for), the commit that recorded it also took the run's lease for this worker, which
    advances the run at once: no doorbell, no other worker replaying it. Returns the steps
    executed.
    """
    owner = owner_id()
    return _run_chain(claim_step(step_id, owner), owner)


def _run_chain(row: Step | None, owner: str) -> int:
    """Run a claimed step, then each step its slot is handed; then advance the run the last
    one took (see ``complete_step``). Returns the steps executed."""
    executed = 0
    woke: list[Run] = []
    while row is not None:
        ensure_heartbeat()
        executed += 1
        row = _run_claimed(row, owner, woke)
        if row is not None and draining.draining():
            # This worker is shutting down: the step its slot was handed goes back to the
            # pool, rung for, for a worker that is not. Run here, under a backlog the chain
            # went on until the supervisor killed the worker in the middle of a step.
            if _put_back(row, clock.now()):
                dispatch_on_commit(row.pk, row.pool)
            row = None
    for run in woke:
        # Its replay stops before any step it would run here, when this worker is shutting
        # down (``Context._execute``), and lets the run go on elsewhere.
        advance(run.pk, run.generation, taken=run)
    return executed


def execute_steps(step_ids: list[int], queue: str) -> int:
    """A batch doorbell: claim its reserved slots in one statement, run the first here and the
    others at once in this process's branch threads (``workflows.core.branches``), each going
    on with whatever its slot is handed; return when all are done. A step no thread is free for
    is rung for alone; one no longer reserved (reclaimed by the sweep) is claimed as usual."""
    if not step_ids:
        return 0
    threads = branches.reserve(len(step_ids) - 1)
    mine, left = list(step_ids[: 1 + threads]), list(step_ids[1 + threads :])
    if left:
        doorbell.send_steps([(step_id, queue) for step_id in left])
    try:
        claimed = transitions.claim_reserved_many(
            [(step_id, job_owner()) for step_id in mine], clock.now()
        )
    except BaseException:
        branches.unreserve(threads)
        raise
    for row in claimed.values():
        hold(row.pk, row.lease_owner)
    jobs: list[Callable[[], int]] = [
        partial(_run_chain, claimed[step_id], claimed[step_id].lease_owner)
        if step_id in claimed
        else partial(execute_step, step_id)
        for step_id in mine
    ]
    futures = [branches.start(job) for job in jobs[1:]]
    return jobs[0]() + sum(f.result() for f in futures)


def _run_claimed(row: Step, owner: str, woke: list[Any] | None = None) -> Step | None:
    with instrument.step_scope(row.name, row.pk, row.run_id, row.generation):
        return _run_claimed_step(row, owner, woke)


def _run_claimed_step(row: Step, owner: str, woke: list[Any] | None) -> Step | None:
    unresolved: Exception | None = None
    sd: Any = None
    try:
        sd = resolve_step(row.target)
    except Exception as e:
        newer = _needs_newer_code(row)
        if newer is not None:
            return _leave_step(row, owner, newer)
        sd, unresolved = None, e
    scope = usage.StepScope(step_id=row.pk, run_id=row.run_id, attempt=row.attempt)
    token = usage.enter(scope)
    exc: Exception | None = None
    data: Any = None
    started = time.perf_counter()
    try:
        if sd is None:
            raise unresolved or LookupError(row.target)
        call = payloads.unpack(row.args, row.run_id) or {}
        if call.get("budgeted"):
            refusal = budget_refusal(row)
            if refusal:
                raise BranchBudgetExceeded(refusal)
        value = call_step(sd, call.get("args", []), call.get("kwargs", {}))
        data, blob = payloads.pack(value, row.run_id, f"result of {row.name}")
        if blob is not None:
            blob.save()
            data = payloads.blob_ref(blob)
    except Exception as e:
        exc = e
    except BaseException:
        # Not an outcome (SystemExit, a cancellation): treated as a lost worker, as for a step
        # run inline. Stop renewing the lease, so that the sweep reclaims the step when it
        # runs out and counts the attempt; held, it would stay running for as long as this
        # process lives (a thread pool survives the exception).
        drop(row.pk)
        raise
    finally:
        usage.leave(token)
    seconds = time.perf_counter() - started
    handed = complete_step(row, owner, data, exc, scope, sd, woke)
    instrument.emit(
        "step_finished",
        pool=row.pool,
        seconds=seconds,
        outcome=_outcome(row, exc),
        usage=scope.usage,
        cost=scope.cost,
    )
    return handed


def _needs_newer_code(row: Step) -> str | None:
    """Why a queued step whose code this process cannot import belongs to a run that needs
    newer code (``definitions.newer_than_here``), or None."""
    run = Run.objects.filter(pk=row.run_id).values("workflow", "version", "created_at").first()
    if run is None:
        return None
    return newer_than_here(run["workflow"], run["version"], run["created_at"])


def _put_back(row: Step, wake_at: datetime) -> bool:
    """A step claimed here (attempt counted) that did not start: back to pending as before its
    claim, its attempt not counted, due by ``wake_at``. False when it is no longer ours."""
    drop(row.pk)
    put_back = {
        "status": StepStatus.PENDING,
        "attempt": row.attempt - 1,
        "lease_owner": "",
        "lease_expires_at": None,
        "wake_at": wake_at,
    }
    return transitions.reclaim_step(row, put_back)


def _leave_step(row: Step, owner: str, newer: str) -> Step | None:
    """A rolling deploy: a queued step (a branch, say) of a run started by newer code, whose
    code this process cannot import, is put back as it was before this claim: pending, its
    attempt not counted, rung for again in ``NOT_HERE_WAIT`` for a worker with the new code.
    Spending its attempts here on ``ModuleNotFoundError`` would fail it, and its run, while
    the deploy rolls out. The pool slot it held passes to the pool's oldest waiting step, as
    a finishing step's does (``complete_step``): returned for this thread to run next."""
    log.warning(
        "step %s (%s) of run %s: %s; leaving it for a worker with the new code",
        row.pk,
        row.target,
        row.run_id,
        newer,
    )
    now = clock.now()
    # Due after the hand-over's horizon (now + the doorbell grace, which may be longer than
    # NOT_HERE_WAIT): else the hand-over below took this very step back, again and again.
    if not _put_back(row, now + max(NOT_HERE_WAIT, 2 * grace())):
        return None  # no longer ours (reclaimed, canceled): nothing to leave
    conf = pools.get_pool(row.pool)
    if not conf.max_concurrency or conf.rate_limit:
        return None
    handed = transitions.hand_over(row.pool, owner, now, now + grace())
    if handed is not None:
        hold(handed.pk, owner)
    return handed


def _outcome(row: Step, exc: Exception | None) -> str:
    """What ``complete_step`` made of an attempt (for instrumentation)."""
    if exc is None:
        return str(StepStatus.SUCCEEDED)
    if is_retryable(exc) and row.attempt < row.max_attempts:
        return str(StepStatus.RETRYING)
    return str(StepStatus.FAILED)


def budget_refusal(row: Step) -> str:
    """Why this branch must not start under its run's ``max_cost`` ("" when it may).

    Spent is the run's recorded cost; reserved is what the run's other branches in flight will
    likely spend, estimated at the mean cost of the run's finished steps that had a cost. A
    branch starts only while spent + reserved is under the cap, so a map of $0.40 steps under
    $0.50 stops after the step that crossed it, not after every branch ran.
    """
    run = Run.objects.filter(pk=row.run_id).values("cost", "max_cost").first()
    if run is None or run["max_cost"] is None:
        return ""
    cap = Decimal(run["max_cost"])
    spent = Decimal(run["cost"] or 0)
    stats = Step.objects.filter(run_id=row.run_id, superseded=False).aggregate(
        in_flight=Count(
            "pk",
            filter=Q(status=StepStatus.RUNNING, branch__gte=0)
            & ~Q(pk=row.pk)
            & ~Q(lease_owner=pools.RESERVED),
        ),
        mean=Avg("cost", filter=Q(cost__gt=0, finished_at__isnull=False)),
    )
    reserved = Decimal(stats["mean"] or 0) * stats["in_flight"]
    if spent + reserved < cap:
        return ""
    return (
        f"budget exceeded: the run has spent ${spent:.4f} of its ${cap:.4f} budget (max_cost)"
        f", with ${reserved:.4f} reserved by {stats['in_flight']} branch(es) in flight; "
        f"branch {row.branch} of {row.name!r} at position {row.position} was not started"
    )


def complete_step(
    row: Step,
    owner: str,
    data: Any,
    exc: Exception | None,
    scope: usage.StepScope,
    sd: Any,
    woke: list[Run] | None = None,
) -> Step | None:
    """Record a claimed step's outcome (fenced on owner and attempt) and all that follows from
    it, in one commit (``Storage.finish_step``; on PostgreSQL one statement):

    1. Compare-and-swap running → succeeded / retrying / failed. A stale worker (the step was
       reclaimed, canceled or superseded) changes nothing and stops.
    2. A branch that reaches a terminal state counts its group down; the one that takes it to
       zero closes the group. The group's row lock serializes the branches, so exactly one
       sees zero. That one (or a queued step its run waited for) lets the run go on: when the
       caller passes ``woke`` and nothing was handed over (4), this worker takes the run's
       lease there and then and the run is appended to ``woke`` for the caller to advance,
       with no doorbell; otherwise the run is marked runnable and rung for.
    3. A terminal branch lets the next held branch of the run start (the parallelism cap).
    4. In a pool with a concurrency limit, this worker's slot passes straight to the oldest
       waiting step, claimed in the same commit: the count of running steps never changes,
       so no pool lock is needed. Returns that step for the caller to run.
    """
    now = clock.now()
    drop(row.pk)
    fields: dict[str, Any] = {"finished_at": now, "lease_owner": "", "lease_expires_at": None}
    if scope.usage:
        fields["usage"] = usage.merge(row.usage, scope.usage)
    if exc is None:
        fields.update(status=StepStatus.SUCCEEDED, result=data, error=None)
    else:
        err = error_dict(exc, attempt=row.attempt)
        if is_retryable(exc) and row.attempt < row.max_attempts:
            policy = sd.retry if sd is not None else None
            delay = policy.backoff(row.attempt) if policy else 1.0
            delay = max(delay, retry_after(exc) or 0.0)
            fields.update(
                status=StepStatus.RETRYING, error=err, wake_at=now + timedelta(seconds=delay)
            )
            log_failed_attempt(row.name, row.run_id, row.attempt, row.max_attempts, err, delay)
        else:
            fields.update(status=StepStatus.FAILED, error=err)
            log_failed_attempt(row.name, row.run_id, row.attempt, row.max_attempts, err, None)
    conf = pools.get_pool(row.pool)
    then: dict[str, Any] = {
        "cost": Decimal(scope.cost or 0),
        "now": now,
        "ready_by": now + grace(),
        "hand_over": bool(conf.max_concurrency and not conf.rate_limit),
        "take_run": woke is not None,
    }
    try:
        done = transitions.finish(row, owner, fields, **then)
    except (DataError, TypeError, ValueError) as refused:
        # The outcome holds a value the database (or its field) refuses. Left running, the
        # step would be run again and again, then blamed on a lost worker: record it failed,
        # with why, and let the run's failure path (retry, catch, on_complete) go on.
        log.warning("could not record step %s's outcome; failing it", row.pk, exc_info=True)
        fields = {
            "finished_at": now,
            "lease_owner": "",
            "lease_expires_at": None,
            "status": StepStatus.FAILED,
            "error": error_dict(refused, attempt=row.attempt, outcome_not_stored=True),
        }
        # Without the attempt's cost too: a run total past the cost column's range is refused
        # the same way, and the step was run again and again, paying each time.
        then["cost"] = Decimal(0)
        done = transitions.finish(row, owner, fields, **then)
    if done is None:
        # Fenced out (its run canceled or restarted meanwhile): the outcome is dropped, what
        # the attempt spent is recorded all the same.
        if then["cost"] > 0:
            transitions.charge_unrecorded(
                row.run_id, then["cost"], [(row.pk, (row.cost or Decimal(0)) + then["cost"])]
            )
        return None
    if done.wake is not None:
        ring_on_commit(row.run_id, done.wake)
    if done.released is not None:
        dispatch_on_commit(*done.released)
    if done.run is not None and woke is not None:
        woke.append(done.run)
    if done.next is not None:
        hold(done.next.pk, owner)
    return done.next


def step_finished(row: Step, now: datetime) -> bool:
    """A queued step reached a terminal state outside ``complete_step`` (the sweep failed it
    after its worker died too often): join its group or wake its run, in the caller's
    transaction.

    Returns True when this made the run runnable.
    """
    if row.branch < 0:
        return request_wake(row.run_id, now)
    group = transitions.leave_group(row, failed=row.status == StepStatus.FAILED)
    if group is None:
        return False
    group_id, remaining, holds_back = group
    woke = False
    if remaining == 0:
        failed = (
            Step.objects.filter(
                run_id=row.run_id, position=row.position, branch__gte=0, superseded=False
            )
            .exclude(status=StepStatus.SUCCEEDED)
            .exists()
        )
        if transitions.close_group(group_id, failed, now):
            woke = request_wake(row.run_id, now)
    # Only a group wider than the run's parallelism cap holds branches back.
    if holds_back:
        release_held(row.run_id, now)
    return woke


def release_held(run_id: Any, now: datetime) -> None:
    """Let the next held branch of the run start, keeping it under its parallelism cap."""
    held = (
        Step.objects.filter(run_id=run_id, held=True, superseded=False, status=StepStatus.PENDING)
        .order_by("position", "branch")
        .first()
    )
    if held is not None and transitions.release_held(held.pk, now + grace()):
        dispatch_on_commit(held.pk, held.pool)
