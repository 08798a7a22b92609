"""The engine against a small reference model: a hypothesis state machine.

Hypothesis drives the engine in-process (the broker is the in-memory ``Bell``) through random
interleavings of what can happen to runs in production: doorbells delivered in any order,
dropped or duplicated; a worker killed between a step's work and its checkpoint; a worker that
stalls past its lease and wakes up to find its work taken over; leases running out; the sweep;
cancel, restart (with or without a higher budget), fork; events, timers and review gates decided
or expiring. A small model of each run (its generation, whether it is over, what it was told)
predicts what the engine must show, and after every rule the invariants of docs/engine.md are
checked against the tables:

- the journal has no gap, and one live row per (position, branch);
- ``on_complete`` ran at most once per run end, and exactly once when the run is terminal;
- never two live leases on one piece of work, none on superseded rows or ended runs;
- the generation only grows (and equals the model's count of cancels and restarts);
- no step starts once the run's spent cost reached its cap, and the spent cost stays under the
  cap plus the steps that may be in flight; each attempt of a step runs at most once, and a
  step whose result was checkpointed never runs again.

A ``settle`` rule lets every worker finish and the sweep run until nothing moves: then every run
is ended (with the outcome the model predicts) or waits for something the model knows about.

Examples: ``SLUICE_STATEFUL_EXAMPLES`` (default 20, ``make test-long`` runs 300) of at most
``SLUICE_STATEFUL_STEPS`` rules (default 30).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from reviews.models import Gate
from reviews.services import GateClosedError, decide_gate, expire_due_gates
from tests.support import Bell
from workflows import (
    InvalidInputError,
    InvalidStateError,
    RetryPolicy,
    cancel,
    fork,
    restart,
    send_event,
    start,
    step,
    workflow,
)
from workflows.core import executor as executor_mod
from workflows.core.executor import advance, advance_many, claim_step, complete_step, execute_step
from workflows.core.leases import _held, _held_runs
from workflows.core.pools import RESERVED
from workflows.core.sweeper import fire_timers, sweep
from workflows.core.usage import current_step, record_usage
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("SLUICE_STATEFUL_EXAMPLES", "20"))
STEPS = int(os.environ.get("SLUICE_STATEFUL_STEPS", "30"))
SHRINK = os.environ.get("SLUICE_STATEFUL_SHRINK") != "0"

COST = Decimal("0.1")  # what each ``work`` step spends
SMALL_CAP = Decimal("0.15")  # room for the first step and one more, never two more
BIG_CAP = Decimal("10")
MAX_PARALLEL = 2
MAX_RUNS = 3
# Events that burn a step attempt (a crash, a stalled worker reclaimed) per example: below
# ``work``'s attempt budget, so a run never fails for attempts and the model can say which
# runs must succeed.
MAX_LOST_ATTEMPTS = 3

EVENT = {"go": 1}
EVENT_DEFAULT = {"timed_out": True}


class Crash(BaseException):
    """A worker killed between a step's work and its checkpoint (SIGKILL: no cleanup runs)."""


# What ran, seen from inside the steps and hooks (module state: the engine calls them).
# Each step attempt that ran: step id, attempt, run id, the run's cost and cap when it started.
EXECUTED: list[tuple[int | None, int, Any, Decimal, Decimal | None]] = []
ENDS: list[tuple[str, int, str]] = []  # on_complete as committed: run, generation, status
CRASH = {"armed": False}
BELL = Bell()  # the machine's broker: a fresh queue for each example
OWNERS = itertools.count()
STATS: Counter[str] = Counter()  # what the examples did, printed and checked at the end


def note(what: str) -> None:
    STATS[what] += 1


@step(retry=RetryPolicy(max_attempts=MAX_LOST_ATTEMPTS + 2, initial_backoff=0.01, jitter=False))
def work(tag: str) -> str:
    """Does the work (spends ``COST``), then dies before its checkpoint if a crash is armed."""
    scope = current_step()
    assert scope is not None
    spent = Run.objects.filter(pk=scope.run_id).values_list("cost", "max_cost").get()
    EXECUTED.append((scope.step_id, scope.attempt, scope.run_id, spent[0], spent[1]))
    record_usage(cost=COST, model="offline")
    if CRASH["armed"]:
        CRASH["armed"] = False
        raise Crash
    return tag


