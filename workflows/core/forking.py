"""``fork(run_id, from_step=N)``: a new run of the same workflow and input that reuses the
original's journal before position N, as DBOS's ``fork_workflow`` does.

The new run starts pending with copies of the original's live journal rows at positions 1 to
N-1 (fan-out branches included), so its handler replays those results and runs position N
onwards anew. The original is left as it is (a fork is not a restart: nothing of it is
superseded) and its audit trail records who forked it, from which step.

Values stored out of row belong to one run (``workflows.core.payloads``: a blob is read only by its
run, or by the parent of the child run that wrote it). The copied rows therefore get copies of
their blobs, owned by the new run: the fork can read them, and no third run can. A reference
the original could not read itself (a foreign blob) is copied as it is, and stays unreadable.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Q, QuerySet

from workflows.core import audit, clock, payloads
from workflows.core.audit import Actor
from workflows.core.definitions import replayable
from workflows.core.doorbell import ring_on_commit
from workflows.core.errors import InvalidInputError, RunNotFoundError, UnknownWorkflowError
from workflows.core.models import Blob, Run, RunAction, RunStatus, Step, StepKind, StepStatus
from workflows.core.services import get_run

# A fork replays these rows: each must hold its final answer (a result, or the failure the
# handler saw and perhaps caught). A row still running or waiting belongs to the original.
REUSABLE = (StepStatus.SUCCEEDED, StepStatus.FAILED)


def fork(
    run_id: Any,
    from_step: int = 1,
    *,
    actor: Actor | None = None,
    reason: str = "",
) -> Run:
    """Start a new run of ``run_id``'s workflow (same version, input and context) reusing the
    journal before position ``from_step``; return it, pending, as ``start`` does.

    ``from_step`` is 1 to one past the original's last position (1 reuses nothing). Out of
    that range, or when a position before it has not finished (still running, waiting or
    canceled), it raises ``InvalidInputError`` (field ``from_step``) and starts nothing.
    The original may be in any state; it is not changed, except for its audit trail.
    """
    reason = audit.check_reason(reason)
    if isinstance(from_step, bool) or not isinstance(from_step, int):
        raise _bad_step(f"from_step must be a journal position (an integer), not {from_step!r}")
    with transaction.atomic():
        source = get_run(run_id)  # a clear RunNotFoundError for unknown or malformed ids
        if connection.features.has_select_for_update:
            # A consistent journal: checkpoints of the original lock its row first.
            locked = Run.objects.select_for_update(no_key=True).filter(pk=source.pk).first()
            if locked is None:  # pruned while this waited for its lock
                raise RunNotFoundError(f"no run with id {run_id}")
            source = locked
        # The checks read every live row, but not its values: only the rows a fork keeps
        # carry theirs (below). A fork of a long run loaded every value it would not copy.
        journal = Step.objects.filter(run=source, superseded=False).order_by(
            "position", "branch", "id"
        )
        rows = list(journal.defer("args", "result", "error", "usage"))
        last = max((r.position for r in rows if r.branch < 0), default=0)
        if not 1 <= from_step <= last + 1:
            raise _bad_step(
                f"from_step {from_step} is out of range: run {source.pk} has journal positions "
                f"1 to {last}, so a fork starts from 1 to {last + 1}",
                f"from 1 to {last + 1}",
            )
        undone = _first_undone(rows, compensating=source.status == RunStatus.COMPENSATING)
        if undone is not None and from_step > undone:
            # The original compensated: from that step on its effects were taken back, and
            # its undo entries are no results a replay could use.
            raise _bad_step(
                f"run {source.pk} compensated: its steps from position {undone} on were "
                "undone (or are being undone), "
                f"so a fork reuses results before position {undone} at most; fork from step "
                f"{undone} at most",
                f"at most {undone}",
            )
        unfinished = [r for r in rows if r.position < from_step and r.status not in REUSABLE]
        if unfinished:
            row = unfinished[0]
            raise _bad_step(
                f"position {row.position} ({row.kind} {row.name!r}) of run {source.pk} is "
                f"{row.status}: a fork reuses finished positions only; fork from step "
                f"{row.position} at most",
                f"at most {row.position}",
            )
        try:
            replayable(source.workflow, source.version)
        except UnknownWorkflowError as exc:
            raise InvalidInputError(str(exc)) from None
        now = clock.now()
        kept = list(journal.filter(position__lt=from_step))
        shown = [r for r in kept if r.branch < 0]
        creator = _creator(actor)
        new = Run.objects.create(
            workflow=source.workflow,
            version=source.version,
            input=source.input,
            context=source.context,
            on_complete=source.on_complete,
            max_parallel=source.max_parallel,
            tenant=source.tenant,
            created_by=creator,
            created_by_user_id=_creator_id(actor),
            # A webhook is signed with the secret of the key that started its run (without a
            # key, with the deployment's own), and the original's receiver knows that one
            # only: a fork signed with another secret would reach it unverifiable.
            callback_url=source.callback_url
            if _signer(creator) == _signer(source.created_by)
            else "",
            max_cost=source.max_cost,
            review_timeout=source.review_timeout,
            forked_from=source,
            forked_at_step=from_step,
            status=RunStatus.PENDING,
            wake_requested_at=now,
            # The executor loads the journal of runs that reached a step only.
            current_step=shown[-1].name[:200] if shown else "",
        )
        owned = _own_blobs(kept, source, new)
        Step.objects.bulk_create([_copy(row, source, new, owned) for row in kept])
        audit.record(
            source,
            RunAction.FORK,
            generation=source.generation,
            actor=actor,
            reason=reason or f"forked as run {new.pk}",
            from_step=from_step,
        )
        ring_on_commit(new.pk, new.generation)
    return new


def _signer(created_by: str) -> str | None:
    """Whose secret signs the webhooks of a run started by ``created_by``: its API key's
    prefix, or None for the deployment's default secret (``workflows.webhooks.key_for_run``)."""
    return created_by[4:] if created_by.startswith("api:") else None


