"""One enormous run (found by review): a wide fan-out's held branches, and its width.

Letting the next held branch of a fan-out go looks it up among the run's held, pending, live
branches in (position, branch) order. Through ``step_unique_live_position`` that walked past
every branch already released (41 ms at 40,000 released, under the group row's lock), so a
map's cost grew with the square of its width; the partial index ``step_held_pending`` holds the
held branches only. And a fan-out wider than ``SLUICE_MAX_FANOUT`` is refused before anything
of it is written (a map over 200,000 items was one 23-second transaction and 600 MB in the
worker), while one already journaled replays whatever its width.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core import executor
from workflows.core import storage as module
from workflows.core.context import FanOutTooWide
from workflows.core.models import Run, RunStatus, Step, StepKind, StepStatus
from workflows.core.storage import PostgresStorage

pytestmark = [pytest.mark.core]

INDEX = "step_held_pending"


@step
def triple(x: int) -> int:
    return x * 3


@workflow(name="test.enormous.map", max_parallel=2)
def mapped(ctx: Any, n: int) -> list[int]:
    return ctx.map(triple, list(range(n)))


@workflow(name="test.enormous.parallel")
def paralleled(ctx: Any, n: int) -> list[int]:
    return ctx.parallel([ctx.call(triple, i) for i in range(n)])


@workflow(name="test.enormous.batched", max_parallel=2)
def batched(ctx: Any, n: int) -> list[Any]:
    """Tries the wide map, then falls back to one branch per batch of two items."""
    items = list(range(n))
    try:
        return ctx.map(triple, items)
    except FanOutTooWide:
        return ctx.map(total, [items[i : i + 2] for i in range(0, n, 2)])


@step
def total(items: list[int]) -> int:
    return sum(items)


# --- the held branches' index -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_held_branches_index_is_declared_and_in_the_database() -> None:
    declared = {index.name: index for index in Step._meta.indexes}
    assert INDEX in declared
    assert declared[INDEX].fields == ["run", "position", "branch"]
    with connection.cursor() as cur:
        found = connection.introspection.get_constraints(cur, Step._meta.db_table)
    assert INDEX in found and found[INDEX]["index"], sorted(found)
    assert found[INDEX]["columns"] == ["run_id", "position", "branch"]


def _wide_map(width: int = 3000, released: int = 2800) -> Run:
    """A run whose map over ``width`` items has let ``released`` branches go (and finished
    them), the rest held; beside it other runs' journals, then ANALYZE, so that the planner
    weighs the indexes as it would on a working system."""
    now = timezone.now()
    others = Run.objects.bulk_create(
        Run(workflow="enormous.other", status=RunStatus.SUCCEEDED) for _ in range(40)
    )
    run = Run.objects.create(workflow="enormous.map", status=RunStatus.SUSPENDED)
    rows = [
        Step(run=other, position=p, kind=StepKind.STEP, name="s", status=StepStatus.SUCCEEDED)
        for other in others
        for p in range(1, 51)
    ]
    rows.append(
        Step(
            run=run,
            position=1,
            branch=-1,
            kind=StepKind.PARALLEL,
            name="map:triple",
            status=StepStatus.WAITING,
            remaining=width - released,
            args={"branches": width, "held": True},
        )
    )
    rows += [
        Step(
            run=run,
            position=1,
            branch=i,
            kind=StepKind.BRANCH,
            name="triple",
            status=StepStatus.SUCCEEDED if i < released else StepStatus.PENDING,
            held=i >= released + 2,
            finished_at=now if i < released else None,
        )
        for i in range(width)
    ]
    Step.objects.bulk_create(rows, batch_size=2000)
    with connection.cursor() as cur:
        cur.execute("ANALYZE workflows_step")
        cur.execute("ANALYZE workflows_run")
    return run


def _explain(sql: str) -> str:
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cur.fetchall())


@pytest.mark.django_db
def test_releasing_the_next_held_branch_walks_only_the_held_ones() -> None:
    """The three lookups of the next held branch plan through ``step_held_pending``: the
    finish statement's ``h`` (on its generic plan, as it runs), ``PostgresStorage._release_held``
    and ``executor.release_held`` (each captured as it ran, planned with its values)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: the plans")
    from tests.workflows.test_generic_plans import FIELDS, _cte, _generic_plan

    run = _wide_map()
    plan = _generic_plan(module._finish_sql(FIELDS, False, True, True, False), seqscan=True)
    assert INDEX in _cte(plan, "h"), plan

    now = timezone.now()
    for release in (
        lambda: PostgresStorage._release_held(run.pk, now),
        lambda: executor.release_held(run.pk, now),
    ):
        with CaptureQueriesContext(connection) as ctx:
            release()
        lookups = [
            q["sql"]
            for q in ctx.captured_queries
            if q["sql"].startswith("SELECT") and "ORDER BY" in q["sql"]
        ]
        assert len(lookups) == 1, ctx.captured_queries
        plan = _explain(lookups[0])
        assert INDEX in plan and "Seq Scan" not in plan, plan
    # Each released the first held branch in order.
    let_go = Step.objects.filter(run=run, branch__gte=2802, held=False).order_by("branch")
    assert list(let_go.values_list("branch", flat=True)) == [2802, 2803]


