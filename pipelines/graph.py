"""Pipeline graphs as mermaid ``stateDiagram-v2`` text, static and for one run.

A ``Diagram`` is built once per pipeline (by the machine layer, or by hand for code-first
pipelines). ``Diagram.render()`` gives the static graph; ``Diagram.for_run(run, locate)``
reads the run's journal (one query) and marks each state visited, current or failed, with
``n/m`` progress on fan-out states. ``locate(kind, name)`` maps a journal row to a state id.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Colours follow static/sluice/sluice.css (ok, info, warn and bad badges).
CLASS_DEFS = {
    "gate": "fill:#fff5d6,stroke:#9a6700,color:#4d3500",
    "wait": "fill:#f3e8ff,stroke:#7c3aed,color:#3b1a73",
    "final": "fill:#eef0f3,stroke:#5b6472,color:#1b1f24",
    "visited": "fill:#e6f4ea,stroke:#1a7f37,color:#0f3d1d",
    "current": "fill:#dbe9ff,stroke:#1f6feb,stroke-width:3px,color:#0b2a5c",
    "failed": "fill:#fde8e8,stroke:#c62828,stroke-width:2px,color:#5c1010",
}
RUN_CLASSES = ("visited", "current", "failed")
ACTIVE_STEP = {"pending", "running", "retrying", "waiting"}

Locate = Callable[[str, str], str | None]


@dataclass
class Node:
    """A state of the diagram. ``regions`` (parallel states) lists its branch node ids."""

    id: str
    label: str = ""
    kind: str = "task"  # task | parallel | gate | wait | final
    regions: list[str] = field(default_factory=list)


@dataclass
class Edge:
    src: str
    dst: str
    label: str = ""


@dataclass
class Diagram:
    initial: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    direction: str = "TB"

    def add(
        self, node_id: str, label: str = "", kind: str = "task", regions: list[str] | None = None
    ) -> Node:
        node = Node(mermaid_id(node_id), label, kind, [mermaid_id(r) for r in regions or []])
        self.nodes[node.id] = node
        return node

    def edge(self, src: str, dst: str, label: str = "") -> None:
        self.edges.append(Edge(mermaid_id(src), mermaid_id(dst), label))

    def render(
        self, status: dict[str, str] | None = None, labels: dict[str, str] | None = None
    ) -> str:
        """The ``stateDiagram-v2`` text; ``status`` marks states visited/current/failed."""
        status = status or {}
        labels = labels or {}
        children = {r for n in self.nodes.values() for r in n.regions}
        lines = ["stateDiagram-v2"]
        if self.direction != "TB":
            lines.append(f"    direction {self.direction}")
        for name, style in CLASS_DEFS.items():
            lines.append(f"    classDef {name} {style}")
        for node in self.nodes.values():
            if node.id in children:
                continue
            if node.regions:
                lines.append(f"    state {node.id} {{")
                for i, region in enumerate(node.regions):
                    if i:
                        lines.append("        --")
                    child = self.nodes.get(region, Node(region))
                    lines.append(f'        state "{_label(child, labels)}" as {region}')
                lines.append("    }")
            else:
                lines.append(f'    state "{_label(node, labels)}" as {node.id}')
        lines.append(f"    [*] --> {mermaid_id(self.initial)}")
        for e in self.edges:
            text = f" : {_text(e.label)}" if e.label else ""
            lines.append(f"    {e.src} --> {e.dst}{text}")
        for node in self.nodes.values():
            if node.kind == "final":
                lines.append(f"    {node.id} --> [*]")
        # One class per state: a run's marks win over the kind's colour. Composite (parallel)
        # states cannot be styled by mermaid, so their branches carry the marks.
        classes: dict[str, list[str]] = {}
        for node in self.nodes.values():
            mark = status.get(node.id)
            cls = mark if mark in RUN_CLASSES else (node.kind if node.kind in CLASS_DEFS else "")
            if cls and not node.regions:
                classes.setdefault(cls, []).append(node.id)
        for cls, ids in classes.items():
            lines.append(f"    class {','.join(ids)} {cls}")
        return "\n".join(lines) + "\n"

    def for_run(self, run: Any, locate: Locate, end_state: str | None = None) -> str:
        """The graph of ``run``: visited states green, the current one blue, failures red.

        ``end_state``: for a succeeded run, the final state it ended in when the journal does
        not name one (code-first pipelines have no journal entry for their end).
        """
        status, labels = run_marks(self, run, locate, end_state)
        return self.render(status, labels)


def run_marks(
    diagram: Diagram, run: Any, locate: Locate, end_state: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Marks and progress labels from the run's journal (one query, oldest first)."""
    from workflows.models import Step

    rows = list(
        Step.objects.filter(run_id=run.pk, superseded=False)
        .order_by("position", "branch")
        .values_list("kind", "name", "status", "branch", "position")
    )
    status: dict[str, str] = {}
    progress: dict[str, list[int]] = {}
    visit: dict[str, int] = {}
    rank = {"visited": 0, "current": 1, "failed": 2}
    last: str | None = None
    for kind, name, step_status, branch, position in rows:
        located = locate(kind, name)
        if located is None:
            continue
        node_id = mermaid_id(located)
        if node_id not in diagram.nodes:
            continue
        mark = _mark(step_status)
        if branch >= 0:
            # Only the latest fan-out of a state counts (a loop may have run it before).
            if visit.get(node_id) != position:
                visit[node_id] = position
                progress[node_id] = [0, 0]
                status.pop(node_id, None)
            progress[node_id][1] += 1
            progress[node_id][0] += step_status == "succeeded"
            # A later branch must not hide an earlier failure or one still running.
            if node_id not in status or rank[mark] >= rank[status[node_id]]:
                status[node_id] = mark
            continue
        if last is not None and last != node_id and status.get(last) == "current":
            status[last] = "visited"  # the run moved on
        status[node_id] = mark
        last = node_id
    finished = getattr(run, "status", "") in ("succeeded", "failed", "canceled")
    if last is not None and finished:
        status[last] = "failed" if run.status != "succeeded" else "current"
        if run.status == "succeeded" and end_state and mermaid_id(end_state) in diagram.nodes:
            status[last] = "visited"
            status[mermaid_id(end_state)] = "current"
    for node in diagram.nodes.values():
        if node.regions and node.id in status:
            for region in node.regions:
                status.setdefault(region, "visited" if status[node.id] == "visited" else "")
            status.pop(node.id)
    labels = {}
    for node_id, (done, total) in progress.items():
        if total > 1:
            base = diagram.nodes[node_id].label or diagram.nodes[node_id].id
            labels[node_id] = f"{base} · {done}/{total}"
    return {k: v for k, v in status.items() if v}, labels


def _mark(step_status: str) -> str:
    if step_status == "failed":
        return "failed"
    if step_status in ACTIVE_STEP:
        return "current"
    return "visited"


def mermaid_id(name: str) -> str:
    """A state name as a mermaid identifier (letters, digits and underscores)."""
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"s_{ident}"


def _label(node: Node, labels: dict[str, str]) -> str:
    return _text(labels.get(node.id) or node.label or node.id)


def _text(text: str) -> str:
    # Quotes end a mermaid label; colons, semicolons and hashes start syntax of their own.
    return re.sub(r'["#;:{}<>]', " ", text).strip()
