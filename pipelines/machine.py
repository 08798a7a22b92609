"""Declarative state machines that compile to ordinary durable workflows.

    thread_analysis = machine(
        id="thread_analysis", version=1, initial="parsing", input_model=ThreadInput,
        context={"darvo_detected": False},
        states={
            "parsing": state(run=parse_thread, on_done="analysis", on_error="failed"),
            "analysis": parallel({"darvo": state(run=analyze_darvo), ...}, min_success=2,
                                 on_done=[goto("darvo_review", guard=darvo_found),
                                          goto("standard_review")]),
            "darvo_review": human(instruction="…", on={"approve": "synthesis",
                                                       "reject": "analysis"}),
            ...
            "complete": final(), "failed": final(status="failed"),
        })

The machine is registered as a workflow whose handler walks the states. Each state entry is a
journal entry: ``state(run=f)`` runs step ``f`` (journaled as ``state:<name>``), ``parallel``
runs its branches as fan-out steps (``state:<name>/<branch>``), ``human`` opens a gate (named
by its title), ``wait`` waits for an event, and ``final`` records ``state:<name>``. Step
results (dicts) merge into the machine's context, which guards read; the journal therefore
tells which states a run visited, and replaying it walks the same path.

Definitions are validated when made (and again by the ``pipelines`` system check): unknown
targets, unreachable states, no reachable final state, guarded transitions without a default
branch and other dead ends raise ``MachineDefinitionError`` naming the state.

Loops: a state entered more than ``max_visits`` times (default 25) without a ``wait`` or a
``human`` state in between fails the run (a runaway loop, re-entering states with nothing to
wait for); a loop through a wait or a gate (a reminder every hour, a review rejected again and
again) only meets ``max_total_visits`` (default 1000, ``None`` for no limit), the visits of
one state in one run in all.

Versions: defining a machine again with a higher ``version`` keeps the old definition for the
runs that started on it (``Run.version``); see ``docs/pipelines.md``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any

import pydantic

from pipelines.dsl import (
    AnyState,
    Final,
    Goto,
    Human,
    Parallel,
    State,
    Transition,
    Wait,
    final,
    goto,
    human,
    parallel,
    parse_duration,
    state,
    targets_of,
    wait,
)
from pipelines.graph import Diagram, mermaid_id
from workflows.core.calls import MAX_WAIT_SECONDS
from workflows.core.definitions import StepDef, as_step, undo_path, workflow
from workflows.core.errors import StepFailed, UnknownWorkflowError

# Entries of one state without a wait or a gate in between: more is a runaway loop.
MAX_VISITS = 25
# Entries of one state in one run in all (a run's journal grows, and each resume replays it).
MAX_TOTAL_VISITS = 1000
TIMED_OUT = {"$sluice": "timed-out"}


class MachineDefinitionError(ValueError):
    """A machine definition is invalid; ``errors`` lists every problem found."""

    def __init__(self, machine_id: str, errors: list[str]) -> None:
        self.machine_id = machine_id
        self.errors = errors
        super().__init__(f"machine {machine_id!r} is invalid: " + "; ".join(errors))


class MachineError(RuntimeError):
    """A run of a machine cannot go on (a guard raised, a loop ran away, too few branches)."""


class MachineVersionGone(MachineError, UnknownWorkflowError):
    """A run's machine version is no longer defined (a deploy removed it)."""


class MachineFailed(RuntimeError):
    """The run reached a final state declared ``status="failed"``."""


# --- the machine ------------------------------------------------------------------------------


