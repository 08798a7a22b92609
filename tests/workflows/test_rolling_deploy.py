"""A rolling deploy: web processes with new code start runs that workers with the old code may
take. A run that needs code newer than the worker's (a workflow it does not define, or a
version above its own, started after it loaded its code) is left for a worker that has it:
not failed as "no longer defined", and never replayed on the old handler (a wrong result,
silently). A run of a version above the code here that began before the worker loaded (a
rolled-back deploy) fails, saying so."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core import definitions, executor, pools, transitions
from workflows.core.definitions import unregister_workflow
from workflows.core.sweeper import sweep
from workflows.models import Pool, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

NAME = "test_roll.letter"


def letter_v1(ctx: Any, text: str) -> dict[str, Any]:
    return {"letter": f"draft of {text}"}


def letter_v2(ctx: Any, text: str) -> dict[str, Any]:
    return {"letter": f"draft of {text.strip()}", "signed": "v2"}


@pytest.fixture(autouse=True)
def _v1() -> Any:
    workflow(name=NAME)(letter_v1)
    yield
    unregister_workflow(NAME)
    unregister_workflow("test_roll.brand_new")
    unregister_workflow("test_roll.fan")


def ring_again(bell: Bell) -> None:
    """The sweep, once the doorbell's grace has passed."""
    Run.objects.update(wake_requested_at=timezone.now() - timedelta(minutes=5))
    sweep()
    bell.settle()


def test_a_newer_version_is_left_for_a_worker_with_its_code(bell: Bell) -> None:
    run = start(NAME, {"text": "  hi  "})
    # Started by a web process that has version 2 (after this worker loaded its code).
    Run.objects.filter(pk=run.pk).update(version=2)
    bell.settle()
    row = get_run(run.pk)
    assert row.status in ("pending", "running") and row.output is None
    assert row.lease_owner == "" and row.wake_requested_at is not None  # the sweep rings again
    assert not Step.objects.filter(run=run).exists()
    # The new code reaches this worker: the run goes on, on version 2.
    unregister_workflow(NAME)
    workflow(name=NAME, version=2)(letter_v2)
    ring_again(bell)
    row = get_run(run.pk)
    assert (row.status, row.output) == ("succeeded", {"letter": "draft of hi", "signed": "v2"})


