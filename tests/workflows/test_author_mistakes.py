"""A careless pipeline author's mistakes (review rv_dx): each is caught where it is written, or
made harmless, instead of surfacing in a run later, differently on a replay, or never.

1. A step that changes its argument in place: the step gets its own copy, so the handler's
   object is the same whether or not the run was replayed.
2. A ``set`` argument: journaled and digested in a canonical order, the same in every process.
3. An annotation that cannot be resolved turns off the input check of that parameter alone.
4. ``@workflow(version=..., max_parallel=...)`` checked at decoration; an advance that keeps
   failing outside the handler fails the run after ``MAX_ADVANCE_FAILURES``, never rung for ever.
5. ``@step(retry=...)`` must be a RetryPolicy.
6. An undo that cannot take the call compensation makes is refused before the step runs.
7. ``async def`` steps and workflows, a handler with no ctx, a name passed positionally.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.db import OperationalError

from tests.support import Bell, past
from workflows import RetryPolicy, get_run, start, step, workflow
from workflows.core import executor
from workflows.core.context import ADVANCE_FAILURES, call_digest
from workflows.core.definitions import get_workflow, unregister_workflow
from workflows.core.errors import InvalidInputError
from workflows.models import Run, Step

if TYPE_CHECKING:
    from decimal import Decimal as OnlyForTyping

engine = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


# --- 1. a step changing its argument in place ---------------------------------------------


@step
def enrich(doc: dict[str, Any]) -> dict[str, bool]:
    doc["enriched"] = True
    return {"ok": True}


@step
def echo(doc: Any) -> Any:
    return doc


@workflow(name="test_mistakes.mutate")
def mutate(ctx: Any, sleep_first: bool = False) -> Any:
    doc = {"title": "x"}
    ctx.run(enrich, doc)
    if sleep_first:
        ctx.sleep(1)
    return ctx.run(echo, doc)


@workflow(name="test_mistakes.mutate_then_sleep")
def mutate_then_sleep(ctx: Any) -> Any:
    doc = {"title": "x"}
    ctx.run(enrich, doc=doc)  # as a keyword argument too
    first = ctx.run(echo, doc)
    ctx.sleep(1)
    return [first, ctx.run(echo, doc)]


def _wake_sleeps(run: Run) -> None:
    Step.objects.filter(run_id=run.pk, kind="sleep").update(wake_at=past(10))


@engine
@pytest.mark.parametrize("sleep_first", [False, True])
def test_a_step_changing_its_argument_leaves_the_handlers_object_alone(
    bell: Bell, sleep_first: bool
) -> None:
    run = start(mutate, {"sleep_first": sleep_first})
    bell.settle()
    _wake_sleeps(run)
    bell.settle()
    run = get_run(run.pk)
    # The same with a replay (sleep_first) and without: the step changed its own copy.
    assert run.status == "succeeded", run.error
    assert run.output == {"title": "x"}


@engine
def test_a_mutating_step_before_a_sleep_does_not_fail_the_replay(bell: Bell) -> None:
    run = start(mutate_then_sleep, {})
    bell.settle()
    _wake_sleeps(run)
    bell.settle()
    run = get_run(run.pk)
    # Before: "at position 2 the journal has step 'echo' called with other arguments".
    assert run.status == "succeeded", run.error
    assert run.output == [{"title": "x"}, {"title": "x"}]


def test_own_copies_copies_only_what_a_step_could_change() -> None:
    from workflows.core.calls import own_copies

    args = (1, "a", 2.5, None)
    kwargs = {"n": 3}
    assert own_copies(args, kwargs) == (args, kwargs)
    assert own_copies(args, kwargs)[0] is args and own_copies(args, kwargs)[1] is kwargs
    doc = {"a": [1]}
    (copied, text), kw = own_copies((doc, "t"), {"items": [doc]})
    assert copied == doc and copied is not doc and text == "t"
    assert kw["items"] == [doc] and kw["items"][0] is not doc


# --- 2. a set argument ----------------------------------------------------------------------

TAGS = ["billing", "refund", "urgent", "vip", "alpha", "zulu", "mid", "kilo"]


@step
def tag_ticket(tags: Any) -> int:
    return len(tags)


@workflow(name="test_mistakes.tags")
def tag_flow(ctx: Any) -> Any:
    return ctx.run(tag_ticket, {"tags": set(TAGS), "nested": [frozenset(TAGS[:3])]})


@workflow(name="test_mistakes.map_set")
def map_set(ctx: Any) -> Any:
    return ctx.map(echo, set(TAGS))


def test_a_set_argument_has_the_same_digest_in_every_process() -> None:
    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings');"
        "django.setup(); from workflows.core.context import call_digest;"
        f"t = {TAGS!r};"
        "print(call_digest({'args': [set(t), {'k': frozenset(t)}], 'kwargs': {'x': [set(t)]}}),"
        " call_digest([['s', [set(t)], {}]]))"
    )
    seen = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        seen.add(out.stdout.strip())
    assert len(seen) == 1, seen
    ordered = sorted(TAGS)
    here = call_digest({"args": [ordered, {"k": ordered}], "kwargs": {"x": [ordered]}})
    assert seen.pop().split()[0] == here


@engine
def test_a_set_argument_is_journaled_in_a_canonical_order(bell: Bell) -> None:
    run = start(tag_flow, {})
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    row = Step.objects.get(run_id=run.pk, name="tag_ticket")
    ordered = sorted(TAGS)
    call = {"args": [{"tags": ordered, "nested": [sorted(TAGS[:3])]}], "kwargs": {}}
    assert row.args == call
    assert row.digest == call_digest(call)


@engine
def test_a_map_over_a_set_fans_out_in_a_canonical_order(bell: Bell) -> None:
    run = start(map_set, {})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == sorted(TAGS)
    branches = Step.objects.filter(run_id=run.pk, branch__gte=0).order_by("branch")
    assert [b.args["args"][0] for b in branches] == sorted(TAGS)


@workflow(name="test_mistakes.journaled_sets")
def journaled_sets(ctx: Any) -> Any:
    single = ctx.run(echo, {8, 1, 1000, -3})
    mapped = ctx.map(echo, {8, 1, 1000, -3})
    words = ctx.map(echo, set(TAGS))
    ctx.wait_for_event("go")
    return [single, mapped, words]


@engine
def test_a_run_journaled_before_sets_were_ordered_still_replays(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the diff review: sorting every set broke runs in flight at the deploy (a set
    of numbers iterated alike in most processes, so those runs replayed fine before). A
    journaled digest that does not match is compared with the old encoding's
    (``legacy_digest``), and a map over a set journaled in the set's own order replays in
    it."""
    from workflows import send_event
    from workflows.core import context

    real = context.canonical_sets
    monkeypatch.setattr(context, "canonical_sets", lambda value: value)  # the old encoding
    run = start(journaled_sets, {})
    bell.settle()
    assert get_run(run.pk).status == "suspended"
    monkeypatch.setattr(context, "canonical_sets", real)  # the deploy
    send_event(run.pk, "go", {})
    bell.settle()
    done = get_run(run.pk)
    assert done.status == "succeeded", done.error
    assert done.output[1] == list({8, 1, 1000, -3})  # the journal's order, not sorted
    assert done.output[2] == list(set(TAGS))


