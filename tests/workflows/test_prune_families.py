"""Retention prunes a child run only in the batch of its parent (found by review): the prune
checked that a child's parent was finished and old, not that the parent went too. A parent kept
for a pending outbox row, a live child or a row locked by an operator's restart lost its child,
and its restart or fork failed with ForeignBlobError (the journal refers to the child's blob)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start, workflow
from workflows.core.forking import fork
from workflows.core.services import enqueue_outbox, restart
from workflows.core.storage import storage
from workflows.core.sweeper import prune
from workflows.models import Run, RunStatus, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@workflow(name="test.family_big_child")
def big_child(ctx: Any) -> str:
    return ctx.run(samples.big, 100_000)  # stored out of row: the child's blob


@workflow(name="test.family_parent")
def parent(ctx: Any) -> int:
    value = ctx.run_workflow("test.family_big_child", {})
    more = ctx.run(samples.big, 10)
    return len(value) + len(more)


@workflow(name="test.family_grandparent")
def grandparent(ctx: Any) -> int:
    value = ctx.run_workflow("test.family_parent", {})
    return int(value) + len(ctx.run(samples.big, 1))


def _family(bell: Bell, root: Any = parent) -> tuple[Run, Run]:
    """A finished parent and its child, both finished two days ago."""
    run = start(root, {})
    bell.settle()
    assert get_run(run.pk).status == "succeeded", get_run(run.pk).error
    child = Run.objects.get(parent_id=run.pk)
    Run.objects.filter(pk__in=[run.pk, child.pk]).update(
        finished_at=timezone.now() - timedelta(days=2)
    )
    return run, child


def _after_child(run: Run) -> int:
    return Step.objects.get(run=run, kind="child").position + 1


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_parent_kept_for_its_pending_outbox_row_keeps_its_child(bell: Bell) -> None:
    run, child = _family(bell)
    enqueue_outbox("test.kind", "k-family", {}, run=get_run(run.pk))  # its webhook retrying
    assert prune() == 0
    assert Run.objects.filter(pk__in=[run.pk, child.pk]).count() == 2
    # Its journal still reads the child's output: a restart after the child succeeds.
    restart(run.pk, from_step=_after_child(run))
    bell.settle()
    assert get_run(run.pk).status == "succeeded", get_run(run.pk).error


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_parent_kept_for_a_live_child_keeps_its_finished_children(bell: Bell) -> None:
    run, child = _family(bell)
    sibling = start(samples.chain, {"n": 1})
    bell.settle()
    Run.objects.filter(pk=sibling.pk).update(parent_id=run.pk, status=RunStatus.COMPENSATING)
    assert prune() == 0
    assert Run.objects.filter(pk__in=[run.pk, child.pk]).count() == 2
    forked = fork(run.pk, from_step=_after_child(run))
    bell.settle()
    assert get_run(forked.pk).status == "succeeded", get_run(forked.pk).error


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_parent_whose_row_is_locked_keeps_its_child(bell: Bell) -> None:
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("row locks: PostgreSQL")
    run, child = _family(bell)
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:  # an operator's restart or fork holds the parent's row
        try:
            with transaction.atomic():
                Run.objects.select_for_update().get(pk=run.pk)
                locked.set()
                done.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        assert prune() == 0
    finally:
        done.set()
        holder.join()
    assert Run.objects.filter(pk__in=[run.pk, child.pk]).count() == 2
    assert prune() == 2  # free again: the family goes together


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_child_whose_row_is_locked_keeps_its_whole_family(bell: Bell) -> None:
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("row locks: PostgreSQL")
    run, child = _family(bell)
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                Run.objects.select_for_update().get(pk=child.pk)
                locked.set()
                done.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        assert prune() == 0
    finally:
        done.set()
        holder.join()
    assert Run.objects.filter(pk__in=[run.pk, child.pk]).count() == 2


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_grandchildren_go_with_their_family_and_only_with_it(bell: Bell) -> None:
    top, middle = _family(bell, grandparent)
    bottom = Run.objects.get(parent_id=middle.pk)
    Run.objects.filter(pk=bottom.pk).update(finished_at=timezone.now() - timedelta(days=2))
    enqueue_outbox("test.kind", "k-top", {}, run=get_run(top.pk))
    assert prune() == 0  # the top run stays: so do its child and grandchild
    assert Run.objects.filter(pk__in=[top.pk, middle.pk, bottom.pk]).count() == 3
    restart(top.pk, from_step=_after_child(top))
    bell.settle()
    assert get_run(top.pk).status == "succeeded", get_run(top.pk).error
    Run.objects.filter(pk__in=[top.pk, middle.pk, bottom.pk]).update(
        finished_at=timezone.now() - timedelta(days=2)
    )
    from workflows.models import Outbox

    Outbox.objects.filter(key="k-top").update(status="delivered")
    seen: list[Any] = []
    assert storage().prune(timezone.now() - timedelta(days=1), 1, before_delete=seen.extend) == 3
    assert set(seen) == {top.pk, middle.pk, bottom.pk}  # one family, larger than the batch


@override_settings(SLUICE_RETENTION_DAYS=1, SLUICE_PRUNE_BATCH=3)
def test_a_batch_takes_whole_families_up_to_its_size(bell: Bell) -> None:
    families = [_family(bell) for _ in range(3)]
    seen: list[list[Any]] = []
    store = storage()
    cutoff = timezone.now() - timedelta(days=1)
    assert store.prune(cutoff, 3, before_delete=seen.append) == 2  # a third run would split one
    assert store.prune(cutoff, 3, before_delete=seen.append) == 2
    assert store.prune(cutoff, 3, before_delete=seen.append) == 2
    assert store.prune(cutoff, 3) == 0
    assert [set(batch) for batch in seen] == [{run.pk, child.pk} for run, child in families]
