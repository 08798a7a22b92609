"""Races on real concurrent PostgreSQL connections: exactly one decision wins, every time.

Each contender runs in its own thread with its own database connection; a barrier releases
them together. Each race is repeated many times, because a race that passes once proves little.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone

from reviews.models import Gate, GateApproval, GateEvent
from reviews.services import (
    GateClaimedError,
    GateClosedError,
    claim_gate,
    decide_gate,
    escalate_due_gates,
    expire_due_gates,
    reassign_gate,
)
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import cancel, get_run
from workflows.models import Step

pytestmark = [pytest.mark.django_db(transaction=True)]

ROUNDS = 50


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row-level races need PostgreSQL (SQLite serializes every writer)")


def contend(*contenders: Callable[[], Any]) -> list[Any]:
    """Run the callables at the same moment, each on its own connection; return what each
    returned or raised."""
    barrier = threading.Barrier(len(contenders))
    results: list[Any] = [None] * len(contenders)

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = fn()
        except Exception as exc:  # The loser's error is the result we check.
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def assert_one_decision(gate: Gate, bell: Bell) -> Gate:
    gate.refresh_from_db()
    closing = GateEvent.objects.filter(gate=gate, kind__in=["decided", "expired", "canceled"])
    assert closing.count() == 1, list(closing.values_list("kind", "actor"))
    step = Step.objects.get(pk=gate.step_id)
    assert step.status == "succeeded"
    assert step.result["outcome"] == gate.outcome
    bell.drain()
    run = get_run(gate.run_id)
    assert run.status == "succeeded"
    assert run.output["outcome"] == gate.outcome
    assert run.output["decided_by"] == gate.decided_by
    return gate


def test_it_lets_exactly_one_of_decide_and_expire_win(bell: Bell, people: People) -> None:
    wins = {"decided": 0, "expired": 0}
    for _ in range(ROUNDS):
        gate = open_gate(bell, on_timeout="approve")
        Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=1))
        decision, expired = contend(
            lambda g=gate: decide_gate(
                g.pk, outcome="reject", comment="no", actor="ana", user=people.ana
            ),
            lambda: expire_due_gates(),
        )
        gate = assert_one_decision(gate, bell)
        wins[gate.status] += 1
        if gate.status == "decided":
            assert isinstance(decision, Gate) and expired == 0
            assert (gate.outcome, gate.decided_by, gate.timed_out) == ("reject", "ana", False)
        else:
            assert expired == 1
            assert isinstance(decision, GateClosedError)
            assert "expired at" in str(decision) and "auto-advanced with approve" in str(decision)
            assert (gate.outcome, gate.decided_by, gate.timed_out) == ("approve", "", True)
    assert sum(wins.values()) == ROUNDS


def test_it_lets_exactly_one_of_two_reviewers_win(bell: Bell, people: People) -> None:
    for _ in range(ROUNDS):
        gate = open_gate(bell)
        a, b = contend(
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ana", user=people.ana),
            lambda g=gate: decide_gate(g.pk, outcome="reject", actor="ben", user=people.ben),
        )
        gate = assert_one_decision(gate, bell)
        winner, loser = (a, b) if isinstance(a, Gate) else (b, a)
        assert isinstance(winner, Gate) and isinstance(loser, GateClosedError)
        assert gate.decided_by in ("ana", "ben")
        assert str(loser).startswith(f"already decided by {gate.decided_by} at ")


def test_it_lets_exactly_one_of_decide_and_cancel_win(bell: Bell, people: People) -> None:
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell)
        decision, canceled = contend(
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ana", user=people.ana),
            lambda g=gate: cancel(g.run_id),
        )
        gate.refresh_from_db()
        closing = GateEvent.objects.filter(gate=gate, kind__in=["decided", "expired", "canceled"])
        assert closing.count() == 1
        run = get_run(gate.run_id)
        if gate.status == "canceled":
            assert isinstance(decision, GateClosedError) or run.status == "canceled"
            assert run.status == "canceled"
        else:
            # The decision committed first; the cancel then ended the run with the gate closed.
            assert gate.status == "decided" and isinstance(decision, Gate)
            assert run.status in ("canceled", "suspended", "succeeded")


def test_two_sweeps_at_once_expire_each_gate_once(bell: Bell) -> None:
    gates = [open_gate(bell) for _ in range(40)]
    Gate.objects.update(deadline=timezone.now() - timedelta(seconds=1))
    a, b = contend(lambda: expire_due_gates(batch=7), lambda: expire_due_gates(batch=7))
    assert a + b == 40
    assert GateEvent.objects.filter(kind="expired").count() == 40
    bell.drain()
    for gate in gates:
        assert get_run(gate.run_id).output["timed_out"] is True


# --- four eyes, escalation -----------------------------------------------------------------------


def test_two_approvers_at_once_close_a_two_approval_gate_exactly_once(
    bell: Bell, people: People
) -> None:
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell, approvals=2)
        a, b = contend(
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ana", user=people.ana),
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ben", user=people.ben),
        )
        assert isinstance(a, Gate) and isinstance(b, Gate)  # Neither approval is lost.
        gate = assert_one_decision(gate, bell)
        assert gate.outcome == "approve"
        assert sorted(gate.decided_by.split(", ")) == ["ana", "ben"]
        assert GateEvent.objects.filter(gate=gate, kind="approved").count() == 1
        assert sorted(get_run(gate.run_id).output["approvals"]) == ["ana", "ben"]


def test_the_same_approver_twice_at_once_counts_once(bell: Bell, people: People) -> None:
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell, approvals=2)
        a, b = contend(
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ana", user=people.ana),
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ana", user=people.ana),
        )
        assert isinstance(a, Gate) and isinstance(b, Gate)
        gate.refresh_from_db()
        assert gate.status == "open"
        assert GateApproval.objects.filter(gate=gate).count() == 1
        assert GateEvent.objects.filter(gate=gate, kind="approved").count() == 1
        assert Step.objects.get(pk=gate.step_id).status == "waiting"


def test_the_last_approval_and_a_rejection_at_once_close_the_gate_once(
    bell: Bell, people: People
) -> None:
    outcomes = set()
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell, approvals=2)
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
        approve, reject = contend(
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ben", user=people.ben),
            lambda g=gate: decide_gate(g.pk, outcome="reject", actor="sam", user=people.sam),
        )
        gate = assert_one_decision(gate, bell)
        outcomes.add(gate.outcome)
        if gate.outcome == "approve":
            assert isinstance(approve, Gate) and isinstance(reject, GateClosedError)
            assert gate.decided_by == "ana, ben"
        else:
            assert isinstance(reject, Gate) and isinstance(approve, GateClosedError)
            assert gate.decided_by == "sam"
    assert outcomes <= {"approve", "reject"}


def test_an_approval_and_expiry_at_once_close_a_four_eyes_gate_once(
    bell: Bell, people: People
) -> None:
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell, approvals=2, on_timeout="reject")
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
        Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=1))
        approve, expired = contend(
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ben", user=people.ben),
            lambda: expire_due_gates(),
        )
        gate = assert_one_decision(gate, bell)
        if gate.status == "expired":
            assert isinstance(approve, GateClosedError) and expired == 1
            event = GateEvent.objects.get(gate=gate, kind="expired")
            assert event.detail["approvals"] == ["ana"]
        else:
            assert isinstance(approve, Gate) and expired == 0
            assert gate.decided_by == "ana, ben"


def test_two_escalation_sweeps_at_once_escalate_each_gate_once(bell: Bell) -> None:
    gates = [open_gate(bell, escalate_after_s=60, escalate_to="leads") for _ in range(30)]
    Gate.objects.update(escalate_at=timezone.now() - timedelta(seconds=1))
    a, b = contend(lambda: escalate_due_gates(batch=100), lambda: escalate_due_gates(batch=100))
    assert a + b == 30
    assert GateEvent.objects.filter(kind="escalated").count() == 30
    assert (
        Gate.objects.filter(pk__in=[g.pk for g in gates], escalated_at__isnull=False).count() == 30
    )
    assert escalate_due_gates() == 0


def test_a_reassign_and_the_claimants_decision_at_once_never_both_take(
    bell: Bell, people: People
) -> None:
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell)
        claim_gate(gate.pk, people.ana)
        moved, decided = contend(
            lambda g=gate: reassign_gate(g.pk, people.ana, "ben"),
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ana", user=people.ana),
        )
        gate.refresh_from_db()
        reassigned = GateEvent.objects.filter(gate=gate, kind="reassigned").count()
        if gate.status == "decided":
            assert isinstance(decided, Gate) and isinstance(moved, GateClosedError)
            assert reassigned == 0 and gate.decided_by == "ana"
            assert_one_decision(gate, bell)
        else:
            assert isinstance(moved, Gate) and isinstance(decided, GateClaimedError)
            assert reassigned == 1 and gate.claimed_by == people.ben


# --- lock order: a run's writers against a sweep that notifies about it -----------------------


def _slow_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the window between a sweep updating a gate and writing the notification that
    refers to its run (its foreign key takes FOR KEY SHARE on the run's row)."""
    import reviews.notifications as notifications

    real = notifications._write

    def slow(*args: Any, **kwargs: Any) -> Any:
        import time

        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(notifications, "_write", slow)