# --- 3. an annotation that cannot be resolved ----------------------------------------------


@workflow(name="test_mistakes.badhint")
def badhint(ctx: Any, count: int, price: OnlyForTyping) -> Any:
    return {"count": count, "price": str(price)}


@engine
def test_one_unresolvable_annotation_leaves_the_other_checks_on(
    bell: Bell, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InvalidInputError):
        start("test_mistakes.badhint", {"count": "not a number", "price": 1})
    run = start("test_mistakes.badhint", {"count": 3, "price": "9.50"})
    bell.settle()
    assert get_run(run.pk).output == {"count": 3, "price": "9.50"}
    schema = get_workflow("test_mistakes.badhint").input_schema()
    assert schema["properties"]["count"]["type"] == "integer"
    # Decorating again logs the warning that names the workflow and the parameter.
    caplog.set_level(logging.WARNING, logger="workflows.core.definitions")
    try:
        workflow(name="test_mistakes.badhint2")(badhint.fn)
    finally:
        unregister_workflow("test_mistakes.badhint2")
    assert "test_mistakes.badhint2" in caplog.text
    assert "parameter 'price'" in caplog.text
    assert "OnlyForTyping" in caplog.text


def test_a_steps_return_type_survives_an_unresolvable_parameter_annotation() -> None:
    import pydantic

    from workflows.core.calls import return_annotation

    class Out(pydantic.BaseModel):
        n: int

    def typed(x: OnlyForTyping) -> Out:  # type: ignore[empty-body]
        ...

    typed.__annotations__ = {"x": "OnlyForTyping", "return": Out}
    assert return_annotation(step(typed)) is Out