@workflow(name="proof.flow", max_parallel=MAX_PARALLEL)
def flow(
    ctx: Any, width: int = 0, sleep: bool = False, event: bool = False, gate: bool = False
) -> dict[str, Any]:
    first = ctx.run(work, "a")
    parts = ctx.map(work, [f"b{i}" for i in range(width)]) if width else []
    if sleep:
        ctx.sleep(timedelta(hours=1))
    ev = (
        ctx.wait_for_event("go", timeout=timedelta(hours=1), default=EVENT_DEFAULT)
        if event
        else None
    )
    outcome = (
        ctx.review("Proof gate", "Check it.", {"n": width}, timeout=timedelta(hours=1)).outcome
        if gate
        else None
    )
    last = ctx.run(work, "z")
    return {"first": first, "parts": parts, "event": ev, "gate": outcome, "last": last}


def on_done(run: Run) -> None:
    """The run's on_complete hook: counted only if the transaction that ran it commits."""
    key = (str(run.pk), run.generation, run.status)
    transaction.on_commit(lambda: ENDS.append(key))


@dataclass
class ModelRun:
    """What the model knows of one run."""

    pk: Any
    width: int
    sleep: bool
    event: bool
    gate: bool
    cap: Decimal | None
    generation: int = 1
    terminal: bool = False
    canceled: bool = False
    restarted: bool = False
    forked: bool = False  # reused journal rows cost it nothing: no budget prediction
    events_sent: int = 0
    gate_outcomes: set[str] = field(default_factory=set)

    def budget_fails(self) -> bool:
        """Under the small cap, the first step leaves room for exactly one more: a run with a
        fan-out (or its last step after one) stops with BudgetExceeded, one without succeeds."""
        return self.cap == SMALL_CAP and self.width >= 1


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        Run.objects.all().delete()
        BELL.messages.clear()
        EXECUTED.clear()
        ENDS.clear()
        CRASH["armed"] = False
        _held.clear()
        _held_runs.clear()
        self.runs: list[ModelRun] = []
        self.stalled: list[tuple[tuple[Any, ...], str, int]] = []  # complete_step args, owner, id
        self.lost_attempts = 0
        self.checkpointed: set[int] = set()
        self.seen_executions = 0
        self.generations: dict[str, int] = {}

    # --- helpers ---------------------------------------------------------------------------

    def _run(self, i: int) -> ModelRun:
        return self.runs[i % len(self.runs)]

    def _handle(self, message: tuple[str, Any]) -> None:
        kind, args = message
        if kind == "advance":
            advance(*args)
        elif kind == "advance_many":
            advance_many(*args)
        else:
            execute_step(*args)

    def _refresh(self, m: ModelRun) -> Run:
        run = Run.objects.get(pk=m.pk)
        if run.is_terminal and not m.terminal:
            m.terminal = True
        return run

    def _pending_branches(self) -> list[Step]:
        """Branches a worker could claim now: pending, or running in a slot reserved for them
        at fan-out (whose reservation has not run out)."""
        return list(
            Step.objects.filter(
                run_id__in=[m.pk for m in self.runs], superseded=False, branch__gte=0
            )
            .filter(
                Q(status="pending", held=False)
                | Q(status="running", lease_owner=RESERVED, lease_expires_at__gt=timezone.now())
            )
            .order_by("id")
        )

    # --- rules -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.runs) < MAX_RUNS)
    @rule(
        width=st.integers(0, 3),
        sleep=st.booleans(),
        event=st.booleans(),
        gate=st.booleans(),
        cap=st.sampled_from([None, SMALL_CAP, BIG_CAP]),
    )
    def start(self, width: int, sleep: bool, event: bool, gate: bool, cap: Decimal | None) -> None:
        run = start(
            "proof.flow",
            {"width": width, "sleep": sleep, "event": event, "gate": gate},
            on_complete=f"{__name__}.on_done",
            max_cost=cap,
        )
        self.runs.append(ModelRun(run.pk, width, sleep, event, gate, cap))
        note("rule: start")

    @precondition(lambda self: bool(BELL.messages))
    @rule(i=st.integers(0, 30))
    def deliver(self, i: int) -> None:
        """A worker takes any one doorbell (not necessarily the oldest) and handles it."""
        i %= len(BELL.messages)
        message = BELL.messages[i]
        del BELL.messages[i]
        self._handle(message)

    @precondition(lambda self: bool(BELL.messages))
    @rule(i=st.integers(0, 30))
    def duplicate(self, i: int) -> None:
        """A doorbell delivered twice (Celery is at-least-once): handle it, keep it queued."""
        self._handle(BELL.messages[i % len(BELL.messages)])

    @precondition(lambda self: bool(BELL.messages))
    @rule(i=st.integers(0, 30))
    def drop(self, i: int) -> None:
        """A lost doorbell (a flushed Redis): only the sweep can find the work again."""
        del BELL.messages[i % len(BELL.messages)]

    @precondition(lambda self: bool(BELL.messages) and self.lost_attempts < MAX_LOST_ATTEMPTS)
    @rule(i=st.integers(0, 30))
    def crash(self, i: int) -> None:
        """The worker handling a doorbell dies after its step's work, before the checkpoint:
        nothing is released (``let_go`` does not run, the heartbeat dies with it)."""
        i %= len(BELL.messages)
        message = BELL.messages[i]
        del BELL.messages[i]
        CRASH["armed"] = True
        saved = executor_mod.let_go
        executor_mod.let_go = lambda run, owner: None  # type: ignore[assignment]
        try:
            self._handle(message)
        except Crash:
            self.lost_attempts += 1
            note("a worker crashed before its checkpoint")
        finally:
            executor_mod.let_go = saved  # type: ignore[assignment]
            CRASH["armed"] = False
            _held.clear()
            _held_runs.clear()

    def _a_pending_branch(self, i: int) -> Step | None:
        """A pending branch; if there is none yet, a worker advances a run towards its fan-out
        (handles the oldest advance doorbell) and None is returned."""
        branches = self._pending_branches()
        if branches:
            return branches[i % len(branches)]
        for k, (kind, _) in enumerate(BELL.messages):
            if kind != "step":
                message = BELL.messages[k]
                del BELL.messages[k]
                self._handle(message)
                break
        return None

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30), crash=st.booleans())
    def finish_branch(self, i: int, crash: bool) -> None:
        """A worker runs one pending branch directly (out of order with its doorbell); with
        ``crash`` it dies after the branch's work, before recording it."""
        branch = self._a_pending_branch(i)
        if branch is None:
            return
        if not crash or self.lost_attempts >= MAX_LOST_ATTEMPTS:
            execute_step(branch.pk)
            note("rule: finish_branch")
            return
        CRASH["armed"] = True
        try:
            execute_step(branch.pk)
        except Crash:
            self.lost_attempts += 1
            note("a branch's worker crashed before its checkpoint")
        finally:
            CRASH["armed"] = False
            _held.clear()

    @precondition(lambda self: self.runs and self.lost_attempts < MAX_LOST_ATTEMPTS)
    @rule(i=st.integers(0, 30))
    def race_for_a_branch(self, i: int) -> None:
        """Worker A claims a branch, does its work and stalls past its lease; the sweep gives
        the branch to worker B, which records it; then A wakes and tries to record its result:
        it must change nothing (fenced on owner and attempt), and the group counts the branch
        once."""
        branch = self._a_pending_branch(i)
        if branch is None:
            return
        self.stall(0, branch)
        if not self.stalled:
            return
        self.wake_stalled(len(self.stalled) - 1, late=True)

    @precondition(lambda self: self.runs and self.lost_attempts < MAX_LOST_ATTEMPTS)
    @rule(i=st.integers(0, 30))
    def stall(self, i: int, branch: Step | None = None) -> None:
        """A worker claims a branch, does its work and stalls before recording it."""
        branch = branch or self._a_pending_branch(i)
        if branch is None:
            return
        owner = f"stalled:{next(OWNERS)}"
        row = claim_step(branch.pk, owner)
        if row is None:
            return
        captured: list[tuple[Any, ...]] = []
        saved = executor_mod.complete_step
        executor_mod.complete_step = lambda *a: captured.append(a)  # type: ignore[assignment]
        try:
            executor_mod._run_claimed(row, owner)
        finally:
            executor_mod.complete_step = saved  # type: ignore[assignment]
            _held.clear()
        self.stalled.append((captured[0], owner, row.pk))
        note("rule: stall")
        self.lost_attempts += 1

    @precondition(lambda self: self.stalled)
    @rule(i=st.integers(0, 30), late=st.booleans())
    def wake_stalled(self, i: int, late: bool = False) -> None:
        """The stalled worker wakes and records its result: it counts only if its claim still
        holds (same owner, same attempt); otherwise it must change nothing. ``late``: it
        stalled past its lease, the sweep reclaimed the step and another worker ran it."""
        args, owner, step_id = self.stalled.pop(i % len(self.stalled))
        if late:
            Step.objects.filter(pk=step_id, lease_owner=owner).update(
                lease_expires_at=timezone.now() - timedelta(seconds=1)
            )
            sweep()
            BELL.drain()
        before = Step.objects.get(pk=step_id)
        still_ours = (
            before.status == "running" and before.lease_owner == owner and not before.superseded
        )
        complete_step(*args)
        after = Step.objects.get(pk=step_id)
        note(f"stalled worker woke, claim {'held' if still_ours else 'lost'}")
        if not still_ours:
            assert (after.status, after.attempt, after.result, after.finished_at) == (
                before.status,
                before.attempt,
                before.result,
                before.finished_at,
            ), "a fenced-out worker changed a step it no longer held"

    @precondition(lambda self: self.runs)
    @rule()
    def expire_leases(self) -> None:
        """Time passes beyond every lease: as if every worker holding one had died."""
        past = timezone.now() - timedelta(seconds=1)
        ids = [m.pk for m in self.runs]
        Run.objects.filter(pk__in=ids).exclude(lease_owner="").update(lease_expires_at=past)
        Step.objects.filter(run_id__in=ids).exclude(lease_owner="").update(lease_expires_at=past)

    @rule()
    def sweep(self) -> None:
        """The sweep; after it, no work is left under a lease that ran out: each such branch
        is runnable again (or failed, its attempts spent), each such run is rung for."""
        now = timezone.now()
        sweep()
        ids = [m.pk for m in self.runs]
        dead_steps = Step.objects.filter(
            run_id__in=ids, superseded=False, status="running", lease_expires_at__lt=now
        ).filter(Q(branch__gte=0) | ~Q(run__status="running"))
        assert not dead_steps.exists(), f"the sweep left dead leases: {list(dead_steps)}"
        dead_runs = Run.objects.filter(pk__in=ids, status="running", lease_expires_at__lt=now)
        assert not dead_runs.exists(), "the sweep left a run under a dead lease"

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30))
    def cancel(self, i: int) -> None:
        m = self._run(i)
        try:
            cancel(m.pk, "the model says so")
        except InvalidStateError:
            assert self._refresh(m).is_terminal
            return
        m.generation += 1
        m.terminal = m.canceled = True
        note("rule: cancel")

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30), raise_cap=st.booleans())
    def restart(self, i: int, raise_cap: bool) -> None:
        m = self._run(i)
        try:
            restart(m.pk, max_cost=BIG_CAP if raise_cap and m.cap is not None else None)
        except InvalidStateError:
            assert not self._refresh(m).is_terminal
            return
        if raise_cap and m.cap is not None:
            m.cap = BIG_CAP
        m.generation += 1
        m.terminal = m.canceled = False
        m.restarted = True
        note("rule: restart")

    @precondition(lambda self: self.runs and len(self.runs) < MAX_RUNS)
    @rule(i=st.integers(0, 30), from_step=st.integers(1, 7))
    def fork(self, i: int, from_step: int) -> None:
        """``fork(run_id, from_step=N)``: a new run (generation 1) whose journal before N is
        the original's, finished rows only; held to every invariant like any other run. Its
        reused steps are checkpointed, so they must never run in the fork."""
        m = self._run(i)
        try:
            new = fork(m.pk, from_step=from_step)
        except InvalidInputError:
            note("rule: fork refused")
            return

        def journal(pk: Any) -> list[tuple[Any, ...]]:
            return list(
                Step.objects.filter(run_id=pk, superseded=False, position__lt=from_step)
                .order_by("position", "branch")
                .values_list("position", "branch", "kind", "name", "status", "result")
            )

        assert journal(new.pk) == journal(m.pk), "the fork does not hold the original's journal"
        assert (new.generation, new.status) == (1, "pending"), new
        self.runs.append(
            ModelRun(
                new.pk,
                m.width,
                m.sleep,
                m.event,
                m.gate,
                new.max_cost,
                forked=True,
                events_sent=m.events_sent,
            )
        )
        note("rule: fork")

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30))
    def send_event(self, i: int) -> None:
        m = self._run(i)
        try:
            send_event(m.pk, "go", EVENT)
        except InvalidStateError:
            assert self._refresh(m).is_terminal
            return
        m.events_sent += 1
        note("rule: send_event")

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30))
    def fire_timer(self, i: int) -> None:
        """The hour of a sleep or an event wait passes (gates have their own deadline)."""
        due = list(
            Step.objects.filter(
                run_id__in=[m.pk for m in self.runs],
                superseded=False,
                status="waiting",
                kind__in=["sleep", "event"],
            ).order_by("id")
        )
        if not due:
            return
        row = due[i % len(due)]
        now = timezone.now()
        Step.objects.filter(pk=row.pk).update(wake_at=now - timedelta(seconds=1))
        assert fire_timers(now) >= 1
        note(f"rule: fire_timer ({row.kind})")

    def _open_gates(self) -> list[Gate]:
        return list(Gate.objects.filter(run_id__in=[m.pk for m in self.runs], status="open"))

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30), outcome=st.sampled_from(["approve", "reject"]))
    def decide_gate(self, i: int, outcome: str) -> None:
        gates = self._open_gates()
        if not gates:
            return
        gate = gates[i % len(gates)]
        try:
            decide_gate(gate.pk, outcome=outcome, actor="proof", user=None)
        except GateClosedError:
            return
        note("rule: decide_gate")

    @precondition(lambda self: self.runs)
    @rule(i=st.integers(0, 30))
    def expire_gate(self, i: int) -> None:
        gates = self._open_gates()
        if not gates:
            return
        gate = gates[i % len(gates)]
        Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=1))
        assert expire_due_gates() == 1
        note("rule: expire_gate")

    @precondition(lambda self: self.runs)
    @rule()
    def settle(self) -> None:
        """Every stalled worker wakes, every lease runs out, workers and the sweep run until
        nothing moves. Then each run is over, as the model predicts, or waits for a timer, an
        event or a gate: nothing is stuck."""
        while self.stalled:
            self.wake_stalled(0)
        for _ in range(30):
            self.expire_leases()
            BELL.drain()
            # Retry backoff (10 ms) must have passed before the sweep looks for it.
            Step.objects.filter(status="retrying").update(
                wake_at=timezone.now() - timedelta(seconds=1)
            )
            sweep()
            if not BELL.messages:
                break
        assert not BELL.messages, "the engine did not come to rest"
        for m in self.runs:
            self._check_settled(m)

    @precondition(lambda self: self.runs)
    @rule(
        i=st.integers(0, 30),
        outcome=st.sampled_from(["approve", "reject"]),
        answer=st.booleans(),
    )
    def conclude(self, i: int, outcome: str, answer: bool) -> None:
        """Settle, then give one run whatever it waits for (its event, its timer's hour, its
        gate's decision or deadline), until it is over: it must end as the model predicts.
        ``answer``: the event and the decision come, rather than their deadlines."""
        m = self._run(i)
        for _turn in range(8):
            self.settle()
            if self._refresh(m).is_terminal:
                return
            waiting = Step.objects.get(run_id=m.pk, superseded=False, status="waiting")
            if waiting.kind == "event" and answer:
                send_event(m.pk, "go", EVENT)
                m.events_sent += 1
            elif waiting.kind == "gate":
                gate = Gate.objects.get(step=waiting, status="open")
                if answer:
                    decide_gate(gate.pk, outcome=outcome, actor="proof", user=None)
                    note("rule: decide_gate")
                else:
                    # Past on the engine's clock (the database's), which the expiry reads:
                    # the host's ``now`` may be a fraction of a millisecond ahead of it.
                    Gate.objects.filter(pk=gate.pk).update(
                        deadline=timezone.now() - timedelta(seconds=1)
                    )
                    assert expire_due_gates() == 1
                    note("rule: expire_gate")
            else:
                Step.objects.filter(pk=waiting.pk).update(wake_at=timezone.now())
                assert fire_timers(timezone.now()) == 1
                note(f"rule: fire_timer ({waiting.kind})")
        raise AssertionError(f"run {m} never ended")

    def _check_settled(self, m: ModelRun) -> None:
        run = self._refresh(m)
        label = f"run {m} ({run.status}: {run.error})"
        note(f"settled: {run.status}")
        if m.canceled:
            assert run.status == "canceled", label
            return
        if run.status == "failed":
            # Only the budget may stop a run here (attempts are never exhausted).
            assert m.cap is not None and m.cap == SMALL_CAP, label
            assert (run.error or {}).get("type") == "BudgetExceeded", label
            return
        if run.status == "succeeded":
            if not (m.restarted or m.forked):
                assert not m.budget_fails(), f"{label}: should have stopped on its budget"
            out = dict(run.output or {})
            assert out["first"] == "a" and out["last"] == "z", label
            assert out["parts"] == [f"b{k}" for k in range(m.width)], label
            if m.event:
                assert out["event"] in (EVENT, EVENT_DEFAULT), label
                assert out["event"] == EVENT_DEFAULT or m.events_sent > 0, label
            if m.gate:
                assert out["gate"] in ("approve", "reject"), label
            return
        # Not over: it must wait for something only the outside world (or time) can bring.
        assert run.status == "suspended", label
        live = Step.objects.filter(run_id=m.pk, superseded=False)
        waits = set(live.filter(status="waiting").values_list("kind", flat=True))
        assert waits and waits <= {"sleep", "event", "gate"}, f"{label} is stuck: {waits}"
        assert not live.filter(status__in=["pending", "running", "retrying"]).exists(), label

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        """All of them, after every rule, from one read of the runs and one of their journals
        (the examples must stay cheap enough for ``make test`` on both backends)."""
        if not self.runs:
            return
        now = timezone.now()
        runs = {str(r.pk): r for r in Run.objects.filter(pk__in=[m.pk for m in self.runs])}
        steps: dict[str, list[Step]] = {pk: [] for pk in runs}
        for row in Step.objects.filter(run_id__in=list(runs)).defer("args", "result"):
            steps[str(row.run_id)].append(row)
        for m in self.runs:
            run, rows = runs[str(m.pk)], steps[str(m.pk)]
            self.journal_has_no_gap(m, rows)
            self.on_complete_once_per_end(m, run)
            self.never_two_live_leases(m, run, rows, now)
            self.generation_only_grows(m, run)
            self.budget_holds(m, run)
        self.attempts_run_once(steps)

    def journal_has_no_gap(self, m: ModelRun, rows: list[Step]) -> None:
        places = [(r.position, r.branch) for r in rows if not r.superseded]
        assert len(places) == len(set(places)), f"two live rows at one place in {m.pk}: {places}"
        positions = sorted(p for p, b in places if b < 0)
        assert positions == list(range(1, len(positions) + 1)), f"gap in {m.pk}: {positions}"
        assert all(p in positions for p, b in places if b >= 0), f"orphan branch in {m.pk}"
        # A waiting fan-out counts its unfinished branches exactly (each finish counted once).
        for group in rows:
            if group.superseded or group.branch >= 0 or group.status != "waiting":
                continue
            if group.kind != "parallel":
                continue
            open_branches = [
                r
                for r in rows
                if not r.superseded
                and r.position == group.position
                and r.branch >= 0
                and r.status not in ("succeeded", "failed")
            ]
            assert group.remaining == len(open_branches), (
                f"group at {group.position} of {m.pk} counts {group.remaining} branches to go, "
                f"{len(open_branches)} are unfinished"
            )

    def on_complete_once_per_end(self, m: ModelRun, run: Run) -> None:
        assert len(ENDS) == len(set(ENDS)), f"on_complete ran twice: {ENDS}"
        mine = [(gen, status) for pk, gen, status in ENDS if pk == str(m.pk)]
        ends = dict(mine)
        assert len(ends) == len(mine), f"run {m.pk} ended twice in one generation: {mine}"
        if run.is_terminal:
            assert ends.get(run.generation) == run.status, (m, run.status, mine)
        else:
            assert run.generation not in ends, (m, run.status, mine)

    def never_two_live_leases(self, m: ModelRun, run: Run, rows: list[Step], now: Any) -> None:
        live = [
            r for r in rows if r.lease_owner and r.lease_expires_at and r.lease_expires_at > now
        ]
        places = [(r.position, r.branch) for r in live]
        assert len(places) == len(set(places)), f"two live leases in {m.pk}: {live}"
        assert not any(r.superseded for r in live), f"a superseded row holds a lease: {live}"
        assert all(r.status == "running" for r in live), f"a lease on a step not running: {live}"
        if run.is_terminal:
            assert not live and not run.lease_owner, f"an ended run holds leases: {live}"

    def generation_only_grows(self, m: ModelRun, run: Run) -> None:
        assert run.generation >= self.generations.get(str(m.pk), 1), "the generation went back"
        assert run.generation == m.generation, (
            f"generation {run.generation}, the model counted {m.generation}"
        )
        self.generations[str(m.pk)] = run.generation

    def budget_holds(self, m: ModelRun, run: Run) -> None:
        if run.max_cost is not None:
            # Branches in flight when the cap was crossed may finish: at most max_parallel.
            assert run.cost <= run.max_cost + COST * MAX_PARALLEL, (m, run.cost)

    def attempts_run_once(self, steps: dict[str, list[Step]]) -> None:
        new = EXECUTED[self.seen_executions :]
        self.seen_executions = len(EXECUTED)
        attempts = [(step_id, attempt) for step_id, attempt, *_ in EXECUTED]
        assert len(attempts) == len(set(attempts)), "one attempt of a step ran twice"
        for step_id, _attempt, _run, spent, cap in new:
            assert step_id not in self.checkpointed, f"checkpointed step {step_id} ran again"
            assert cap is None or spent < cap, f"a step started with ${spent} spent of ${cap}"
        self.checkpointed |= {
            r.pk
            for rows in steps.values()
            for r in rows
            if r.kind == "step" and r.status == "succeeded"
        }