@dataclass
class Machine:
    id: str
    version: int
    initial: str
    states: dict[str, AnyState]
    context: dict[str, Any] = field(default_factory=dict)
    input_model: type[pydantic.BaseModel] | None = None
    description: str = ""
    title: str = ""
    max_visits: int = MAX_VISITS
    max_total_visits: int | None = MAX_TOTAL_VISITS

    def human_title(self, name: str) -> str:
        st = self.states[name]
        assert isinstance(st, Human)
        return st.title or name.replace("_", " ").capitalize()

    def edges(self) -> list[tuple[str, str, str]]:
        """(source, target, label) for every transition."""
        out: list[tuple[str, str, str]] = []
        for name, st in self.states.items():
            if isinstance(st, State | Parallel | Wait):
                gotos = targets_of(st.on_done)
                guarded = any(g.guard is not None for g in gotos)
                for g in gotos:
                    # The default branch of a guarded choice reads "otherwise" on the graph.
                    out.append((name, g.target, g.text or ("otherwise" if guarded else "")))
                on_error = getattr(st, "on_error", None)
                if on_error:
                    out.append((name, on_error, "error"))
            if isinstance(st, Wait) and st.on_timeout:
                out.append((name, st.on_timeout, "timeout"))
            if isinstance(st, Human):
                for outcome, target in st.on.items():
                    label = outcome + (" / timeout" if outcome == st.on_timeout else "")
                    out.append((name, target, label))
        return out

    def validate(self) -> list[str]:
        """Every problem with the definition, each naming its state (empty when valid)."""
        errors: list[str] = []
        if self.initial not in self.states:
            errors.append(f"initial state {self.initial!r} is not defined")
        for label, limit in (
            ("max_visits", self.max_visits),
            ("max_total_visits", self.max_total_visits),
        ):
            if limit is None and label == "max_total_visits":
                continue
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                errors.append(f"{label}={limit!r} must be a whole number of 1 or more")
        shape = self._transition_problems()
        if shape:  # the checks below read the transitions: they must be names and goto()s
            return errors + shape
        titles: dict[str, str] = {}
        for name, st in self.states.items():
            where = f"state {name!r}"
            if not isinstance(st, State | Parallel | Human | Wait | Final):
                errors.append(
                    f"{where}: {type(st).__name__} is not a state "
                    "(use state(), parallel(), human(), wait() or final())"
                )
                continue
            if isinstance(st, State) and st.run is None:
                errors.append(f"{where}: state() needs run=<step>")
            subs = st.branches.items() if isinstance(st, Parallel) else [("", st)]
            for branch, sub in subs:
                if isinstance(sub, State) and sub.compensate is not None:
                    try:
                        undo_path(as_step(sub.run), sub.compensate)
                    except TypeError:
                        label = f"{where} branch {branch!r}" if branch else where
                        errors.append(
                            f"{label}: compensate= must be a module-level function "
                            "(the undo runs later, perhaps in another process)"
                        )
            if isinstance(st, State | Parallel | Wait):
                gotos = targets_of(st.on_done)
                if not gotos:
                    errors.append(
                        f"{where} has no on_done transition (a dead end; end in a final() state)"
                    )
                for g in gotos[:-1]:
                    if g.guard is None:
                        errors.append(
                            f"{where}: an unguarded goto({g.target!r}) must be the last transition"
                        )
                if gotos and gotos[-1].guard is not None:
                    errors.append(
                        f"{where}: guarded transitions need a default branch "
                        "(end the list with a goto() without guard)"
                    )
            if isinstance(st, Parallel):
                if not st.branches:
                    errors.append(f"{where}: parallel() needs at least one branch")
                for branch, sub in st.branches.items():
                    if not isinstance(sub, State) or sub.run is None:
                        errors.append(f"{where}: branch {branch!r} must be state(run=<step>)")
                    elif sub.on_done is not None or sub.on_error is not None:
                        errors.append(
                            f"{where}: branch {branch!r} cannot have transitions of its own"
                        )
                n = len(st.branches)
                if st.min_success is not None and (
                    not isinstance(st.min_success, int) or isinstance(st.min_success, bool)
                ):
                    errors.append(f"{where}: min_success={st.min_success!r} must be an integer")
                elif st.min_success is not None and not 1 <= st.min_success <= max(n, 1):
                    errors.append(
                        f"{where}: min_success={st.min_success} must be between 1 and {n}"
                    )
            if isinstance(st, Human):
                if not st.on:
                    errors.append(f"{where}: human() needs on={{outcome: target}}")
                if st.on and st.on_timeout not in st.on:
                    errors.append(
                        f"{where}: on_timeout={st.on_timeout!r} is not one of its outcomes "
                        f"{sorted(st.on)}"
                    )
                if not isinstance(st.approvals, int) or isinstance(st.approvals, bool):
                    errors.append(f"{where}: approvals={st.approvals!r} must be an integer")
                elif st.approvals < 1:
                    errors.append(f"{where}: approvals={st.approvals} must be 1 or more")
                elif st.approvals > 1 and "approve" not in st.on:
                    errors.append(f"{where}: approvals={st.approvals} needs an 'approve' outcome")
                if st.timeout is not None and st.timeout <= timedelta(0):
                    errors.append(f"{where}: timeout must be longer than 0, not {st.timeout}")
                if (st.escalate_after is None) != (not st.escalate_to):
                    errors.append(f"{where}: escalate_after and escalate_to go together")
                errors += [f"{where}: {problem}" for problem in _gate_problems(st)]
                title = self.human_title(name)
                if not 1 <= len(title.strip()) <= MAX_TITLE:
                    errors.append(
                        f"{where}: the gate's title (title=, else the state's name) must be 1 to "
                        f"{MAX_TITLE} characters, not {len(title.strip())}"
                    )
                if title in titles:
                    errors.append(
                        f"{where}: title {title!r} is already used by state {titles[title]!r}"
                    )
                titles[title] = name
            if isinstance(st, Wait):
                errors += [f"{where}: {problem}" for problem in _wait_problems(st)]
            names = st.branches if isinstance(st, Parallel) else [""]
            for branch in names if isinstance(st, State | Parallel | Final) else []:
                step_name = f"state:{name}/{branch}" if branch else f"state:{name}"
                if len(step_name) > MAX_STEP_NAME:
                    errors.append(
                        f"{where}: the journal name {step_name[:40]!r}… is {len(step_name)} "
                        f"characters, over the {MAX_STEP_NAME} a journal entry's name holds "
                        "(shorten the state's or the branch's name)"
                    )
        for src, dst, _ in self.edges():
            if dst not in self.states:
                errors.append(f"state {src!r}: transition to unknown state {dst!r}")
        if self.initial in self.states:
            reachable = self._reachable()
            for name in self.states:
                if name not in reachable:
                    errors.append(f"state {name!r} is unreachable from {self.initial!r}")
            if not any(isinstance(self.states[n], Final) for n in reachable):
                errors.append(f"no final state is reachable from {self.initial!r}")
            else:
                ends = self._reaching_final()
                for name in self.states:
                    if name in reachable and name not in ends:
                        errors.append(
                            f"state {name!r} cannot reach a final state (a loop without a way "
                            "out: a run would go round it until max_visits stops it)"
                        )
        return errors

    def _transition_problems(self) -> list[str]:
        """Transitions that are not state names or ``goto()``s with a callable guard (each
        would otherwise surface as a TypeError, or only when a run took it)."""
        problems: list[str] = []
        for name, st in self.states.items():
            where = f"state {name!r}"
            named: list[tuple[str, Any]] = [("on_error", getattr(st, "on_error", None))]
            if isinstance(st, Wait):
                named.append(("on_timeout", st.on_timeout))
            if isinstance(st, Human):
                named += [(f"on[{k!r}]", v) for k, v in st.on.items()]
            for label, target in named:
                if target is not None and not isinstance(target, str):
                    problems.append(f"{where}: {label} must name a state, not {target!r}")
            if not isinstance(st, State | Parallel | Wait):
                continue
            t = st.on_done
            items = t if isinstance(t, list | tuple) else [] if t is None else [t]
            for item in items:
                target = item.target if isinstance(item, Goto) else item
                if not isinstance(target, str):
                    problems.append(
                        f"{where}: on_done must name a state (or be goto()s), not {target!r}"
                    )
                elif isinstance(item, Goto) and item.guard is not None and not callable(item.guard):
                    problems.append(
                        f"{where}: the guard of goto({target!r}) must be a function of the "
                        f"data, not {item.guard!r}"
                    )
        return problems

    def _reaching_final(self) -> set[str]:
        """The states from which some path leads to a final state."""
        back: dict[str, list[str]] = {}
        for src, dst, _ in self.edges():
            back.setdefault(dst, []).append(src)
        seen = {n for n, st in self.states.items() if isinstance(st, Final)}
        todo = list(seen)
        while todo:
            for prev in back.get(todo.pop(), []):
                if prev not in seen:
                    seen.add(prev)
                    todo.append(prev)
        return seen

    def _reachable(self) -> set[str]:
        graph: dict[str, list[str]] = {}
        for src, dst, _ in self.edges():
            graph.setdefault(src, []).append(dst)
        seen, todo = {self.initial}, [self.initial]
        while todo:
            for nxt in graph.get(todo.pop(), []):
                if nxt in self.states and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # --- diagrams --------------------------------------------------------------------------

    def diagram(self) -> Diagram:
        d = Diagram(initial=self.initial)
        for name, st in self.states.items():
            if isinstance(st, Parallel):
                regions = [f"{name}__{b}" for b in st.branches]
                for b, region in zip(st.branches, regions, strict=True):
                    d.add(region, b)
                d.add(name, name, "parallel", regions)
            elif isinstance(st, Human):
                d.add(name, name, "gate")
            elif isinstance(st, Wait):
                d.add(name, f"{name} (event {st.event})", "wait")
            elif isinstance(st, Final):
                d.add(name, name, "final")
            else:
                d.add(name, name)
        for src, dst, label in self.edges():
            d.edge(src, dst, label)
        return d

    def to_mermaid(self) -> str:
        """The machine as a mermaid ``stateDiagram-v2``."""
        return self.diagram().render()

    def locate(self, kind: str, name: str) -> str | None:
        """The state a journal row belongs to (see the module docstring for the names)."""
        if name.startswith("state:"):
            return name[6:].replace("/", "__")
        if kind == "parallel" and name.startswith("parallel:state:"):
            return name[15:].split("/", 1)[0]
        if kind == "gate":
            return next(
                (
                    n
                    for n, st in self.states.items()
                    if isinstance(st, Human) and self.human_title(n) == name
                ),
                None,
            )
        if kind == "event":
            return next(
                (n for n, st in self.states.items() if isinstance(st, Wait) and st.event == name),
                None,
            )
        return None

    def mermaid_for_run(self, run: Any) -> str:
        return self.diagram().for_run(run, self.locate)

    # --- running ---------------------------------------------------------------------------

    def step_for(self, name: str, run: Any) -> StepDef:
        """The state's step, renamed ``state:<name>`` so the journal reads as the path taken.

        The code and its policy (retries, pool, timeout) are the step's own; a queued or
        parallel execution imports it by its dotted path, which the renaming keeps.
        """
        return replace(as_step(run), name=f"state:{name}"[:200])

    def walk(self, ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
        """The workflow handler's body: walk from the initial state to a final one."""
        name = self.initial
        trail: list[str] = []
        # Per state: entries since the last wait or gate (a runaway loop waits for nothing),
        # and entries in all.
        visits: dict[str, int] = {}
        total: dict[str, int] = {}
        # Per parallel state: the keys its branches put in the context, each with the value
        # it had before the state first wrote it (see _merge_visit).
        produced: dict[str, dict[str, Any]] = {}
        while True:
            visits[name] = visits.get(name, 0) + 1
            total[name] = total.get(name, 0) + 1
            if visits[name] > self.max_visits:
                raise MachineError(
                    f"state {name!r} entered more than {self.max_visits} times without a wait or "
                    "a gate in between; stopping a runaway loop (machine(max_visits=...))"
                )
            if self.max_total_visits is not None and total[name] > self.max_total_visits:
                raise MachineError(
                    f"state {name!r} entered more than {self.max_total_visits} times in this run; "
                    "stopping the loop (machine(max_total_visits=...))"
                )
            trail.append(name)
            st = self.states[name]
            if isinstance(st, Final):
                ctx.run(replace(_FINAL, name=f"state:{name}"), name)
                if st.status == "failed":
                    error = data.get("error") or {}
                    detail = (
                        f": {error.get('state')} failed with {error.get('type')}: "
                        f"{error.get('message')}"
                        if error
                        else ""
                    )
                    raise MachineFailed(f"{self.id} ended in final state {name!r}{detail}")
                return {"final_state": name, "trail": trail, "context": data}
            name = self._enter(ctx, name, st, data, produced)
            if isinstance(st, Wait | Human):
                visits.clear()  # the loop waited (an event, a timeout, a decision)

    def _enter(
        self,
        ctx: Any,
        name: str,
        st: AnyState,
        data: dict[str, Any],
        produced: dict[str, dict[str, Any]],
    ) -> str:
        if isinstance(st, State):
            try:
                merge(
                    data,
                    ctx.run(
                        self.step_for(name, st.run), copy.deepcopy(data), compensate=st.compensate
                    ),
                )
            except StepFailed as exc:
                if not st.on_error:
                    raise
                data["error"] = {"state": name, **_error_summary(exc)}
                return st.on_error
            return self._choose(name, st.on_done, data)
        if isinstance(st, Parallel):
            return self._parallel(ctx, name, st, data, produced)
        if isinstance(st, Human):
            return self._human(ctx, name, st, data)
        if isinstance(st, Wait):
            payload = ctx.wait_for_event(st.event, timeout=st.timeout, default=TIMED_OUT)
            if payload == TIMED_OUT:
                data.setdefault("timed_out", []).append(st.event)
                # on_timeout is required with a timeout (validate); a machine registered
                # without validation keeps the old fallback to on_done.
                return st.on_timeout or self._choose(name, st.on_done, data)
            merge(data, payload if isinstance(payload, dict) else {st.event: payload})
            return self._choose(name, st.on_done, data)
        raise MachineError(f"state {name!r}: cannot enter a {type(st).__name__}")

    def _parallel(
        self,
        ctx: Any,
        name: str,
        st: Parallel,
        data: dict[str, Any],
        produced: dict[str, dict[str, Any]],
    ) -> str:
        snapshot = copy.deepcopy(data)
        calls = [
            ctx.call(
                self.step_for(f"{name}/{branch}", sub.run), snapshot, compensate=sub.compensate
            )
            for branch, sub in st.branches.items()
        ]
        # Runs in flight before the re-visit fix keep the plain merge they replayed with (their
        # journal would not match otherwise); a run that starts now takes the new path.
        revert = ctx.patched(REVISIT_PATCH)
        results = ctx.parallel(calls, return_exceptions=True)
        failures: dict[str, dict[str, str]] = {}
        fresh: list[dict[str, Any]] = []
        for branch, result in zip(st.branches, results, strict=True):
            if isinstance(result, StepFailed):
                failures[branch] = _error_summary(result)
            else:
                fresh.append(_as_dict(result))
        succeeded = len(fresh)
        if revert:
            _merge_visit(data, fresh, produced.setdefault(name, {}))
        else:
            for result in fresh:
                data.update(result)
        # Recorded per visit: a loop back here replaces the previous visit's record.
        data.setdefault("branch_failures", {})[name] = failures
        needed = st.min_success if st.min_success is not None else len(st.branches)
        if succeeded < needed:
            listing = ", ".join(f"{b} ({e['type']}: {e['message']})" for b, e in failures.items())
            message = (
                f"state {name!r}: {succeeded} of {len(st.branches)} branches succeeded, "
                f"{needed} needed; failed: {listing}"
            )
            if st.on_error:
                data["error"] = {"state": name, "type": "TooFewBranches", "message": message}
                return st.on_error
            raise MachineError(message)
        return self._choose(name, st.on_done, data)

    def _human(self, ctx: Any, name: str, st: Human, data: dict[str, Any]) -> str:
        if callable(st.payload):
            payload = st.payload(copy.deepcopy(data))
        elif st.payload is not None:
            payload = {k: data.get(k) for k in st.payload}
        else:
            payload = data
        decision = ctx.review(
            title=self.human_title(name),
            instruction=st.instruction,
            payload=payload,
            timeout=st.timeout,
            on_timeout=st.on_timeout,
            choices=tuple(st.on),
            group=st.group,
            fields=st.fields,
            approvals=st.approvals,
            separation_of_duties=st.separation_of_duties,
            escalate_after=st.escalate_after,
            escalate_to=st.escalate_to,
        )
        outcome = getattr(decision, "outcome", None)
        comment = getattr(decision, "comment", "") or ""
        data["review"] = {
            "state": name,
            "outcome": outcome,
            "comment": comment,
            "decided_by": getattr(decision, "decided_by", ""),
            "timed_out": bool(getattr(decision, "timed_out", False)),
        }
        data["reviewer_comment"] = comment
        edits = getattr(decision, "edits", None)
        if isinstance(edits, pydantic.BaseModel):
            edits = edits.model_dump(mode="json")
        if isinstance(edits, dict):
            merge(data, edits)
        if outcome not in st.on:
            raise MachineError(
                f"state {name!r}: the gate was decided {outcome!r}, which has no transition"
            )
        return st.on[str(outcome)]

    def _choose(self, name: str, transition: Transition, data: dict[str, Any]) -> str:
        for g in targets_of(transition):
            if g.guard is None:
                return g.target
            try:
                if g.guard(data):
                    return g.target
            except Exception as exc:
                raise MachineError(
                    f"state {name!r}: guard {g.text!r} for goto({g.target!r}) raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        raise MachineError(f"state {name!r}: no transition applies")  # validation prevents it


# What a gate and an event wait can hold, checked when a machine is defined: each of these
# otherwise failed every run that reached the state, with the engine's or the gate's message.
# The lengths are the columns of reviews' Gate (and of the journal's step names), the duration
# limit the engine's (pipelines does not import reviews; tests/pipelines/
# test_machine_validation.py checks they still agree).
MAX_OUTCOME = 64  # Gate.outcome / on_timeout
MAX_GROUP = 150  # Gate.group / escalate_to (a Django group's name)
MAX_TITLE = 200  # Gate.title, the name of the gate's journal entry
MAX_EVENT = 200  # an event's name (its journal entry's name)
MAX_STEP_NAME = 200  # a journal entry's name: state:<state>[/<branch>]
MAX_APPROVALS = 10  # reviews.decision.MAX_APPROVALS


def _nul(text: Any) -> bool:
    return isinstance(text, str) and "\x00" in text


def _too_long(duration: timedelta | None) -> bool:
    return duration is not None and duration.total_seconds() > MAX_WAIT_SECONDS


def _gate_problems(st: Human) -> list[str]:
    """What ``ctx.review`` would refuse on every run (beyond the checks of ``validate``)."""
    problems: list[str] = []
    for outcome in st.on:
        if not isinstance(outcome, str) or not outcome or len(outcome) > MAX_OUTCOME:
            problems.append(
                f"outcome {str(outcome)[:40]!r} must be a name of 1 to {MAX_OUTCOME} characters"
            )
    for label, text in (("instruction", st.instruction), ("title", st.title)):
        if _nul(text):
            problems.append(f"the {label} contains a NUL character (\\x00), which cannot be stored")
    for label, group in (("group", st.group), ("escalate_to", st.escalate_to)):
        if label == "escalate_to" and not group:
            continue
        if not isinstance(group, str) or not group or len(group) > MAX_GROUP or _nul(group):
            problems.append(
                f"{label}= must name a group (1 to {MAX_GROUP} characters, no NUL), "
                f"not {str(group)[:40]!r}"
            )
    if st.escalate_to and st.escalate_to == st.group:
        problems.append(f"escalate_to={st.escalate_to!r} is the gate's own group")
    if isinstance(st.approvals, int) and st.approvals > MAX_APPROVALS:
        problems.append(f"approvals={st.approvals} must be at most {MAX_APPROVALS}")
    for label, duration in (("timeout", st.timeout), ("escalate_after", st.escalate_after)):
        if _too_long(duration):
            problems.append(f"{label}={duration} is over ten years, the longest a run can wait")
    if st.escalate_after is not None and st.escalate_after <= timedelta(0):
        problems.append(f"escalate_after must be longer than 0, not {st.escalate_after}")
    return problems


def _wait_problems(st: Wait) -> list[str]:
    """What ``ctx.wait_for_event`` would refuse on every run."""
    problems: list[str] = []
    if not isinstance(st.event, str) or not st.event or len(st.event) > MAX_EVENT:
        problems.append(
            f"event= must be an event name of 1 to {MAX_EVENT} characters, "
            f"not {str(st.event)[:40]!r}"
        )
    elif _nul(st.event):
        problems.append("the event name contains a NUL character (\\x00)")
    if _too_long(st.timeout):
        problems.append(f"timeout={st.timeout} is over ten years, the longest a run can wait")
    elif st.timeout is not None and st.timeout < timedelta(0):
        problems.append(f"timeout must not be negative, not {st.timeout}")
    if st.timeout is not None and st.on_timeout is None:
        # A timed-out wait once took on_done, the path of an event that came: a forgotten
        # on_timeout sent an unpaid order down the "paid" path.
        problems.append(
            "a wait with a timeout needs on_timeout=<state>, where a run goes when no event "
            "came in time (name on_done's target to take that path on a timeout too)"
        )
    return problems


def merge(data: dict[str, Any], result: Any) -> None:
    """Merge a step result into the context (a pydantic model merges as its fields)."""
    data.update(_as_dict(result))


def _as_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, pydantic.BaseModel):
        result = result.model_dump(mode="json")
    if not isinstance(result, dict):
        raise MachineError(
            f"a state's step must return a dict (or None), not {type(result).__name__}"
        )
    return result


_UNSET = object()


# The patch id of the re-visit merge (``_merge_visit``), for runs in flight before it.
REVISIT_PATCH = "machine-parallel-revisit-revert"


def _merge_visit(data: dict[str, Any], fresh: list[dict[str, Any]], bases: dict[str, Any]) -> None:
    """Merge this visit's successful branch results (in branch order) into ``data``.

    A key the state's branches produced on an earlier visit but none produced on this one (a
    branch that failed this time) goes back to the value it had before the state first wrote
    it, or out of the context: after a reject loop, a branch that failed the second time left
    the first visit's analysis behind, shown to the reviewer and fed to the report as this
    visit's. Done for the whole state at once, before this visit's results are merged: per
    branch, a failed branch's restore could undo a fresh value a sibling wrote to the same key.
    ``bases`` is the state's record of what its branches wrote, kept across visits by
    ``walk``."""
    written = {key for result in fresh for key in result}
    for key in [k for k in bases if k not in written]:
        base = bases.pop(key)
        if base is _UNSET:
            data.pop(key, None)
        else:
            data[key] = base
    for key in written:
        bases.setdefault(key, data.get(key, _UNSET))
    for result in fresh:
        data.update(result)


def _error_summary(exc: StepFailed) -> dict[str, str]:
    return {
        "type": str(exc.error.get("type", "Error")),
        "message": str(exc.error.get("message", ""))[:500],
    }


def _enter_final(name: str) -> dict[str, str]:
    """The journal entry of a final state (it does nothing but say the run got there)."""
    return {"final_state": name}


# Not budgeted: reaching a final state costs nothing, so a run whose last real step crossed
# its budget still ends in the state it reached (and keeps what it did: no undo).
_FINAL = replace(as_step(_enter_final), budgeted=False)


# --- definition and registry ------------------------------------------------------------------

_machines: dict[str, dict[int, Machine]] = {}


def machine(
    *,
    id: str,
    version: int = 1,
    initial: str,
    states: Mapping[str, AnyState],
    context: dict[str, Any] | None = None,
    input_model: type[pydantic.BaseModel] | None = None,
    description: str = "",
    title: str = "",
    sample_input: dict[str, Any] | None = None,
    order: int = 100,
    max_visits: int = MAX_VISITS,
    max_total_visits: int | None = MAX_TOTAL_VISITS,
) -> Machine:
    """Define, validate and register a machine as the workflow ``id``.

    ``max_visits``: how many times a run may enter one state without a wait or a gate in
    between (more is a runaway loop, which fails the run); ``max_total_visits``: how many
    times in all (``None``: no limit), for loops that do wait, such as hourly reminders.

    Raises ``MachineDefinitionError`` listing every problem. The workflow registered under
    ``id`` runs each run on the machine version it started with.
    """
    m = Machine(
        id=id,
        version=version,
        initial=initial,
        states=dict(states),
        context=dict(context or {}),
        input_model=input_model,
        description=description,
        title=title,
        max_visits=max_visits,
        max_total_visits=max_total_visits,
    )
    errors = m.validate()
    if errors:
        raise MachineDefinitionError(id, errors)
    register(m, sample_input=sample_input, order=order)
    return m


def register(m: Machine, *, sample_input: dict[str, Any] | None = None, order: int = 100) -> None:
    """Register ``m`` (already validated, or deliberately not: the system check reports it)."""
    versions = _machines.setdefault(m.id, {})
    versions[m.version] = m
    latest = versions[max(versions)]
    if latest is not m:
        return  # An older version: kept for its in-flight runs, the workflow stays the latest.
    model = m.input_model or pydantic.create_model(
        _model_name(m.id), __config__=pydantic.ConfigDict(extra="allow")
    )

    def handler(ctx: Any, **_: Any) -> dict[str, Any]:
        pinned = version_of(m.id, ctx.record.version)
        data = copy.deepcopy(pinned.context)
        data.update(model.model_validate(ctx.input).model_dump(mode="json"))
        return pinned.walk(ctx, data)

    handler.__name__ = handler.__qualname__ = _model_name(m.id)
    handler.__module__ = __name__
    definition = workflow(
        name=m.id, version=m.version, description=m.description, input_model=model
    )(handler)
    from pipelines.registry import mark_pipeline

    mark_pipeline(
        definition,
        title=m.title or m.id.replace("_", " ").capitalize(),
        kind="machine",
        mermaid=m.to_mermaid(),
        mermaid_for_run=lambda run: version_of(m.id, run.version).mermaid_for_run(run),
        sample_input=sample_input,
        order=order,
    )
    definition.extra["machine"] = m
    # Asked before a restart or a fork of a run, and before each replay: a version whose
    # states are gone cannot be walked (``workflows.core.definitions.replayable``).
    definition.extra["replays"] = partial(version_of, m.id)


def version_of(machine_id: str, version: int) -> Machine:
    """The definition a run of ``version`` walks; a clear error once it was removed."""
    versions = _machines.get(machine_id, {})
    if version not in versions:
        known = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise MachineVersionGone(
            f"machine {machine_id!r} version {version} is no longer defined (defined: {known}); "
            "keep an old version's definition until its runs have finished"
        )
    return versions[version]


def registered_machines() -> dict[str, dict[int, Machine]]:
    return {k: dict(v) for k, v in _machines.items()}


def unregister(machine_id: str) -> None:
    """Forget a machine and its workflow (tests define throwaway ones)."""
    from workflows.core.definitions import unregister_workflow

    _machines.pop(machine_id, None)
    unregister_workflow(machine_id)


def _model_name(machine_id: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"\W|_", machine_id) if p) + "Input"


__all__ = [
    "Final",
    "Goto",
    "Human",
    "Machine",
    "MachineDefinitionError",
    "MachineError",
    "MachineFailed",
    "Parallel",
    "State",
    "Wait",
    "final",
    "goto",
    "human",
    "machine",
    "mermaid_id",
    "parallel",
    "parse_duration",
    "registered_machines",
    "state",
    "version_of",
    "wait",
]