# --- 4. @workflow arguments, and an advance that keeps failing -------------------------------


def _handler(ctx: Any) -> int:
    return 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_parallel": -1}, ValueError),
        ({"max_parallel": 0}, ValueError),
        ({"max_parallel": "3"}, TypeError),
        ({"max_parallel": True}, TypeError),
        ({"max_parallel": 2.0}, TypeError),
        ({"version": "2"}, TypeError),
        ({"version": 0}, ValueError),
        ({"version": -3}, ValueError),
        ({"version": 2.5}, TypeError),
        ({"version": True}, TypeError),
        ({"version": 10**12}, ValueError),
    ],
)
def test_bad_workflow_arguments_fail_at_decoration(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error, match="@workflow\\((version|max_parallel)=...\\)"):
        workflow(name="test_mistakes.bad_args", **kwargs)(_handler)
    with pytest.raises(Exception, match="unknown workflow"):
        get_workflow("test_mistakes.bad_args")


def test_good_workflow_arguments_are_kept() -> None:
    try:
        wf = workflow(name="test_mistakes.good_args", version=3, max_parallel=4)(_handler)
        assert (wf.version, wf.max_parallel) == (3, 4)
    finally:
        unregister_workflow("test_mistakes.good_args")


FLAKY: dict[str, Any] = {"failures": 0, "error": ZeroDivisionError}


def _replays(version: int) -> None:
    """A definition's own replay check with a bug (``definitions.replayable`` calls it)."""
    if FLAKY["failures"] > 0:
        FLAKY["failures"] -= 1
        raise FLAKY["error"]("a bug in the definition")


@workflow(name="test_mistakes.wedged")
def wedged(ctx: Any) -> Any:
    ctx.run(echo, 1)
    ctx.sleep(1)
    return ctx.run(echo, 2)


wedged.extra["replays"] = _replays


def _advance_once(run: Run) -> str | None:
    run = get_run(run.pk)
    try:
        return executor.advance(run.pk, run.generation)
    except Exception as exc:
        return f"raised {type(exc).__name__}"


@pytest.fixture
def flaky() -> Any:
    yield FLAKY
    FLAKY.update(failures=0, error=ZeroDivisionError)


@engine
def test_an_advance_failing_outside_the_handler_fails_the_run_after_a_few(
    bell: Bell, flaky: dict[str, Any]
) -> None:
    flaky["failures"] = 1000
    run = start(wedged, {})
    bell.lose_all()
    outcomes = [_advance_once(run) for _ in range(executor.MAX_ADVANCE_FAILURES)]
    assert outcomes == ["raised ZeroDivisionError"] * (executor.MAX_ADVANCE_FAILURES - 1) + [
        "failed"
    ]
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "ZeroDivisionError"
    assert "5 times in a row" in run.error["message"]
    assert run.error["failed_advances"] == executor.MAX_ADVANCE_FAILURES
    assert ADVANCE_FAILURES not in run.error
    assert _advance_once(run) == "skipped"  # ended: nothing rings it any more


