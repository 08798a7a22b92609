"""``fork(run_id, from_step=N)``: a new run reusing the journal before N (as DBOS's
fork_workflow), the original untouched; blobs copied so the fork can read them and no one
else can."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

import tests.workflows.blob_workflows  # noqa: F401  (registers blobs.parent)
from tests.support import Bell
from workflows import (
    InvalidInputError,
    RunNotFoundError,
    fork,
    record_usage,
    send_event,
    start,
    step,
    workflow,
)
from workflows.core.payloads import ForeignBlobError, unpack
from workflows.models import Blob, Run, RunAudit, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

CALLS: Counter[str] = Counter()


@step
def fetch(n: int) -> dict[str, Any]:
    CALLS["fetch"] += 1
    return {"text": "secret " * n}


@step
def measure(doc: dict[str, Any]) -> int:
    CALLS["measure"] += 1
    return len(doc["text"])


@step
def square(x: int) -> int:
    CALLS["square"] += 1
    return x * x


@workflow(name="test.fork.pipeline")
def pipeline(ctx: Any, n: int) -> dict[str, Any]:
    doc = ctx.run(fetch, n)  # 1 (large: a blob)
    squares = ctx.map(square, [1, 2, 3])  # 2 (a fan-out)
    size = ctx.run(measure, doc)  # 3
    return {"size": size, "squares": squares}


@workflow(name="test.fork.waiting")
def waiting(ctx: Any) -> Any:
    first = ctx.run(square, 3)  # 1
    ev = ctx.wait_for_event("go", timeout=timedelta(hours=1))  # 2
    return [first, ev]


def finished(bell: Bell, run: Run) -> Run:
    bell.settle()
    run.refresh_from_db()
    return run


@pytest.fixture(autouse=True)
def _small_inline_limit(settings: Any) -> None:
    settings.SLUICE_PAYLOAD_INLINE_LIMIT = 100
    CALLS.clear()


def test_fork_reuses_the_journal_before_the_step_and_runs_the_rest(bell: Bell) -> None:
    original = finished(bell, start("test.fork.pipeline", {"n": 30}))
    assert original.status == "succeeded", original.error
    assert CALLS == {"fetch": 1, "square": 3, "measure": 1}
    before = list(Step.objects.filter(run=original).values_list("id", "status", "superseded"))

    new = fork(original.pk, from_step=3)
    assert isinstance(new, Run) and new.pk != original.pk and new.status == "pending"
    assert (new.workflow, new.version, new.input) == (original.workflow, 1, {"n": 30})
    assert new.forked_from_id == original.pk and new.forked_at_step == 3
    new = finished(bell, new)
    assert new.status == "succeeded", new.error
    assert new.output == original.output
    # Positions 1 and 2 (the fetch and the three branches) were reused, 3 ran again.
    assert CALLS == {"fetch": 1, "square": 3, "measure": 2}
    kinds = list(
        Step.objects.filter(run=new).order_by("position", "branch").values_list("position", "kind")
    )
    assert kinds == [(1, "step"), (2, "parallel"), (2, "branch"), (2, "branch"), (2, "branch")] + [
        (3, "step")
    ]
    # The original is as it was, plus one audit entry saying who forked it from where.
    assert list(Step.objects.filter(run=original).values_list("id", "status", "superseded")) == (
        before
    )
    entry = RunAudit.objects.get(run=original)
    assert (entry.action, entry.from_step) == ("fork", 3)
    assert str(new.pk) in entry.reason


def test_fork_from_step_1_runs_everything_again(bell: Bell) -> None:
    original = finished(bell, start("test.fork.pipeline", {"n": 1}))
    new = finished(bell, fork(original.pk, from_step=1))
    assert new.status == "succeeded"
    assert CALLS == {"fetch": 2, "square": 6, "measure": 2}


def test_the_fork_reads_its_copy_of_the_blobs_and_nobody_else_does(bell: Bell) -> None:
    original = finished(bell, start("test.fork.pipeline", {"n": 30}))
    third = finished(bell, start("test.fork.pipeline", {"n": 1}))
    new = finished(bell, fork(original.pk, from_step=3))
    assert new.status == "succeeded", new.error
    assert new.output["size"] == len("secret " * 30)
    copied = Step.objects.get(run=new, position=1).result
    blob = Blob.objects.get(pk=copied["$blob"])
    assert blob.run_id == new.pk  # its own copy, not the original's blob
    original_ref = Step.objects.get(run=original, position=1).result
    assert original_ref["$blob"] != blob.pk
    assert unpack(copied, new.pk)["text"].startswith("secret")
    with pytest.raises(ForeignBlobError):
        unpack(copied, third.pk)
    with pytest.raises(ForeignBlobError):
        unpack(copied, original.pk)


def test_a_fork_of_a_waiting_run_waits_for_its_own_event(bell: Bell) -> None:
    original = finished(bell, start("test.fork.waiting"))
    assert original.status == "suspended"
    with pytest.raises(InvalidInputError, match="position 2 .* is waiting"):
        fork(original.pk, from_step=3)
    new = finished(bell, fork(original.pk, from_step=2))
    assert new.status == "suspended" and CALLS["square"] == 1  # position 1 reused
    send_event(new.pk, "go", "fork's")
    new = finished(bell, new)
    original.refresh_from_db()
    assert new.status == "succeeded" and new.output == [9, "fork's"]
    assert original.status == "suspended"  # the event went to the fork only


@pytest.mark.parametrize("bad", [0, -1, 5, 10**9, True, "2"])
def test_out_of_range_is_a_clear_error_and_starts_nothing(bell: Bell, bad: Any) -> None:
    original = finished(bell, start("test.fork.pipeline", {"n": 1}))
    runs = Run.objects.count()
    with pytest.raises(InvalidInputError) as info:
        fork(original.pk, from_step=bad)
    assert info.value.errors[0]["field"] == "from_step"
    assert Run.objects.count() == runs
    assert not RunAudit.objects.filter(run=original).exists()


def test_fork_from_one_past_the_end_reuses_everything(bell: Bell) -> None:
    original = finished(bell, start("test.fork.pipeline", {"n": 1}))
    new = finished(bell, fork(original.pk, from_step=4))
    assert new.status == "succeeded" and new.output == original.output
    assert CALLS == {"fetch": 1, "square": 3, "measure": 1}


def test_unknown_run() -> None:
    with pytest.raises(RunNotFoundError):
        fork("00000000-0000-0000-0000-000000000000", from_step=1)
    with pytest.raises(RunNotFoundError):
        fork("not-a-uuid", from_step=1)


@override_settings(SLUICE_PAYLOAD_INLINE_LIMIT=100)
def test_a_child_runs_large_output_is_copied_for_the_fork(bell: Bell) -> None:
    original = finished(bell, start("blobs.parent", {"n": 50}))
    assert original.status == "succeeded", original.error
    new = finished(bell, fork(original.pk, from_step=2))
    assert new.status == "succeeded", new.error
    assert new.output == original.output
    ref = Step.objects.get(run=new, position=1).result
    assert Blob.objects.get(pk=ref["$blob"]).run_id == new.pk


@step
def paid_call(x: int) -> int:
    record_usage(input_tokens=500, output_tokens=50, cost=Decimal("0.01"))
    return x


@workflow(name="test.fork.paid")
def paid(ctx: Any) -> int:
    return ctx.run(paid_call, 1) + ctx.run(square, 2)


def test_a_reused_step_carries_no_tokens_of_its_own(bell: Bell) -> None:
    """Found by review: the fork's copy kept the original's token counts (with a cost of 0),
    so tokens summed over runs counted the reused call twice."""
    original = finished(bell, start("test.fork.paid", {}))
    new = finished(bell, fork(original.pk, from_step=2))
    assert new.status == "succeeded"
    copy = Step.objects.get(run=new, position=1)
    assert copy.usage == {"reused_from_run": str(original.pk)} and copy.cost == 0
    assert Step.objects.get(run=original, position=1).usage["input_tokens"] == 500


@workflow(name="test.fork.many_blobs")
def many_blobs(ctx: Any, n: int) -> int:
    docs = [ctx.run(fetch, 20 + i) for i in range(n)]  # 1..n, each a blob
    return sum(ctx.run(measure, d) for d in docs[:1])  # n + 1


def test_a_fork_copies_many_blobs_in_a_constant_number_of_queries(bell: Bell) -> None:
    """Found by review: a fork made two queries per blob-backed journal row (500 rows: 992
    queries, 2.9 s in the web request, holding the original's row lock)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for n in (5, 40):
        original = finished(bell, start("test.fork.many_blobs", {"n": n}))
        assert original.status == "succeeded", original.error
        with CaptureQueriesContext(connection) as queries:
            new = fork(original.pk, from_step=n + 1)
        counts.append(len(queries))
        new = finished(bell, new)
        assert new.status == "succeeded" and new.output == original.output
        refs = [s.result["$blob"] for s in Step.objects.filter(run=new, position__lte=n)]
        assert len(set(refs)) == n
        assert set(Blob.objects.filter(pk__in=refs).values_list("run_id", flat=True)) == {new.pk}
    assert counts[0] == counts[1], counts


def test_a_fork_copies_its_blobs_a_batch_of_bytes_at_a_time(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the diff review: all blobs in one INSERT (140 of 8 MB: 1.1 GB, past
    PostgreSQL's 1 GB message limit, and all of them in the web process's memory)."""
    from workflows.core import forking

    original = finished(bell, start("test.fork.many_blobs", {"n": 6}))
    sizes = sorted(Blob.objects.filter(run=original).values_list("size", flat=True), reverse=True)
    monkeypatch.setattr(forking, "COPY_BATCH_BYTES", sizes[0] + sizes[1] - 1)  # one per batch
    batches: list[int] = []
    real = forking._copy_blobs
    monkeypatch.setattr(
        forking, "_copy_blobs", lambda batch, new: batches.append(len(batch)) or real(batch, new)
    )
    new = finished(bell, fork(original.pk, from_step=7))
    assert new.status == "succeeded" and new.output == original.output
    assert batches and max(batches) <= 2 and sum(batches) == 6