def test_a_version_above_the_code_here_from_before_it_loaded_fails_saying_so(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolled-back deploy: the run of version 2 must not replay version 1's handler."""
    run = start(NAME, {"text": "  hi  "})
    Run.objects.filter(pk=run.pk).update(version=2)
    monkeypatch.setattr(definitions, "LOADED_AT", timezone.now())  # restarted on version 1
    bell.settle()
    row = get_run(run.pk)
    assert row.status == "failed" and row.error["type"] == "UnknownWorkflowError"
    assert "version 2 is newer than the code here (version 1)" in row.error["message"]


def test_a_workflow_this_worker_does_not_define_yet_is_left_for_one_that_does(
    bell: Bell,
) -> None:
    def brand_new(ctx: Any, text: str) -> str:
        return text.upper()

    workflow(name="test_roll.brand_new")(brand_new)
    run = start("test_roll.brand_new", {"text": "hi"})
    unregister_workflow("test_roll.brand_new")  # this worker has the old code
    bell.settle()
    row = get_run(run.pk)
    assert row.status in ("pending", "running") and row.error is None
    workflow(name="test_roll.brand_new")(brand_new)
    ring_again(bell)
    assert get_run(run.pk).output == "HI"


def test_a_run_left_for_newer_code_fails_once_the_rollout_window_is_over(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that lack a pipeline version for good do not keep its runs pending for ever:
    after an hour the run fails, as a run whose code is gone does."""
    now = timezone.now()
    monkeypatch.setattr(definitions, "LOADED_AT", now - timedelta(hours=2))
    run = start(NAME, {"text": "hi"})
    Run.objects.filter(pk=run.pk).update(version=2, created_at=now - timedelta(minutes=61))
    bell.settle()
    row = get_run(run.pk)
    assert row.status == "failed"
    assert "version 2 is newer than the code here (version 1)" in row.error["message"]
    # Within the window it would still have waited.
    run = start(NAME, {"text": "hi"})
    Run.objects.filter(pk=run.pk).update(version=2, created_at=now - timedelta(minutes=59))
    bell.settle()
    assert get_run(run.pk).status in ("pending", "running")


def test_an_old_worker_leaves_a_newer_runs_undos_alone_and_rings_later(bell: Bell) -> None:
    """Found by review: a compensating run went to its undos before the check, so an undo only
    the new code has "could not be imported" and the run failed for good, its effect kept."""
    run = start(NAME, {"text": "hi"})
    bell.settle()
    Run.objects.filter(pk=run.pk).update(
        version=2, status="compensating", after_compensation="failed", finished_at=None
    )
    row = get_run(run.pk)
    assert executor.advance(row.pk, row.generation) == executor.NOT_HERE
    row = get_run(run.pk)
    assert row.status == "compensating" and row.lease_owner == ""
    # Rung for again in half a minute, not at the next sweep.
    assert row.wake_requested_at > timezone.now() + timedelta(seconds=20)


@step(pool="roll_pool")
def double(i: int) -> int:
    return i * 2


def fan(ctx: Any, items: list[int]) -> list[int]:
    return list(ctx.map(double, items))


@pytest.mark.parametrize("limit", [None, 1])
def test_an_old_worker_leaves_a_newer_runs_branches_it_cannot_import_uncounted(
    bell: Bell, limit: int | None
) -> None:
    """Found by review: a branch of a new pipeline's step, taken by a worker without that
    step's module, spent its attempts on ``ModuleNotFoundError`` and failed its run while the
    deploy rolled out. It is put back (pending, the attempt not counted) for a worker with the
    new code; in a limited pool its slot passes on."""
    Pool.objects.update_or_create(name="roll_pool", defaults={"max_concurrency": limit})
    pools.clear_cache()
    workflow(name="test_roll.fan")(fan)
    run = start("test_roll.fan", {"items": [1, 2]})
    bell.drain(limit=1)  # the fan-out: two branch rows, their doorbells queued
    branches = Step.objects.filter(run=run, branch__gte=0)
    target = branches.first().target  # type: ignore[union-attr]
    # Started by version 2, whose step lives in a module this worker does not have yet.
    branches.update(target="tests.workflows.not_deployed_here.double")
    Run.objects.filter(pk=run.pk).update(version=2)
    bell.drain()
    soon = timezone.now() + timedelta(seconds=20)
    for row in Step.objects.filter(run=run, branch__gte=0):
        assert (row.status, row.attempt, row.error, row.lease_owner) == ("pending", 0, None, "")
        assert row.wake_at > soon  # rung for again in half a minute, not at once
    assert get_run(run.pk).status not in ("failed", "succeeded")
    # The new code reaches this worker: the branches run, once each.
    unregister_workflow("test_roll.fan")
    workflow(name="test_roll.fan", version=2)(fan)
    Step.objects.filter(run=run, branch__gte=0).update(
        target=target, wake_at=timezone.now() - timedelta(minutes=5)
    )
    bell.settle()
    row = get_run(run.pk)
    assert (row.status, row.output) == ("succeeded", [2, 4])
    assert [s.attempt for s in Step.objects.filter(run=run, branch__gte=0)] == [1, 1]


def test_a_branch_that_cannot_be_imported_still_fails_when_no_rollout_explains_it(
    bell: Bell,
) -> None:
    """The same step of a run this worker's code started: its code is gone, and its attempts
    are spent as before (the run fails, saying what could not be imported)."""
    pools.clear_cache()
    workflow(name="test_roll.fan")(fan)
    run = start("test_roll.fan", {"items": [1]})
    bell.drain(limit=1)
    Step.objects.filter(run=run, branch__gte=0).update(
        target="tests.workflows.not_deployed_here.double", max_attempts=1
    )
    bell.settle()
    row = get_run(run.pk)
    assert row.status == "failed"
    assert "not_deployed_here" in str(row.error)


def test_a_branch_left_for_newer_code_is_not_handed_back_to_itself_under_a_long_grace(
    bell: Bell, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the diff review: with a doorbell grace of 30 s or more, the hand-over (due
    within the grace) took the step just put back (due in 30 s), again and again."""
    settings.SLUICE_DOORBELL_GRACE_SECONDS = 60
    Pool.objects.update_or_create(name="roll_pool", defaults={"max_concurrency": 1})
    pools.clear_cache()
    workflow(name="test_roll.fan")(fan)
    run = start("test_roll.fan", {"items": [1]})
    bell.drain(limit=1)
    branch = Step.objects.get(run=run, branch=0)
    Step.objects.filter(pk=branch.pk).update(target="tests.workflows.not_deployed_here.double")
    Run.objects.filter(pk=run.pk).update(version=2)
    real, handed = transitions.hand_over, []

    def counted(*args: Any) -> Any:
        handed.append(args)
        assert len(handed) < 5, "the step was handed back to itself"
        return real(*args)

    monkeypatch.setattr(transitions, "hand_over", counted)
    assert executor.execute_step(branch.pk) == 1  # it returns: the step is left, once
    row = Step.objects.get(pk=branch.pk)
    assert (row.status, row.attempt) == ("pending", 0)
    assert row.wake_at > timezone.now() + timedelta(seconds=90)