@engine
def test_the_count_is_kept_on_the_run_and_cleared_when_it_moves_on(
    bell: Bell, flaky: dict[str, Any]
) -> None:
    run = start(wedged, {})
    bell.lose_all()
    flaky["failures"] = executor.MAX_ADVANCE_FAILURES - 1
    for i in range(1, executor.MAX_ADVANCE_FAILURES):
        assert _advance_once(run) == "raised ZeroDivisionError"
        current = get_run(run.pk)
        assert current.status == "running" and not current.lease_owner
        assert current.error[ADVANCE_FAILURES] == i
        assert current.error["type"] == "ZeroDivisionError"
    assert _advance_once(run) == "suspended"  # it moved on: step 1 ran, the run sleeps
    assert get_run(run.pk).error is None
    # As many failures again: not five in a row, so the run is not failed for them.
    flaky["failures"] = executor.MAX_ADVANCE_FAILURES - 1
    for _ in range(executor.MAX_ADVANCE_FAILURES - 1):
        assert _advance_once(run) == "raised ZeroDivisionError"
    assert get_run(run.pk).error[ADVANCE_FAILURES] == executor.MAX_ADVANCE_FAILURES - 1
    _wake_sleeps(run)
    bell.settle()
    run = get_run(run.pk)
    assert (run.status, run.output, run.error) == ("succeeded", 2, None)


@engine
def test_an_error_of_the_database_is_not_counted(bell: Bell, flaky: dict[str, Any]) -> None:
    flaky.update(failures=executor.MAX_ADVANCE_FAILURES + 2, error=OperationalError)
    run = start(wedged, {})
    bell.lose_all()
    for _ in range(executor.MAX_ADVANCE_FAILURES + 2):
        assert _advance_once(run) == "raised OperationalError"
    current = get_run(run.pk)
    assert current.status == "running" and current.error is None
    assert _advance_once(run) == "suspended"


# --- 5. a retry that is not a RetryPolicy ----------------------------------------------------


@pytest.mark.parametrize("retry", [{"max_attempts": 5}, 5, "3"])
def test_a_retry_that_is_not_a_policy_fails_at_decoration(retry: Any) -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        step(retry=retry)(_plain)


def test_a_retry_policy_is_kept() -> None:
    policy = RetryPolicy(max_attempts=2)
    assert step(retry=policy)(_plain).retry is policy


def _plain(x: int) -> int:
    return x


# --- 6. an undo with the wrong signature ----------------------------------------------------

BOOKED: list[str] = []


def cancel_forgot_result(booking_id: str) -> None:
    pass


def cancel_two_args(booking_id: str, seat: str, *, result: Any) -> None:
    pass


def cancel_ok(booking_id: str, *, result: Any) -> None:
    BOOKED.remove(booking_id)


def cancel_kwargs(booking_id: str, **rest: Any) -> None:
    BOOKED.remove(booking_id)


@step
def book(booking_id: str) -> dict[str, str]:
    BOOKED.append(booking_id)
    return {"id": booking_id}


@step(retry=RetryPolicy(max_attempts=1))
def explode(x: int) -> None:
    raise ValueError("card declined")


@workflow(name="test_mistakes.saga")
def saga(ctx: Any, undo: str) -> Any:
    ctx.run(book, "b1", compensate=globals()[undo])
    ctx.run(explode, 1)


def test_an_undo_that_cannot_take_result_fails_at_decoration() -> None:
    with pytest.raises(TypeError, match="cancel_forgot_result.*result"):
        step(compensate=cancel_forgot_result)(_plain)
    with pytest.raises(TypeError, match="async"):
        step(compensate=_async_undo)(_plain)
    step(compensate=cancel_ok)(_plain)
    step(compensate=cancel_kwargs)(_plain)
    step(compensate=cancel_two_args)(_plain)  # takes result=; its arguments checked per call


async def _async_undo(x: int, *, result: Any) -> None:
    pass


