"""Which registered workflows are pipelines, and the metadata pages and the API read.

A pipeline is a registered workflow whose ``definition.extra`` carries:

- ``pipeline``: True (listed on /pipelines/ and startable from the form);
- ``title`` and ``kind`` (``machine`` or ``code``);
- ``mermaid``: the static ``stateDiagram-v2`` text;
- ``mermaid_for_run``: ``callable(run) -> str``, the graph with that run's states marked;
- ``sample_input``: a dict that validates against the input model (prefills the form).

Machines get all of it from ``machine(...)``; code-first workflows call ``mark_pipeline``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workflows.core.definitions import WorkflowDef, get_workflow, registered_workflows


def mark_pipeline(
    definition: WorkflowDef,
    *,
    title: str,
    mermaid: str,
    mermaid_for_run: Callable[[Any], str],
    sample_input: dict[str, Any] | None = None,
    kind: str = "code",
    order: int = 100,
) -> WorkflowDef:
    """Make ``definition`` a pipeline (see the module docstring). ``order`` sorts the list."""
    definition.extra.update(
        pipeline=True,
        title=title,
        kind=kind,
        mermaid=mermaid,
        mermaid_for_run=mermaid_for_run,
        sample_input=dict(sample_input or {}),
        order=order,
    )
    return definition


def pipelines() -> list[WorkflowDef]:
    """Registered pipelines: built-ins first (by ``order``), then by title."""
    found = [d for d in registered_workflows().values() if d.extra.get("pipeline")]
    return sorted(
        found,
        key=lambda d: (
            int(d.extra.get("order", 100)),
            str(d.extra.get("title", d.name)).lower(),
            d.name,
        ),
    )


def get_pipeline(name: str) -> WorkflowDef | None:
    """The pipeline called ``name``, or None (unknown, or a workflow that is not a pipeline)."""
    try:
        definition = get_workflow(name)
    except LookupError:
        return None
    return definition if definition.extra.get("pipeline") else None


def mermaid_for_run(run: Any) -> str:
    """The graph of ``run`` with its states marked, or "" when its workflow has none."""
    definition = get_pipeline(run.workflow)
    if definition is None:
        return ""
    return str(definition.extra["mermaid_for_run"](run))