# --- the width of a fan-out -------------------------------------------------------------------


pytest_db = pytest.mark.django_db(transaction=True)


@pytest_db
def test_a_map_wider_than_the_limit_fails_the_run_before_writing_it(bell: Bell) -> None:
    with override_settings(SLUICE_MAX_FANOUT=5):
        run = start(mapped, {"n": 6})
        bell.drain()
    run = get_run(run.pk)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "FanOutTooWide"
    message = run.error["message"]
    for part in ("ctx.map", "'map:triple'", "6 branches", "SLUICE_MAX_FANOUT (5)", "child runs"):
        assert part in message, message
    assert "batch" in message
    assert not Step.objects.filter(run=run, kind__in=[StepKind.PARALLEL, StepKind.BRANCH]).exists()


@pytest_db
def test_a_parallel_wider_than_the_limit_fails_too_and_one_at_the_limit_runs(bell: Bell) -> None:
    with override_settings(SLUICE_MAX_FANOUT=3):
        wide = start(paralleled, {"n": 4})
        at = start(mapped, {"n": 3})
        bell.drain()
    wide, at = get_run(wide.pk), get_run(at.pk)
    assert wide.status == RunStatus.FAILED and wide.error["type"] == "FanOutTooWide"
    assert "ctx.parallel" in wide.error["message"] and "4 branches" in wide.error["message"]
    assert not Step.objects.filter(run=wide, kind=StepKind.BRANCH).exists()
    assert at.status == RunStatus.SUCCEEDED and at.output == [0, 3, 6]


def test_the_refusal_is_a_value_error() -> None:
    assert issubclass(FanOutTooWide, ValueError)


@pytest_db
def test_a_fan_out_journaled_wider_than_the_limit_still_replays(bell: Bell) -> None:
    """Journaled under a higher limit (or before there was one), the fan-out replays whatever
    the limit is now: only a fan-out not written yet is refused."""
    with override_settings(SLUICE_MAX_FANOUT=100):
        run = start(mapped, {"n": 8})
        bell.drain(limit=1)  # the advance writes the group and its branches
    assert Step.objects.filter(run=run, kind=StepKind.BRANCH).count() == 8
    with override_settings(SLUICE_MAX_FANOUT=5):
        bell.drain()
    run = get_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == [3 * i for i in range(8)]


@pytest_db
def test_a_handler_that_catches_the_refusal_replays_the_same_way(bell: Bell) -> None:
    """Nothing is journaled for the refused fan-out, so every replay refuses it again at the
    same position and takes the same fallback (here, after the batches' fan-out suspended)."""
    with override_settings(SLUICE_MAX_FANOUT=4):
        run = start(batched, {"n": 6})
        bell.drain()
    run = get_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == [1, 5, 9]
    groups = list(Step.objects.filter(run=run, branch=-1).values_list("position", "name"))
    assert groups == [(2, "map:total")]