@engine
@pytest.mark.parametrize("undo", ["cancel_forgot_result", "cancel_two_args"])
def test_an_undo_that_cannot_take_the_call_fails_before_the_step_runs(
    bell: Bell, undo: str
) -> None:
    BOOKED.clear()
    run = start(saga, {"undo": undo})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "TypeError"
    assert "book" in run.error["message"] and undo in run.error["message"]
    assert BOOKED == []  # never booked, so nothing stays booked
    assert not Step.objects.filter(run_id=run.pk, name="book").exists()


@engine
@pytest.mark.parametrize("undo", ["cancel_ok", "cancel_kwargs"])
def test_an_undo_with_a_good_signature_still_compensates(bell: Bell, undo: str) -> None:
    BOOKED.clear()
    run = start(saga, {"undo": undo})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed" and run.error.get("compensated"), run.error
    assert BOOKED == []


# --- 7. async, no ctx, a name passed positionally --------------------------------------------


def test_an_async_step_or_workflow_fails_at_decoration() -> None:
    async def fetch(x: int) -> int:
        return x

    async def handler(ctx: Any) -> int:
        return 1

    async def agen(ctx: Any) -> Any:
        yield 1

    with pytest.raises(TypeError, match="async function"):
        step(fetch)
    with pytest.raises(TypeError, match="async function"):
        step(name="fetch")(fetch)
    with pytest.raises(TypeError, match="async function"):
        workflow(name="test_mistakes.async")(handler)
    with pytest.raises(TypeError, match="async function"):
        workflow(name="test_mistakes.agen")(agen)
    with pytest.raises(Exception, match="unknown workflow"):
        get_workflow("test_mistakes.async")


def test_a_workflow_without_ctx_fails_at_decoration() -> None:
    def noctx() -> int:
        return 1

    def kwonly(*, ctx: Any) -> int:
        return 1

    for handler in (noctx, kwonly):
        with pytest.raises(TypeError, match="context as its first positional parameter"):
            workflow(name="test_mistakes.noctx")(handler)
    # A handler taking *args is called fine.
    try:
        workflow(name="test_mistakes.star")(lambda *args: 1)
    finally:
        unregister_workflow("test_mistakes.star")


def test_a_name_passed_positionally_says_to_use_name() -> None:
    with pytest.raises(TypeError, match=r"@workflow\(name='docs.x'\)"):
        workflow("docs.x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"@step\(name='fetch'\)"):
        step("fetch")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="must be a string"):
        workflow(name=3)  # type: ignore[call-overload]


def test_an_error_caused_by_the_database_is_not_counted_against_the_run() -> None:
    """Found by the diff review: only the error's own type was looked at, so an error raised
    while handling a database failure (or "current transaction is aborted") counted toward
    failing a healthy run."""
    from django.db import InternalError, OperationalError

    from workflows.core.executor import transient

    def raised_during(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException:
                raise RuntimeError("while handling it")  # noqa: B904
        except RuntimeError as exc:
            return exc

    assert transient(raised_during(OperationalError("server closed the connection")))
    assert transient(InternalError("current transaction is aborted"))
    assert not transient(TypeError("a bug of the definition"))
    assert not transient(raised_during(KeyError("x")))
    assert not transient(InternalError("raised by a trigger"))  # comes back every time


@engine
def test_a_deterministic_database_error_outside_the_handler_still_fails_the_run(
    bell: Bell, flaky: dict[str, Any]
) -> None:
    """Found by the final read: Django raises every database error ``from`` the driver's, so
    following the chain to a psycopg error took a division by zero for a transient error, and
    the run was rung for ever again on PostgreSQL."""
    from django.db import connection

    def division_by_zero(message: str) -> Exception:
        with connection.cursor() as cur:
            cur.execute("SELECT 1/0")
        return AssertionError("unreachable")

    flaky.update(failures=1000, error=division_by_zero)
    run = start(wedged, {})
    bell.lose_all()
    outcomes = [_advance_once(run) for _ in range(executor.MAX_ADVANCE_FAILURES)]
    assert outcomes[-1] == "failed", outcomes
