# mypy: warn-unused-ignores
"""Checked by mypy in ``make lint`` (never run): the engine's decorators keep types.

A decorated step keeps its function's signature and return type; ``ctx.run(fn, ...)``
returns ``fn``'s return type (with ``compensate=`` too), ``ctx.call(fn, ...)`` a ``Call`` of it,
and ``ctx.map`` a list of the step's result. Wrong arguments are errors (the ``type: ignore``s
below must stay needed: ``warn-unused-ignores``).
"""

from __future__ import annotations

from typing import Any, assert_type

from workflows import step, workflow
from workflows.core.context import Call, Context
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


@step
def book_hotel(trip: str, nights: int = 1) -> dict[str, str]:
    return {"booking": trip}


def cancel_hotel(trip: str, nights: int = 1, *, result: dict[str, str]) -> None:
    return None


@workflow(name="typing.check")
def handler(ctx: Context, text: str) -> dict[str, Any]:
    n = count_words(text)
    s = summarize(text, words=10)
    assert_type(ctx.run(count_words, text), int)
    assert_type(ctx.run(summarize, text, words=5), dict[str, str])
    assert_type(ctx.run(plain, 3), float)
    assert_type(ctx.run(book_hotel, "rome", compensate=cancel_hotel), dict[str, str])
    assert_type(ctx.run(book_hotel, "rome", nights=2, compensate=cancel_hotel), dict[str, str])
    assert_type(ctx.call(count_words, "x"), Call[int])
    assert_type(ctx.call(book_hotel, "rome", compensate=cancel_hotel), Call[dict[str, str]])
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
    ctx.run(count_words, 3)  # type: ignore[call-overload]
    ctx.run(summarize, "t", words="many")  # type: ignore[arg-type]
    ctx.run(plain)  # type: ignore[call-overload]
    ctx.call(count_words, 3)  # type: ignore[call-overload]


def wrong_result(ctx: Context) -> str:
    return ctx.run(count_words, "a")  # type: ignore[return-value]
