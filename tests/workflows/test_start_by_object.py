"""``start()`` takes the ``@workflow`` handler itself as well as its registered name: the run
records the name, and an object that is not the handler new runs start on is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core.errors import UnknownWorkflowError
from workflows.core.services import start_or_find

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@step
def shout(text: str) -> str:
    return text.upper()


@workflow(name="test.by_object.shout")
def shouting(ctx: Any, text: str) -> dict[str, str]:
    return {"out": ctx.run(shout, text)}


@workflow(name="test.by_object.parent")
def parent(ctx: Any, text: str) -> Any:
    return ctx.run_workflow(shouting, {"text": text})


@workflow(name="test.by_object.versioned", version=2)
def versioned_v2(ctx: Any) -> int:
    return 2


@workflow(name="test.by_object.versioned@1")
def versioned_v1(ctx: Any) -> int:
    return 1


def test_start_by_object_runs_the_workflow_under_its_name(bell: Bell) -> None:
    run = start(shouting, {"text": "hi"})
    assert (run.workflow, run.version) == ("test.by_object.shout", 1)
    bell.drain()
    done = get_run(run.pk)
    assert (done.status, done.output) == ("succeeded", {"out": "HI"})


def test_an_object_and_its_name_are_one_workflow_for_idempotency(bell: Bell) -> None:
    first, created = start_or_find(shouting, {"text": "a"}, idempotency_key="obj-1")
    again, created_again = start_or_find(
        "test.by_object.shout", {"text": "a"}, idempotency_key="obj-1"
    )
    assert (again.pk, created, created_again) == (first.pk, True, False)


def test_a_child_run_started_by_object(bell: Bell) -> None:
    run = start(parent, {"text": "yo"})
    bell.drain()
    assert get_run(run.pk).output == {"out": "YO"}


def test_an_old_version_or_a_non_workflow_is_refused(bell: Bell) -> None:
    with pytest.raises(UnknownWorkflowError, match="not the handler new runs start on"):
        start(versioned_v1)
    assert start(versioned_v2).version == 2
    with pytest.raises(TypeError, match="a workflow name or a @workflow handler"):
        start(shout, {"text": "x"})  # type: ignore[arg-type]
