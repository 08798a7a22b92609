"""Workflow and step definitions: the ``@workflow`` and ``@step`` decorators and the registry.

A workflow is a plain function ``handler(ctx, **input)``. Its input model is derived from the
signature, so a bad input fails at ``start`` with a clear error instead of later in a worker.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
import random
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import pydantic

from workflows.core.errors import UnknownWorkflowError

log = logging.getLogger(__name__)

# The longest wait a retry policy may ask for: a year. A wake-up time further out overflows
# the database's timestamps (and no step is worth retrying after that).
MAX_BACKOFF_SECONDS = 365 * 24 * 3600.0
# What a step's attempts may number (the journal's column holds a 32-bit integer).
MAX_ATTEMPTS = 1_000_000
# The longest a run may sleep or wait, or a gate stay open, and the longest a step's timeout may
# be: ten years. Further out, a wake-up time overflows the database's timestamps ("date value
# out of range"), and a step's timer overflows the platform's (``setitimer``).
MAX_WAIT_SECONDS = 10 * 366 * 24 * 3600.0
# A workflow's version and its max_parallel are stored in 32-bit columns (PostgreSQL's
# ``integer``); ``name@N`` allows nine digits.
MAX_VERSION = 999_999_999


def duration_seconds(value: Any, what: str, *, positive: bool = False) -> float:
    """A duration given to ctx (a ``timedelta`` or a number of seconds) as seconds, or a
    ``TypeError``/``ValueError`` naming ``what``: a datetime, a string, NaN or a duration of
    centuries failed deep in the engine with Python's or the database's own words."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past 1e308
            seconds = math.inf
    else:
        raise TypeError(
            f"{what} takes a timedelta or a number of seconds, not {type(value).__name__} "
            f"{_shown(value)}"
        )
    if not math.isfinite(seconds) or abs(seconds) > MAX_WAIT_SECONDS:
        raise ValueError(
            f"{what} must be a finite duration of at most ten years, not {_shown(value)}"
        )
    if positive and seconds <= 0:
        raise ValueError(f"{what} must be positive, not {_shown(value)}")
    return seconds


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut short; a placeholder when it cannot be had (an
    integer past Python's 4,300-digit limit, a ``__repr__`` that raises)."""
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."


def step_timeout(value: Any, what: str = "@step(timeout=...)") -> float | None:
    """A step's ``timeout`` as seconds: ``None`` or ``0`` (no timeout), or a positive
    ``timedelta`` or number of seconds up to ten years. Checked where the step is declared: a
    timedelta, a string or a negative number used to fail every attempt in the worker (on a
    thread pool after the step's side effects were done), and a huge one overflowed the timer.
    """
    if value is None:
        return None
    seconds = duration_seconds(value, what)
    if seconds < 0:
        raise ValueError(f"{what} must be positive (or 0 or None for none), not {_shown(value)}")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits initial_backoff * multiplier**(n-1),
    capped at max_backoff. Checked when it is made, so a policy that cannot work fails where
    it is written, not in a run hours later."""

    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 60.0
    jitter: bool = True
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(
                f"RetryPolicy(max_attempts=...) must be a whole number, not {attempts!r}"
            )
        if not 1 <= attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"RetryPolicy(max_attempts={attempts}) must be from 1 to {MAX_ATTEMPTS:,}"
            )
        for name, low in (("initial_backoff", 0.0), ("max_backoff", 0.0), ("multiplier", 1.0)):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not low <= value <= (MAX_BACKOFF_SECONDS if name != "multiplier" else 1e6):
                top = f"{MAX_BACKOFF_SECONDS:g} (a year)" if name != "multiplier" else "1e6"
                raise ValueError(
                    f"RetryPolicy({name}={value!r}) must be a number from {low:g} to {top}"
                )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            grown = self.initial_backoff * self.multiplier ** (attempt - 1)
        except OverflowError:  # past 2**1024 (attempt 1025 at the default multiplier)
            grown = self.max_backoff
        delay = min(self.max_backoff, grown)
        if self.jitter:
            # "Equal jitter": keep at least half the delay so retries still back off.
            delay = delay / 2 + random.uniform(0, delay / 2)
        return delay


DEFAULT_RETRY = RetryPolicy()


@dataclass
class StepDef[**P, R]:
    """A step: ``fn`` with its retry policy, pool and timeout. Typed by ``fn``'s parameters
    and return type, so ``ctx.run(step, ...)`` is checked and typed like a call of ``fn``."""

    fn: Callable[P, R]
    name: str
    retry: RetryPolicy = DEFAULT_RETRY
    pool: str = "default"
    timeout: float | None = None
    # The undo run if the run fails or is canceled after this step succeeded (a saga).
    compensate: Callable[..., Any] | None = None
    # False for bookkeeping that costs nothing (a state machine's final-state marker): the
    # run's budget (max_cost) does not stop it, as it stops a step that may spend.
    budgeted: bool = True

    def __post_init__(self) -> None:
        self.timeout = step_timeout(self.timeout, f"the timeout of step {self.name!r}")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)


@dataclass
class WorkflowDef[R]:
    """A registered workflow handler ``fn(ctx, **input)`` returning ``R``."""

    fn: Callable[..., R]
    name: str
    version: int = 1
    description: str = ""
    max_parallel: int | None = None
    input_model: type[pydantic.BaseModel] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def input_schema(self) -> dict[str, Any]:
        assert self.input_model is not None
        return self.input_model.model_json_schema()


_workflows: dict[str, WorkflowDef[Any]] = {}
# Every registered (name, version), the old handlers kept as ``name@N`` included: a run replays
# the handler of the version it started with (``workflow_for_run``).
_versions: dict[tuple[str, int], WorkflowDef[Any]] = {}
_PINNED = re.compile(r"^(?P<name>.+)@(?P<version>[1-9][0-9]{0,8})$")


def _input_model_for(fn: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    """Build a pydantic model from the handler's parameters after ``ctx``."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]
    hints = type_hints(fn, f"workflow {name!r}")
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(p.name, Any)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (ann, default)
    model_name = "".join(part.capitalize() for part in name.replace("-", ".").split(".")) + "Input"
    return pydantic.create_model(  # type: ignore[call-overload,no-any-return]
        model_name, __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )


def type_hints(fn: Callable[..., Any], what: str, *, only: str | None = None) -> dict[str, Any]:
    """``fn``'s resolved annotations (``only``: that one alone, "return" say). One that cannot
    be resolved (a name imported only under ``if TYPE_CHECKING:`` with ``from __future__
    import annotations``, a typo in a string annotation) is ``Any``, with a warning naming
    ``what`` and the parameter: it used to make ``get_type_hints`` fail as a whole, which
    turned off the input checks of every parameter (or a step's typed result), silently. Not
    an error: a pipeline that worked (unchecked) must go on working."""
    try:
        hints = typing.get_type_hints(fn)
        return hints if only is None else {only: hints[only]} if only in hints else {}
    except Exception:
        pass
    raw = getattr(fn, "__annotations__", None)
    if not isinstance(raw, dict):
        return {}
    globalns = getattr(inspect.unwrap(fn), "__globals__", None)
    hints = {}
    for key, annotation in raw.items():
        if only is not None and key != only:
            continue
        probe = types.SimpleNamespace(__annotations__={key: annotation})
        try:
            hints[key] = typing.get_type_hints(probe, globalns=globalns)[key]
        except Exception as exc:
            if key != "return" or only == "return":
                log.warning(
                    "%s: the annotation of %s (%r) cannot be resolved (%s: %s), so it is not "
                    "checked (Any); import the name at run time, not only under TYPE_CHECKING",
                    what,
                    "its return value" if key == "return" else f"parameter {key!r}",
                    annotation,
                    type(exc).__name__,
                    exc,
                )
            hints[key] = Any
    return hints


def _whole_number(value: Any, what: str, *, optional: bool) -> int | None:
    """``value`` as a positive whole number (or None when ``optional``), else a ``TypeError``
    or ``ValueError`` naming ``what``, raised where the definition is written. A string, a
    float, a bool or a number below 1 used to be accepted and fail every run later: a
    ``max_parallel`` of -1 refused by the database at each ``start`` (a 500 from the API), a
    ``version`` of "2" failing inside the engine while the run stayed running, rung for ever.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        wanted = "a whole number from 1 up" + (", or None" if optional else "")
        raise TypeError(f"{what} must be {wanted}, not {type(value).__name__} {_shown(value)}")
    if not 1 <= value <= MAX_VERSION:
        raise ValueError(f"{what} must be from 1 to {MAX_VERSION:,}, not {value}")
    return value


def _check_callable(fn: Any, what: str) -> None:
    """Refuse at decoration what can only fail in a run: a name passed where the function
    goes (``@workflow("docs.x")``), something not callable, an ``async def`` (its call returns
    a coroutine that the engine never awaits, stored nowhere: "not JSON-serializable"), a
    generator function (its body ran while the result was stored, outside a step's timeout)."""
    if isinstance(fn, str):
        raise TypeError(
            f"@{what}({fn!r}): pass the name as a keyword, @{what}(name={fn!r}); the only "
            f"positional argument of @{what} is the function it decorates"
        )
    if not callable(fn):
        raise TypeError(f"@{what} decorates a function, not {type(fn).__name__} {_shown(fn)}")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{what} {getattr(fn, '__qualname__', fn)!r} is an async function: the engine "
            f"calls a {what} synchronously (a worker thread runs it), so it would get a "
            "coroutine that never runs; write a plain def (call async code with asyncio.run)"
        )
    if inspect.isgeneratorfunction(fn):
        # Its body ran only while the result was stored: after a step had returned (outside
        # its timeout), after a handler had returned (where ctx cannot be called).
        raise TypeError(
            f"{what} {getattr(fn, '__qualname__', fn)!r} is a generator function: the engine "
            f"stores what a {what} returns, and a generator's body would run only then, after "
            "the call; return a list instead (return list(...) of what it yields)"
        )


def _not_a_method(fn: Callable[..., Any]) -> None:
    """A step is called with the journaled arguments alone, never bound to an instance: on a
    method, the first argument was taken for ``self`` and the run failed with "missing 1
    required positional argument" naming the wrong parameter."""
    # Written in a class body: its qualified name has the class's before its own (a function
    # nested in another has "<locals>" there). A module-level ``def classify(cls, text)`` is
    # a step like any other.
    parent = getattr(fn, "__qualname__", "").rpartition(".")[0]
    if not parent or parent.endswith("<locals>"):
        return
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    if params and params[0].name in ("self", "cls") and params[0].kind != params[0].KEYWORD_ONLY:
        raise TypeError(
            f"step {getattr(fn, '__qualname__', fn)!r} takes {params[0].name!r} first: steps "
            "are module-level functions; the engine calls one with the arguments given to "
            "ctx.run alone, never bound to an instance, so move it out of the class and pass "
            "what it needs as arguments"
        )


def _takes_ctx(fn: Callable[..., Any], name: str) -> None:
    """A handler is called ``fn(ctx, **input)``: one with no positional parameter for ``ctx``
    failed every run with "takes 0 positional arguments but 1 was given"."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): left to the first run
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if params and (params[0].kind in positional or params[0].kind == params[0].VAR_POSITIONAL):
        return
    raise TypeError(
        f"workflow {name!r}: the handler must take the context as its first positional "
        f"parameter, handler(ctx, **input); {getattr(fn, '__qualname__', fn)!r} takes "
        f"({', '.join(str(p) for p in params)})"
    )


@overload
def workflow[R](fn: Callable[..., R], /) -> WorkflowDef[R]: ...


@overload
def workflow[R](
    fn: None = None,
    *,
    name: str | None = None,
    version: int | None = None,
    description: str | None = None,
    max_parallel: int | None = None,
    input_model: type[pydantic.BaseModel] | None = None,
) -> Callable[[Callable[..., R]], WorkflowDef[R]]: ...


def workflow(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    version: int | None = None,
    description: str | None = None,
    max_parallel: int | None = None,
    input_model: type[pydantic.BaseModel] | None = None,
) -> Any:
    """Register a workflow handler ``fn(ctx, **input)`` under ``name``.

    ``input_model`` overrides the model derived from the signature (its fields become the
    handler's keyword arguments).

    A name ending in ``@N`` (``"docs.summarize@1"``) keeps an old version's handler: it is not
    startable and not listed, but runs that started on version N replay it, while new runs
    start on the handler registered under the plain name. See docs/engine.md, "Versions".
    """

    checked_version = _whole_number(version, "@workflow(version=...)", optional=True)
    checked_parallel = _whole_number(max_parallel, "@workflow(max_parallel=...)", optional=True)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"@workflow(name=...) must be a string, not {type(name).__name__}")

    def register(f: Callable[..., Any]) -> WorkflowDef[Any]:
        _check_callable(f, "workflow")
        wf_name = name or f"{f.__module__}.{f.__name__}"
        _takes_ctx(f, wf_name)
        pinned = _PINNED.match(wf_name)
        if pinned:
            wf_name = pinned["name"]
            if checked_version is not None and checked_version != int(pinned["version"]):
                raise ValueError(
                    f"workflow {name!r} says version {pinned['version']} in its name but "
                    f"version={checked_version}"
                )
        wf_version = int(pinned["version"]) if pinned else (checked_version or 1)
        model = input_model or _input_model_for(f, wf_name)
        doc = description if description is not None else inspect.getdoc(f) or ""
        definition = WorkflowDef(
            fn=f,
            name=wf_name,
            version=wf_version,
            description=doc,
            max_parallel=checked_parallel,
            input_model=model,
        )
        functools.update_wrapper(definition, f)  # type: ignore[arg-type]
        taken = _versions.get((wf_name, wf_version)) if pinned else _workflows.get(wf_name)
        if taken is not None and _origin(taken.fn) != _origin(f):
            # Two modules with one name: the later one silently took every new run (an older
            # version included), and runs in flight replayed another module's code.
            raise ValueError(
                f"workflow {wf_name!r} is already registered by {'.'.join(_origin(taken.fn))} "
                f"(version {taken.version}); give {'.'.join(_origin(f))} another name, or "
                f"keep an old version as '{wf_name}@N'"
            )
        _versions[(wf_name, wf_version)] = definition
        if not pinned:
            _workflows[wf_name] = definition
        return definition

    return register(fn) if fn is not None else register


@overload
def step[**P, R](fn: Callable[P, R], /) -> StepDef[P, R]: ...


@overload
def step[**P, R](
    fn: None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    pool: str = "default",
    timeout: timedelta | float | None = None,
    compensate: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], StepDef[P, R]]: ...


def step(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    pool: str = "default",
    timeout: timedelta | float | None = None,
    compensate: Callable[..., Any] | None = None,
) -> Any:
    """Declare a step. Called directly it is a plain function; ``ctx.run`` makes it durable.

    ``compensate``: the step's undo (a module-level function or step). If the run fails or is
    canceled after this step succeeded, the undo runs with the step's arguments and
    ``result=`` its result (see ``workflows.core.compensation``).

    ``timeout``: a ``timedelta`` or a number of seconds, at most ten years; ``None`` or ``0``
    for none. Anything else (a string, a bool, NaN, infinity, a negative number) raises
    ``TypeError``/``ValueError`` here.
    """
    seconds = step_timeout(timeout)
    if retry is not None and not isinstance(retry, RetryPolicy):
        # A dict or a number failed every run using the step, with an AttributeError that
        # did not name the step.
        raise TypeError(
            f"@step(retry=...) takes a RetryPolicy (workflows.RetryPolicy(max_attempts=...)) "
            f"or None, not {type(retry).__name__} {_shown(retry)}"
        )
    if name is not None and not isinstance(name, str):
        raise TypeError(f"@step(name=...) must be a string, not {type(name).__name__}")

    def wrap(f: Callable[..., Any]) -> StepDef[..., Any]:
        _check_callable(f, "step")
        _not_a_method(f)
        definition = StepDef(
            fn=f,
            name=name or f.__name__,
            retry=retry or DEFAULT_RETRY,
            pool=pool,
            timeout=seconds,
            compensate=compensate,
        )
        if compensate is not None:
            check_undo_callable(compensate, f"step {definition.name!r}")
        functools.update_wrapper(definition, f)  # type: ignore[arg-type]
        definition.__dict__["path"] = f"{f.__module__}.{f.__qualname__}"
        return definition

    return wrap(fn) if fn is not None else wrap


def as_step(fn: Callable[..., Any]) -> StepDef[..., Any]:
    """Treat a plain function passed to ``ctx.run`` as a step with the default policy."""
    if isinstance(fn, StepDef):
        return fn
    if inspect.isgeneratorfunction(fn):  # as @step refuses it (_check_callable)
        raise TypeError(
            f"{getattr(fn, '__qualname__', fn)!r} is a generator function: the engine stores "
            "what a step returns, and a generator's body would run only then, after the call; "
            "return a list instead"
        )
    return StepDef(fn=fn, name=getattr(fn, "__name__", "step"))


def step_path(sd: StepDef) -> str:
    return f"{sd.fn.__module__}.{sd.fn.__qualname__}"


def undo_path(step_def: StepDef, compensate: Callable[..., Any] | None) -> str:
    """The dotted path of a step call's undo ("" without one): the call's ``compensate=`` or
    the step's own. The undo runs later, maybe in another process, so it must be importable.
    """
    undo = compensate if compensate is not None else step_def.compensate
    if undo is None:
        return ""
    path = step_path(as_step(undo))
    try:
        resolve_step(path)
    except Exception:
        raise TypeError(
            f"the undo of step {step_def.name!r} must be a module-level function: it runs "
            "later, perhaps in another process"
        ) from None
    return path


def _undo_fn(undo: Any) -> Any:
    return undo.fn if isinstance(undo, StepDef) else undo


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # no signature to read (a builtin): left to the call


def _signature_of(fn: Any) -> inspect.Signature | None:
    try:
        return _signature(fn)
    except TypeError:  # unhashable
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


def check_undo_callable(undo: Any, what: str) -> None:
    """An undo is called ``undo(*step_args, result=step_result, **step_kwargs)``
    (``workflows.core.compensation``). One that cannot take ``result=`` (forgotten, or a
    positional-only parameter) used to be found only when compensation ran, the one moment
    it matters: the run ended CompensationFailed and the booking stayed booked."""
    fn = _undo_fn(undo)
    if not callable(fn):
        raise TypeError(f"{what}: an undo is a function, not {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{what}: the undo {getattr(fn, '__qualname__', fn)!r} is an async function; an "
            "undo is called synchronously, so write a plain def"
        )
    if inspect.isgeneratorfunction(fn):
        raise TypeError(
            f"{what}: the undo {getattr(fn, '__qualname__', fn)!r} is a generator function: "
            "calling it would run none of its body; write a plain def"
        )
    sig = _signature_of(fn)
    if sig is None:
        return
    params = sig.parameters.values()
    takes_result = any(p.kind == p.VAR_KEYWORD for p in params) or (
        "result" in sig.parameters
        and sig.parameters["result"].kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )
    if not takes_result:
        raise TypeError(
            f"{what}: the undo {getattr(fn, '__qualname__', fn)!r}{sig} cannot take the "
            "step's result: an undo is called undo(*step_args, result=<the step's result>, "
            "**step_kwargs), so it needs a `result` parameter (or **kwargs)"
        )


def check_undo_call(step_def: StepDef, undo: Any, args: Any, kwargs: dict[str, Any]) -> None:
    """Before a step with an undo runs: the undo must accept the call compensation will make,
    ``undo(*args, result=..., **kwargs)`` with this call's arguments; a ``TypeError`` naming
    both otherwise, while nothing is done yet that would need undoing."""
    what = f"step {step_def.name!r}"
    check_undo_callable(undo, what)
    fn = _undo_fn(undo)
    sig = _signature_of(fn)
    if sig is None:
        return
    try:
        sig.bind(*args, result=None, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{what}: its undo {getattr(fn, '__qualname__', fn)!r}{sig} cannot take the call "
            f"compensation makes, with this call's arguments plus result=<the step's result> "
            f"({exc})"
        ) from None


def resolve_step(path: str) -> StepDef:
    """Import a step by its dotted path (a branch runs in another process)."""
    module_name, _, attr = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return as_step(obj)


def get_workflow(name: str) -> WorkflowDef[Any]:
    try:
        return _workflows[name]
    except KeyError:
        raise UnknownWorkflowError(
            f"unknown workflow {name!r}; registered: {', '.join(sorted(_workflows)) or 'none'}"
        ) from None


def workflow_name(workflow: str | WorkflowDef[Any]) -> str:
    """The registered name of ``workflow``: a name, or the object ``@workflow`` returned
    (``start(summarize, {...})``), which must be the handler new runs start on under its
    name (not an old version kept as ``name@N``, nor one a later definition replaced)."""
    if isinstance(workflow, str):
        return workflow
    if not isinstance(workflow, WorkflowDef):
        raise TypeError(
            f"expected a workflow name or a @workflow handler, not {type(workflow).__name__}"
        )
    if _workflows.get(workflow.name) is not workflow:
        raise UnknownWorkflowError(
            f"workflow {workflow.name!r} version {workflow.version} is not the handler new runs "
            "start on (an old version kept as name@N, or replaced by a later definition)"
        )
    return workflow.name


def _origin(fn: Callable[..., Any]) -> tuple[str, str]:
    """Where a handler is defined; the same place registering again is a re-import."""
    return (getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn)))


def workflow_for_run(name: str, version: int) -> WorkflowDef[Any]:
    """The handler a run of ``name`` started on ``version`` replays: that version's handler
    if it is still registered (the current one, or an old one kept as ``name@version``), else
    the current one for an older version (an additive change replays fine; anything else
    fails the run with a ``DeterminismError`` naming the position, never silently). A version
    newer than the current one is code this process does not have (a deploy rolled back, or
    not yet here: ``newer_than_here``): an ``UnknownWorkflowError``, never the old code."""
    kept = _versions.get((name, version))
    if kept is not None:
        return kept
    current = get_workflow(name)
    if version > current.version:
        raise UnknownWorkflowError(
            f"workflow {name!r} version {version} is newer than the code here (version "
            f"{current.version}): deploy version {version}'s definition to replay its runs"
        )
    return current


# When this process loaded its workflow code: a run started after it, on a workflow or a
# version the process does not know, was started by newer code (a rolling deploy).
LOADED_AT = datetime.now(UTC)
# How long a worker leaves such a run for one with the new code. A rollout takes minutes;
# a run still waiting after this is failed as before, so a worker set that lacks a pipeline
# for good (a module missing on the workers) does not keep its runs pending for ever.
ROLLOUT_WINDOW = timedelta(hours=1)


def newer_than_here(name: str, version: int, created_at: datetime | None) -> str | None:
    """Why a run needs code newer than this process's, or None.

    During a rolling deploy, web processes with the new code start runs that old workers may
    take. A run started after this process loaded its code, on a workflow it does not define
    or on a version above its own, is such a run: the worker leaves it for one with the new
    code, where failing it ("no longer defined") or replaying the old handler (a wrong
    result, silently) would be wrong. A run started before this process loaded is judged as
    before: its code is gone. So is one waiting longer than ``ROLLOUT_WINDOW``."""
    if created_at is None or created_at <= LOADED_AT:
        return None
    if created_at < datetime.now(UTC) - ROLLOUT_WINDOW:
        return None
    current = _workflows.get(name)
    if current is None:
        return f"workflow {name!r} is not defined in this process"
    if version > current.version and (name, version) not in _versions:
        return (
            f"workflow {name!r} version {version} is newer than this process's ({current.version})"
        )
    return None


def replayable(name: str, version: int) -> WorkflowDef[Any]:
    """``workflow_for_run``, and the definition's own word on ``version`` (``extra["replays"]``:
    a state machine keeps each version's states): an ``UnknownWorkflowError`` when a run of
    that version can no longer be replayed, because its code is gone. The message names this
    workflow only (not every registered one, which a key limited to some pipelines must not
    learn from a run's error)."""
    try:
        wf = workflow_for_run(name, version)
    except UnknownWorkflowError:
        if name in _workflows:
            raise  # a version newer than the code here: its own message says so
        raise UnknownWorkflowError(
            f"workflow {name!r} is no longer defined: restore its definition to replay its runs"
        ) from None
    check = wf.extra.get("replays")
    if check is not None:
        check(version)
    return wf


def unregister_workflow(name: str) -> None:
    """Forget a workflow and its kept versions (tests define throwaway ones)."""
    _workflows.pop(name, None)
    for key in [key for key in _versions if key[0] == name]:
        del _versions[key]


def registered_workflows() -> dict[str, WorkflowDef[Any]]:
    return dict(_workflows)
