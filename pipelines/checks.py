"""Django system checks for pipelines (``manage.py check``, and every ``runserver``/worker start).

- pipelines.E001: a machine definition is invalid (each error names its state).
- pipelines.E002: a step a machine runs cannot be imported by its dotted path (parallel branches
  and steps queued in a limited pool run in other processes, which import them).
- pipelines.E003: an LLM model setting, or an entry of the price table, cannot be parsed.
- pipelines.E004: ``SLUICE_LLM_OUTPUT_MODE`` is not one of its modes, or ``SLUICE_LLM_TIMEOUT``
  is not a number of seconds over 0 (every request would time out at once).
- pipelines.W001: a configured model has no price, so its cost would be recorded as 0.
- pipelines.W002: a configured provider has no API key.
- pipelines.W003: a ``SLUICE_LLM_MODELS`` key names no pipeline or LLM task (a typo such as
  ``thread-analysis`` would silently leave those tasks on the default model).
- pipelines.W004: a step a machine runs names a pool that ``SLUICE_POOLS`` does not define (a
  typo such as ``@step(pool="llm-typo")`` silently made an unlimited pool on the default
  queue). Only machines: the steps a code-first workflow calls are known only when it runs.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from django.conf import settings
from django.core import checks

from pipelines.llm import config, pricing
from pipelines.llm.errors import ConfigurationError
from pipelines.llm.tasks import TASKS
from pipelines.machine import Parallel, State, registered_machines
from workflows.core.definitions import resolve_step, step_path


@checks.register("pipelines")
def check_pipelines(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return check_machines() + check_models()


def check_machines() -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for machine_id, versions in sorted(registered_machines().items()):
        for version, m in sorted(versions.items()):
            where = f"machine {machine_id!r} version {version}"
            for error in m.validate():
                messages.append(
                    checks.Error(f"{where}: {error}", id="pipelines.E001", obj=machine_id)
                )
            for name, st in m.states.items():
                runs = [st.run] if isinstance(st, State) else []
                if isinstance(st, Parallel):
                    runs = [b.run for b in st.branches.values() if isinstance(b, State)]
                for fn in runs:
                    messages += _pool_problem(fn, f"{where}, state {name!r}", machine_id)
                    problem = _import_problem(fn)
                    if problem:
                        messages.append(
                            checks.Error(
                                f"{where}, state {name!r}: {problem}",
                                hint="Define steps at module level (with @step) so other worker "
                                "processes can import them.",
                                id="pipelines.E002",
                                obj=machine_id,
                            )
                        )
    return messages


def _pool_problem(fn: Any, where: str, machine_id: str) -> list[checks.CheckMessage]:
    """A warning when the step's pool is not in ``SLUICE_POOLS``: the engine would create it,
    unlimited, on the default queue (a pool made in the admin alone is one too)."""
    if fn is None:
        return []
    from workflows.core.definitions import as_step

    try:
        pool = as_step(fn).pool
    except Exception:
        return []  # not a step at all: pipelines.E001/E002 say so
    known = list(getattr(settings, "SLUICE_POOLS", {}) or {})
    if pool in known:
        return []
    close = difflib.get_close_matches(str(pool), known, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return [
        checks.Warning(
            f"{where}: step {getattr(fn, '__name__', fn)!r} runs in pool {pool!r}, which "
            f"SLUICE_POOLS does not define, so it is unlimited and served by the default "
            f"queue{guess}",
            hint=f"Pools in SLUICE_POOLS: {', '.join(sorted(known))}. Add the pool to "
            "SLUICE_POOLS (a pool made in the admin only takes the default queue), or fix "
            "@step(pool=...).",
            id="pipelines.W004",
            obj=machine_id,
        )
    ]


def _import_problem(fn: Any) -> str:
    if fn is None:
        return ""
    try:
        from workflows.core.definitions import as_step

        path = step_path(as_step(fn))
        resolve_step(path)
    except Exception as exc:
        return f"step {getattr(fn, '__name__', fn)!r} cannot be imported by its path ({exc})"
    return ""


OUTPUT_MODES = ("tool", "native", "prompted")


def check_models() -> list[checks.CheckMessage]:
    messages = _check_request_settings() + _check_model_keys()
    configured = {"SLUICE_LLM_MODEL": getattr(settings, "SLUICE_LLM_MODEL", config.OFFLINE)}
    for key, value in (getattr(settings, "SLUICE_LLM_MODELS", {}) or {}).items():
        configured[f"SLUICE_LLM_MODELS[{key!r}]"] = value
    for key, entry in (getattr(settings, "SLUICE_LLM_PRICES", {}) or {}).items():
        try:
            pricing.checked_price(key, entry)
        except ConfigurationError as exc:
            messages.append(checks.Error(str(exc), id="pipelines.E003"))
    for setting, value in configured.items():
        try:
            spec = config.parse_model(value)
            pricing.price_of(spec)
        except ConfigurationError as exc:
            messages.append(checks.Error(f"{setting}: {exc}", id="pipelines.E003"))
            continue
        if spec.offline:
            continue
        if pricing.price_of(spec) is None:
            messages.append(
                checks.Warning(
                    f"{setting}: no price for {spec.name!r}; its cost is recorded as 0 and "
                    "max_cost "
                    "budgets cannot stop its runs",
                    hint="Add it to SLUICE_LLM_PRICES "
                    f'(env: SLUICE_LLM_PRICES="{spec.name}=IN/OUT").',
                    id="pipelines.W001",
                )
            )
        if spec.provider in ("openai", "anthropic") and spec.api_key in ("", "missing"):
            env = "OPENAI_API_KEY" if spec.provider == "openai" else "ANTHROPIC_API_KEY"
            messages.append(
                checks.Warning(
                    f"{setting}: {spec.name!r} needs an API key; its calls will fail with 401",
                    hint=f"Set {env} or SLUICE_LLM_API_KEY.",
                    id="pipelines.W002",
                )
            )
    return messages


def _check_request_settings() -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    mode = getattr(settings, "SLUICE_LLM_OUTPUT_MODE", "tool")
    if mode not in OUTPUT_MODES:
        messages.append(
            checks.Error(
                f"SLUICE_LLM_OUTPUT_MODE is {mode!r}, not one of {', '.join(OUTPUT_MODES)}",
                hint="tool (the default) works with most providers; native uses the "
                "provider's JSON-schema mode, prompted asks for JSON in the prompt.",
                id="pipelines.E004",
            )
        )
    timeout = getattr(settings, "SLUICE_LLM_TIMEOUT", 60.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        messages.append(
            checks.Error(
                f"SLUICE_LLM_TIMEOUT is {timeout!r}: it is the seconds one LLM request may "
                "take, a number over 0 (every request would time out at once)",
                hint="The default is 60.",
                id="pipelines.E004",
            )
        )
    return messages


def _check_model_keys() -> list[checks.CheckMessage]:
    """A ``SLUICE_LLM_MODELS`` key is a pipeline (``thread_analysis``) or a task
    (``support_ticket.grade``); one that is neither configures nothing."""
    tasks = set(TASKS)
    pipelines = {name.split(".", 1)[0] for name in tasks}
    known = sorted(pipelines) + sorted(tasks)
    messages: list[checks.CheckMessage] = []
    for key in getattr(settings, "SLUICE_LLM_MODELS", {}) or {}:
        if key in tasks or key in pipelines:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        messages.append(
            checks.Warning(
                f"SLUICE_LLM_MODELS[{key!r}] names no pipeline or LLM task, so it sets no "
                f"model{guess}",
                hint=f"Pipelines: {', '.join(sorted(pipelines))}. "
                f"Tasks: {', '.join(sorted(tasks))}.",
                id="pipelines.W003",
            )
        )
    return messages
