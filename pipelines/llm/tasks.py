"""LLM tasks: one prompt, one output model, one offline analyzer; ``complete`` runs a task.

A pipeline step calls ``complete(task, inputs)``. The model comes from settings
(``pipelines.llm.config``); the offline provider runs ``task.offline(inputs)`` instead of a
model. Either way the step's journal entry gets the provider, model, tokens, latency and cost
(``workflows.record_usage``), failed attempts included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pydantic
from django.conf import settings

from pipelines.llm import config, offline, pricing
from pipelines.llm.config import ModelSpec
from pipelines.llm.errors import MalformedAnswer, ProviderError
from workflows import record_usage
from workflows.core import jsonvalues

OFFLINE_NOTE = (
    "Produced by Sluice's offline analyzer (lexicons and text patterns), not by a language model."
)


@dataclass(frozen=True)
class LLMTask[T: pydantic.BaseModel]:
    """What to ask (``instructions`` + ``prompt(inputs)``), what comes back (``output_type``)
    and how the offline provider answers it (``offline(inputs)``)."""

    name: str
    output_type: type[T]
    instructions: str
    prompt: Callable[[dict[str, Any]], str]
    offline: Callable[[dict[str, Any]], T]

    def __post_init__(self) -> None:
        TASKS[self.name] = self

    @property
    def pool(self) -> str:
        return config.pool_for(self.name)


# Every task defined, by name: the pages show which model answers a pipeline's tasks and the
# system check validates each task's model setting.
TASKS: dict[str, LLMTask[Any]] = {}


def models_for_pipeline(pipeline: str) -> list[str]:
    """The distinct models (``offline`` / ``provider:model``) answering a pipeline's tasks."""
    found = []
    for name in sorted(TASKS):
        if name.split(".", 1)[0] == pipeline:
            try:
                found.append(config.model_for(name).name)
            except Exception:
                found.append("misconfigured")
    return list(dict.fromkeys(found))


@dataclass
class Completion[T: pydantic.BaseModel]:
    """A task's validated output and what producing it took."""

    output: T
    spec: ModelSpec
    input_tokens: int
    output_tokens: int
    latency_ms: int
    cost: Decimal

    @property
    def generated_by(self) -> str:
        """``offline`` or ``provider:model``: shown next to every result."""
        return self.spec.name

    def result(self) -> dict[str, Any]:
        """The output as journal JSON, labelled with who produced it."""
        return {**self.output.model_dump(mode="json"), "generated_by": self.generated_by}


def complete[T: pydantic.BaseModel](
    task: LLMTask[T], inputs: dict[str, Any], *, model: str | None = None
) -> Completion[T]:
    """Run ``task`` on ``inputs`` with the configured model (or ``model``, a model string)."""
    spec = config.parse_model(model) if model else config.model_for(task.name)
    prompt = task.prompt(inputs)
    started = time.perf_counter()
    if spec.offline:
        return _offline(task, inputs, spec, prompt, started)
    # pydantic-ai is imported on the first call to a real provider, not when Django loads this
    # module: it is most of a worker's start-up (about 0.9 s of CPU of 2), and a worker started
    # to replace a lost one should take work as soon as it can.
    from pipelines.llm import providers

    pricing.price_of(spec)  # a broken price table fails here, before a call is paid for
    try:
        answer = providers.ask(
            spec, instructions=task.instructions, prompt=prompt, output_type=task.output_type
        )
    except ProviderError as exc:
        # A failed attempt may still have used (and cost) tokens: journal them with it.
        used = getattr(exc, "usage", None) or providers.Usage()
        _record(spec, _or_zero(used.input_tokens), _or_zero(used.output_tokens), started, True)
        raise
    output = answer.output
    if not isinstance(output, task.output_type):  # pragma: no cover - pydantic-ai validated it
        raise MalformedAnswer(f"{spec.name}: unexpected output type", raw_text=repr(output))
    in_tokens, out_tokens = answer.input_tokens, answer.output_tokens
    if not (_plausible(in_tokens) and _plausible(out_tokens)):
        _record(spec, 0, 0, started, failed=True)
        raise MalformedAnswer(
            f"{spec.name}: the provider reported {in_tokens!r} input and {out_tokens!r} output "
            f"tokens (a count from 0 to {MAX_TOKENS:,} was expected)",
            provider=spec.provider,
            model=spec.model,
        )
    data = output.model_dump(mode="json")
    try:
        jsonvalues.check_text(data, jsonvalues.encode(data, "the answer"), "the answer")
        problem = ""
    except TypeError as exc:  # NaN or Infinity, a NUL character, a lone surrogate
        problem = str(exc)
    if problem:
        # Refused when the step's result is checkpointed anyway, but then as a failed step that
        # is not retried, with its tokens billed as a successful call. Another attempt may
        # well answer cleanly: the same retryable MalformedAnswer as any unreadable answer.
        _record(spec, in_tokens, out_tokens, started, failed=True)
        raise MalformedAnswer(
            f"{spec.name}: {problem} (the journal cannot store it)",
            raw_text=repr(output)[:4000],  # repr escapes what could not be stored
            provider=spec.provider,
            model=spec.model,
        )
    cost = _record(spec, in_tokens, out_tokens, started)
    return Completion(output, spec, in_tokens, out_tokens, _ms(started), cost)


# Tokens one call can use, far past any model's context: a larger count (or a negative or
# fractional one) is a provider's error, and priced it would overflow the run's cost.
MAX_TOKENS = 100_000_000


def _plausible(tokens: Any) -> bool:
    return isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens <= MAX_TOKENS


def _or_zero(tokens: Any) -> int:
    """A failed call's token count as journaled: 0 when the provider's count is implausible."""
    return int(tokens) if _plausible(tokens) else 0


def _offline[T: pydantic.BaseModel](
    task: LLMTask[T], inputs: dict[str, Any], spec: ModelSpec, prompt: str, started: float
) -> Completion[T]:
    delay = float(getattr(settings, "SLUICE_LLM_OFFLINE_LATENCY", 0.0) or 0.0)
    if delay > 0:
        # Simulated model latency, for demos and crash tests that need a step to take a while.
        time.sleep(delay)
    output = task.offline(inputs)
    # Round-trip through the schema: the offline answer obeys the same contract as a model's.
    output = task.output_type.model_validate(output.model_dump(mode="json"))
    in_tokens = offline.estimate_tokens(task.instructions + prompt)
    out_tokens = offline.estimate_tokens(json.dumps(output.model_dump(mode="json")))
    cost = _record(spec, in_tokens, out_tokens, started)
    return Completion(output, spec, in_tokens, out_tokens, _ms(started), cost)


def _record(
    spec: ModelSpec, in_tokens: int, out_tokens: int, started: float, failed: bool = False
) -> Decimal:
    cost = pricing.cost_of(spec, in_tokens, out_tokens)
    extra: dict[str, Any] = {"failed_call": True} if failed else {}
    record_usage(
        cost=cost,
        provider=spec.provider,
        model=spec.model,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        latency_ms=_ms(started),
        **extra,
    )
    return cost


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
