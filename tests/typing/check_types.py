# mypy: warn-unused-ignores
"""Checked by mypy in ``make lint`` (never run): the engine's decorators keep types.

A decorated step keeps its function's signature and return type; ``ctx.map`` returns a list
of the step's result.
"""

from __future__ import annotations

from typing import Any, assert_type

from workflows import step, workflow
from workflows.core.context import Context
from workflows.core.definitions import WorkflowDef
from workflows.core.errors import StepFailed


@step
def count_words(text: str) -> int:
    return len(text.split())


@step(pool="llm", timeout=30)
def summarize(text: str, *, words: int = 50) -> dict[str, str]:
    return {"summary": text[:words]}


def plain(n: int) -> float:
    return n / 2


@workflow(name="typing.check")
def handler(ctx: Context, text: str) -> dict[str, Any]:
    # ctx.run/ctx.call take ``compensate=`` (saga) between the step's arguments, which a
    # ParamSpec signature cannot express (PEP 612); their results are not typed yet.
    n = count_words(text)
    s = summarize(text, words=10)
    assert_type(ctx.map(count_words, ["a b", "c"]), list[int])
    assert_type(ctx.map(count_words, ["a"], return_exceptions=True), list[int | StepFailed])
    ctx.parallel([ctx.call(count_words, "x"), ctx.call(summarize, "y", words=3)])
    return {"n": n, **s}


@workflow
def bare(ctx: Context) -> int:
    return 1


assert_type(count_words("a b"), int)
assert_type(handler, WorkflowDef[dict[str, Any]])
assert_type(bare, WorkflowDef[int])


def wrong_arguments(ctx: Context) -> None:
    count_words(3)  # type: ignore[arg-type]
    summarize("t", words="many")  # type: ignore[arg-type]