def _creator(actor: Actor | None) -> str:
    """``Run.created_by`` of the fork, as a start by the same actor records it: a user's bare
    name (the run pages show a user the runs they started by it), else the key's actor."""
    if actor is None:
        return ""
    if actor.user is not None and actor.api_key is None:
        return str(actor.user.get_username())[:150]
    return actor.description[:150]


def _creator_id(actor: Actor | None) -> int | None:
    """``Run.created_by_user_id`` of the fork: the signed-in user who forked it, if one did."""
    if actor is None or actor.user is None or actor.api_key is not None:
        return None
    return int(actor.user.pk)


def last_forkable(rows: list[Step], *, compensating: bool = False) -> int:
    """The highest ``from_step`` a fork of a run with these live journal rows accepts: one past
    the last position, or the first position that has not finished (or is to be undone: pass
    ``compensating`` for a run in that state)."""
    last = max((r.position for r in rows if r.branch < 0), default=0)
    unfinished = [r.position for r in rows if r.status not in REUSABLE]
    undone = _first_undone(rows, compensating=compensating)
    return min([last + 1, *unfinished, *([undone] if undone is not None else [])])


def last_forkable_in(live: QuerySet[Step], *, compensating: bool = False) -> int:
    """``last_forkable`` of a run's live journal rows (``live``), computed by the database in
    one query: the run page asks it of journals too long to load."""
    done = Q(status__in=REUSABLE)
    undoable = Q(status=StepStatus.SUCCEEDED) & ~Q(undo="") & ~Q(kind=StepKind.COMPENSATE)
    agg = live.aggregate(
        last=Max("position", filter=Q(branch__lt=0)),
        unfinished=Min("position", filter=~done),
        undos=Count("id", filter=Q(kind=StepKind.COMPENSATE)),
        undone=Min("position", filter=undoable),
    )
    bounds = [(agg["last"] or 0) + 1]
    if agg["unfinished"] is not None:
        bounds.append(agg["unfinished"])
    if (compensating or agg["undos"]) and agg["undone"] is not None:
        bounds.append(agg["undone"])
    return min(bounds)


def _first_undone(rows: list[Step], *, compensating: bool = False) -> int | None:
    """The first position a compensation undid, or is about to undo (None when the run has no
    undo entries and is not compensating): a fork must run it again, as a restart does
    (``compensation.first_undone_position``). A run that has just become ``compensating`` has
    journaled no undo yet, but every succeeded step with an undo is in its plan."""
    if not compensating and not any(r.kind == StepKind.COMPENSATE for r in rows):
        return None
    undone = [
        r.position
        for r in rows
        if r.undo and r.status == StepStatus.SUCCEEDED and r.kind != StepKind.COMPENSATE
    ]
    return min(undone) if undone else None


def _bad_step(message: str, short: str = "an integer") -> InvalidInputError:
    return InvalidInputError(
        message, [{"field": "from_step", "message": short, "type": "value_error"}]
    )