def _after(seconds: float, fn: Callable[[], Any]) -> Callable[[], Any]:
    def later() -> Any:
        import time

        time.sleep(seconds)
        return fn()

    return later


@pytest.mark.parametrize("acting", ["decision", "cancel"])
def test_a_decision_or_cancel_during_a_reminder_sweep_does_not_deadlock(
    bell: Bell, people: People, monkeypatch: pytest.MonkeyPatch, acting: str
) -> None:
    """Found by review: a decision and a cancel locked the run FOR UPDATE, then the gate; the
    reminder sweep (and escalation, and a reassign) updated the gate, then wrote an outbox row
    whose foreign key waits on that lock. PostgreSQL killed one side: a 500 on the decision, a
    cancel that failed with the gate left open."""
    from reviews.notifications import remind_due

    for user in (people.ana, people.ben):
        user.email = f"{user.username}@example.com"
        user.save()
    gate = open_gate(bell)
    Gate.objects.filter(pk=gate.pk).update(remind_at=timezone.now() - timedelta(seconds=1))
    _slow_notifications(monkeypatch)
    act: Callable[[], Any] = (
        (lambda: decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben))
        if acting == "decision"
        else (lambda: cancel(gate.run_id))
    )
    reminded, done = contend(remind_due, _after(0.2, act))
    assert not isinstance(reminded, Exception), reminded
    assert not isinstance(done, Exception), done
    gate.refresh_from_db()
    assert gate.status == ("decided" if acting == "decision" else "canceled")


