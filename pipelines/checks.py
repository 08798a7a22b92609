"""Django system checks for pipelines (``manage.py check``, and every ``runserver``/worker start).

- pipelines.E001: a machine definition is invalid (each error names its state).
- pipelines.E002: a step a machine runs cannot be imported by its dotted path (parallel branches
  and steps queued in a limited pool run in other processes, which import them).
- pipelines.E003: an LLM model setting cannot be parsed.
- pipelines.W001: a configured model has no price, so its cost would be recorded as 0.
- pipelines.W002: a configured provider has no API key.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from pipelines.llm import config, pricing
from pipelines.llm.errors import ConfigurationError
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


def check_models() -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
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