def _copy(row: Step, source: Run, new: Run, owned: dict[tuple[int, int], Blob]) -> Step:
    """A live copy of a finished journal row for the new run (generation 1, no lease, no
    cost: the original paid for it and keeps the cost), its blobs copied to the new run."""
    return Step(
        run=new,
        generation=new.generation,
        position=row.position,
        branch=row.branch,
        kind=row.kind,
        name=row.name,
        status=row.status,
        pool=row.pool,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        target=row.target,
        # No undo (``Step.undo`` stays empty): the effects of the reused steps belong to the
        # original run, which may still need them; a failing fork must not take them back.
        args=_own(row.args, row, owned),
        digest=row.digest,
        result=_own(row.result, row, owned),
        error=row.error,
        wake_at=row.wake_at,
        remaining=0,
        # The tokens, as the cost, are the original's: copied as they were, a sum of tokens
        # over runs (the API's input_tokens / output_tokens) counted them twice.
        usage={"reused_from_run": str(source.pk)} if row.usage else row.usage,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _blob_id(value: Any) -> int | None:
    """The blob a value refers to (``{"$blob": id}``), or None."""
    if not payloads.is_blob_ref(value):
        return None
    ref = value[payloads.BLOB_KEY]
    if not isinstance(ref, int) or isinstance(ref, bool) or not 0 < ref < 2**63:
        return None
    return ref


# A fork copies the blobs it keeps in batches of at most this many bytes of data: read and
# written a batch at a time, never all at once (140 blobs of 8 MB made one 1.1 GB INSERT, past
# PostgreSQL's 1 GB message limit, and held them all in the web process).
COPY_BATCH_BYTES = 64 * 1024 * 1024


def _own_blobs(kept: list[Step], source: Run, new: Run) -> dict[tuple[int, int], Blob]:
    """Copies, owned by the new run, of the blobs the kept rows refer to and the original
    could read (its own, or the output of the child run a row started): (row id, blob id) →
    the copy. One query for what the blobs are, then two per ``COPY_BATCH_BYTES`` of their
    data: a fork of 500 blob-backed rows made two per row (992 queries, 2.9 s, holding the
    original's row lock)."""
    wanted = {
        (row.pk, ref): row
        for row in kept
        for ref in (_blob_id(row.args), _blob_id(row.result))
        if ref is not None
    }
    if not wanted:
        return {}
    blobs: dict[int, dict[str, Any]] = {
        b["pk"]: dict(b)
        for b in Blob.objects.filter(pk__in={ref for _, ref in wanted}).values(
            "pk", "run_id", "run__parent_step_id", "size"
        )
    }
    readable = [
        (key, blobs[key[1]])
        for key, row in wanted.items()
        if key[1] in blobs
        and (
            blobs[key[1]]["run_id"] == source.pk
            or (row.kind == StepKind.CHILD and blobs[key[1]]["run__parent_step_id"] == row.pk)
        )
    ]
    owned: dict[tuple[int, int], Blob] = {}
    batch: list[tuple[tuple[int, int], dict[str, Any]]] = []
    size = 0
    for item in readable:
        if batch and size + item[1]["size"] > COPY_BATCH_BYTES:
            owned.update(_copy_blobs(batch, new))
            batch, size = [], 0
        batch.append(item)
        size += item[1]["size"]
    if batch:
        owned.update(_copy_blobs(batch, new))
    return owned


def _copy_blobs(
    batch: list[tuple[tuple[int, int], dict[str, Any]]], new: Run
) -> dict[tuple[int, int], Blob]:
    data = dict(
        Blob.objects.filter(pk__in={blob["pk"] for _, blob in batch}).values_list("pk", "data")
    )
    copies = [Blob(run=new, data=data[blob["pk"]], size=blob["size"]) for _, blob in batch]
    if connection.features.can_return_rows_from_bulk_insert:
        Blob.objects.bulk_create(copies)
    else:  # a database that returns no ids from a bulk insert
        for copy in copies:
            copy.save()
    return {key: copy for (key, _), copy in zip(batch, copies, strict=True)}


def _own(value: Any, row: Step, owned: dict[tuple[int, int], Blob]) -> Any:
    """``value`` as the new run may read it: a blob reference the original could read becomes
    a reference to its copy (``_own_blobs``). Anything else, a reference foreign to the
    original too among them, is returned as it is."""
    ref = _blob_id(value)
    if ref is None or (row.pk, ref) not in owned:
        return value
    return payloads.blob_ref(owned[(row.pk, ref)])
