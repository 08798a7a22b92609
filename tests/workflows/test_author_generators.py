"""More of a pipeline author's mistakes caught where they are written (see test_author_mistakes).

1. A generator step or workflow handler. Before, a generator step "worked": ``ctx.run`` got a
   generator, and its body ran only while the engine stored the result (pydantic turns a
   generator into a list), after the step had returned, so its timeout never applied (a
   0.1-second timeout did not stop a 0.4-second body), and the step called directly returned a
   generator where ``ctx.run`` returned a list. A generator handler's body ran only while its
   output was stored: the first ctx call in it failed the run ("called after the workflow
   handler returned").
2. ``FanOutTooWide`` is public, ``workflows.FanOutTooWide``, as the other errors are.
3. ``@step`` on a method. Before, ``ctx.run(Box.m, 5)`` (or ``Box().m``: a step does not bind
   ``self``) failed the run with "Box.m() missing 1 required positional argument: 'x'", 5
   having been taken for ``self``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

import workflows
from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core.context import FanOutTooWide
from workflows.core.definitions import get_workflow
from workflows.models import RunStatus

engine = pytest.mark.django_db(transaction=True)


# --- 1. generators ----------------------------------------------------------------------------


def test_a_generator_step_or_workflow_fails_at_decoration() -> None:
    def chunks(n: int) -> Iterator[int]:
        yield from range(n)

    def handler(ctx: Any) -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="is a generator function.*return a list"):
        step(chunks)
    with pytest.raises(TypeError, match="is a generator function.*return a list"):
        step(name="chunks", timeout=5)(chunks)
    with pytest.raises(TypeError, match="is a generator function.*return a list"):
        workflow(name="test_generators.handler")(handler)
    with pytest.raises(Exception, match="unknown workflow"):
        get_workflow("test_generators.handler")


@step
def listed(n: int) -> list[int]:
    return [i for i in range(n)]


@workflow(name="test_generators.listed")
def lists(ctx: Any) -> list[int]:
    return ctx.run(listed, 3)


@engine
def test_a_step_returning_a_list_still_runs(bell: Bell) -> None:
    run = start(lists, {})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == [0, 1, 2]


# --- 2. FanOutTooWide is public ---------------------------------------------------------------


@step
def double(x: int) -> int:
    return x * 2


@workflow(name="test_generators.wide")
def wide(ctx: Any, n: int) -> Any:
    try:
        return ctx.map(double, list(range(n)))
    except workflows.FanOutTooWide as exc:
        return {"caught": type(exc).__name__}


def test_fan_out_too_wide_is_exported() -> None:
    from workflows import FanOutTooWide as public

    assert public is FanOutTooWide
    assert "FanOutTooWide" in workflows.__all__


@engine
def test_a_handler_catches_workflows_fan_out_too_wide(bell: Bell) -> None:
    with override_settings(SLUICE_MAX_FANOUT=2):
        run = start(wide, {"n": 3})
        bell.settle()
    run = get_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == {"caught": "FanOutTooWide"}


# --- 3. @step on a method ---------------------------------------------------------------------


def test_a_step_on_a_method_fails_at_decoration() -> None:
    with pytest.raises(TypeError, match="takes 'self' first: steps are module-level functions"):

        class Box:
            @step
            def m(self, x: int) -> int:
                return x + 1

    with pytest.raises(TypeError, match="takes 'cls' first: steps are module-level functions"):

        class Other:
            @step(retry=workflows.RetryPolicy(max_attempts=1))
            def m(cls, x: int) -> int:
                return x + 1


def test_a_step_whose_first_parameter_merely_starts_with_self_is_fine() -> None:
    def scale(selfie: int, clsx: int = 1) -> int:
        return selfie * clsx

    assert step(scale)(2, 3) == 6


def test_a_function_whose_first_parameter_is_named_cls_is_fine() -> None:
    """Only a function written in a class body is a method: a step classifying by a ``cls``
    (a class label) is an ordinary step (found by review: it was refused at import)."""

    def classify(cls: str, text: str) -> str:
        return f"{cls}:{text}"

    assert step(classify)("bug", "crash") == "bug:crash"


def test_a_generator_undo_or_plain_generator_is_refused_too() -> None:
    def book(x: int) -> int:
        return x

    def unbook(x: int, result: int) -> Iterator[int]:
        yield result

    with pytest.raises(TypeError, match="is a generator function"):
        step(compensate=unbook)(book)

    def chunks(n: int) -> Iterator[int]:
        yield from range(n)

    from workflows.core.definitions import as_step

    with pytest.raises(TypeError, match="is a generator function"):
        as_step(chunks)  # what ctx.run does with a function that is not a @step