def test_a_reassign_racing_the_targets_approval_never_hands_them_a_gate_they_approved(
    bell: Bell, people: People
) -> None:
    """Found by review (31 of 60 rounds): the target's approval committed between the
    reassign's check of the approvers and its swap, so the target held the claim of a
    four-eyes gate they had approved, and no one else could approve it."""
    for _ in range(ROUNDS // 2):
        gate = open_gate(bell, approvals=2)
        contend(
            lambda g=gate: reassign_gate(g.pk, people.sam, "ben"),
            lambda g=gate: decide_gate(g.pk, outcome="approve", actor="ben", user=people.ben),
        )
        gate.refresh_from_db()
        approved = GateApproval.objects.filter(gate=gate, approver="ben").exists()
        assert not (approved and gate.claimed_by_id == people.ben.pk)


def test_the_same_approver_twice_at_once_is_told_the_second_did_not_count(
    bell: Bell, people: People
) -> None:
    """Two tabs of one reviewer approving a four-eyes gate at once: one approval counts, and
    with ``repeat_ok=False`` (the browser) the other is an ``AlreadyApprovedError``, so its
    comment is given back rather than dropped behind a success message."""
    from reviews.services import AlreadyApprovedError

    for _ in range(ROUNDS // 5):
        gate = open_gate(bell, approvals=2)
        results = contend(
            *[
                lambda g=gate, c=c: decide_gate(  # type: ignore[misc]
                    g.pk,
                    outcome="approve",
                    comment=c,
                    actor="ben",
                    user=people.ben,
                    repeat_ok=False,
                )
                for c in ("first tab", "second tab")
            ]
        )
        assert sorted(type(r).__name__ for r in results) == ["AlreadyApprovedError", "Gate"]
        assert any(isinstance(r, AlreadyApprovedError) for r in results)
        assert GateApproval.objects.filter(gate=gate, approver="ben").count() == 1