def test_the_engine_agrees_with_its_model(bell: Bell, monkeypatch: pytest.MonkeyPatch) -> None:
    STATS.clear()
    # The machine's own Bell, so that each example starts with an empty queue.
    for name in ("send_advance", "send_step", "send_steps", "send_batches", "send_advance_many"):
        monkeypatch.setattr(f"workflows.core.doorbell.{name}", getattr(BELL, name))
    # Each doorbell is handled by a fresh worker (its own lease owner), and no heartbeat renews
    # leases behind the model's back: leases run out only when the model says time passed.
    monkeypatch.setattr(executor_mod, "owner_id", lambda: f"worker:{next(OWNERS)}")
    monkeypatch.setattr(executor_mod, "ensure_heartbeat", lambda: None)
    with override_settings(SLUICE_DOORBELL_GRACE_SECONDS=0):
        run_state_machine_as_test(
            EngineMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=os.environ.get("SLUICE_STATEFUL_RANDOM") != "1",
                database=None,
                # SLUICE_STATEFUL_SHRINK=0: report the first failing sequence as found (fast).
                phases=[p for p in Phase if p != Phase.shrink or SHRINK],
            ),
        )
    print("stateful examples:", EXAMPLES, "of up to", STEPS, "rules;", dict(sorted(STATS.items())))
    if EXAMPLES >= 100:
        # The examples must have reached the interesting places, or they prove nothing.
        for what in (
            "a worker crashed before its checkpoint",
            "stalled worker woke, claim lost",
            "rule: cancel",
            "rule: restart",
            "rule: decide_gate",
            "rule: expire_gate",
            "rule: fire_timer (sleep)",
            "settled: succeeded",
            "settled: failed",
        ):
            assert STATS[what], f"no example reached {what!r}: {dict(STATS)}"
