"""Every transition of the gate lifecycle (docs/reviews.md): open → decided | expired |
canceled, with claims orthogonal; the decision the workflow gets back; the audit trail."""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reviews.models import Gate, GateEvent
from reviews.services import (
    GateClaimedError,
    GateClosedError,
    InvalidDecisionError,
    claim_gate,
    decide_gate,
    expire_due_gates,
    release_gate,
)
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import cancel, get_run, restart, start
from workflows.core import clock
from workflows.core.errors import InvalidInputError, InvalidStateError
from workflows.models import Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def kinds(gate: Gate) -> list[str]:
    return list(GateEvent.objects.filter(gate=gate).values_list("kind", flat=True))


def past_deadline(gate: Gate) -> None:
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=1))


# --- open ----------------------------------------------------------------------------------------


def test_it_opens_a_gate_and_suspends_the_run(bell: Bell) -> None:
    before = clock.now()  # the deadline is on the engine's clock (the database's)
    gate = open_gate(bell, timeout_s=7200, group="legal")
    run = get_run(gate.run_id)
    step = Step.objects.get(pk=gate.step_id)
    assert run.status == "suspended"
    assert (step.kind, step.name, step.status) == ("gate", gate.title, "waiting")
    assert gate.status == "open" and gate.group == "legal" and gate.pipeline == "test.review"
    assert gate.choices == ["approve", "reject"] and gate.on_timeout == "approve"
    assert before + timedelta(seconds=7190) < gate.deadline <= clock.now() + timedelta(hours=2)
    assert gate.payload["analyses"][0]["title"] == "Renewal clause"
    assert kinds(gate) == ["opened"]


def test_it_fails_the_run_when_on_timeout_is_not_a_choice(bell: Bell) -> None:
    run = start("test.review_bad_timeout", {})
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert "on_timeout 'maybe' is not one of the choices" in run.error["message"]
    assert not Gate.objects.exists()


# --- decided -------------------------------------------------------------------------------------


def test_it_resumes_the_run_with_the_decision(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    decided = decide_gate(
        gate.pk, outcome="reject", comment="  Wrong clause. ", actor="ana", user=people.ana
    )
    assert (decided.status, decided.outcome) == ("decided", "reject")
    assert decided.comment == "Wrong clause."
    assert decided.decided_by == "ana" and decided.decided_by_user == people.ana
    bell.drain()
    run = get_run(gate.run_id)
    assert run.status == "succeeded"
    assert run.output["outcome"] == "reject"
    assert run.output["comment"] == "Wrong clause."
    assert run.output["decided_by"] == "ana"
    assert run.output["timed_out"] is False
    assert run.output["decided_at"] == decided.decided_at.isoformat()
    assert kinds(gate) == ["opened", "decided"]


def test_it_accepts_a_service_decision_without_a_user(bell: Bell) -> None:
    gate = open_gate(bell)
    decide_gate(gate.pk, outcome="approve", actor="api:sk_live_ab")
    bell.drain()
    assert get_run(gate.run_id).output["decided_by"] == "api:sk_live_ab"


def test_it_refuses_an_outcome_that_is_not_a_choice(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    with pytest.raises(InvalidDecisionError) as exc:
        decide_gate(gate.pk, outcome="maybe", actor="ana", user=people.ana)
    assert isinstance(exc.value, InvalidInputError)
    assert exc.value.errors[0]["field"] == "outcome"
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_it_validates_edits_against_a_json_schema(bell: Bell, people: People) -> None:
    from tests.reviews.workflows import SENTIMENT_FIELDS

    gate = open_gate(bell, fields=SENTIMENT_FIELDS, payload={"sentiment": "positive", "score": 0.9})
    with pytest.raises(InvalidDecisionError) as exc:
        decide_gate(
            gate.pk,
            outcome="approve",
            edits={"sentiment": "angry", "score": 1.5},
            actor="ana",
            user=people.ana,
        )
    fields = {e["field"] for e in exc.value.errors}
    assert fields == {"sentiment", "score"}
    decide_gate(
        gate.pk,
        outcome="approve",
        edits={"sentiment": "neutral", "score": "0.4"},
        actor="ana",
        user=people.ana,
    )
    bell.drain()
    assert get_run(gate.run_id).output["edits"] == {
        "sentiment": "neutral",
        "score": 0.4,
        "notes": None,
    }


def test_it_returns_edits_as_the_pydantic_model_given_as_fields(bell: Bell, people: People) -> None:
    gate = open_gate(bell, "test.review_model")
    sentiment = gate.fields_schema["properties"]["sentiment"]
    assert sentiment["enum"] == ["positive", "neutral", "negative"]
    with pytest.raises(InvalidDecisionError):
        decide_gate(
            gate.pk,
            outcome="approve",
            edits={"sentiment": "positive", "score": 2},
            actor="ana",
            user=people.ana,
        )
    decide_gate(
        gate.pk,
        outcome="approve",
        edits={"sentiment": "negative", "score": 0.2},
        actor="ana",
        user=people.ana,
    )
    bell.drain()
    assert get_run(gate.run_id).output == {
        "type": "Correction",
        "edits": {"sentiment": "negative", "score": 0.2},
    }


def test_it_refuses_edits_on_a_gate_without_fields(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    with pytest.raises(InvalidDecisionError):
        decide_gate(gate.pk, outcome="approve", edits={"x": 1}, actor="ana", user=people.ana)


def test_it_tells_the_second_decider_who_decided_first(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    with pytest.raises(GateClosedError) as exc:
        decide_gate(gate.pk, outcome="reject", actor="ben", user=people.ben)
    at = timezone.localtime(Gate.objects.get(pk=gate.pk).decided_at).strftime("%H:%M")
    assert str(exc.value) == f"already decided by ana at {at} (approve)"
    assert isinstance(exc.value, InvalidStateError)
    assert kinds(gate) == ["opened", "decided"]


# --- expired -------------------------------------------------------------------------------------


def test_it_expires_a_due_gate_with_its_default_and_resumes_the_run(bell: Bell) -> None:
    gate = open_gate(bell, on_timeout="reject")
    assert expire_due_gates() == 0
    past_deadline(gate)
    assert expire_due_gates() == 1
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.decided_by, gate.timed_out) == (
        "expired",
        "reject",
        "",
        True,
    )
    bell.drain()
    run = get_run(gate.run_id)
    assert run.status == "succeeded"
    assert run.output["outcome"] == "reject" and run.output["timed_out"] is True
    assert run.output["decided_by"] == ""
    assert Step.objects.get(pk=gate.step_id).usage == {"timed_out": True}
    assert kinds(gate) == ["opened", "expired"]
    assert expire_due_gates() == 0  # idempotent


def test_it_tells_a_late_decider_the_gate_expired(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    past_deadline(gate)
    expire_due_gates()
    gate.refresh_from_db()
    with pytest.raises(GateClosedError) as exc:
        decide_gate(gate.pk, outcome="reject", actor="ana", user=people.ana)
    at = timezone.localtime(gate.deadline).strftime("%H:%M")
    assert str(exc.value) == f"this gate expired at {at} and auto-advanced with approve"


def test_it_expires_in_batches_with_each_gates_own_default(bell: Bell) -> None:
    gates = [open_gate(bell, on_timeout="approve" if i % 2 else "reject") for i in range(7)]
    later = open_gate(bell)
    Gate.objects.exclude(pk=later.pk).update(deadline=timezone.now() - timedelta(minutes=1))
    assert expire_due_gates(batch=3) == 7
    bell.drain()
    for gate in gates:
        gate.refresh_from_db()
        assert gate.status == "expired"
        assert get_run(gate.run_id).output["outcome"] == gate.on_timeout
    assert Gate.objects.get(pk=later.pk).status == "open"


def test_an_expiry_batch_costs_the_same_statements_for_3_gates_or_12(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set-based expiry: closing, resolving and auditing a batch is a fixed number of
    statements (on PostgreSQL the gates close in one ``UPDATE … RETURNING``), never one per
    gate. The audit trail and the journal say the same as one gate expiring alone."""
    monkeypatch.setattr("reviews.services.send_resume_chunks", lambda chunks: None)
    counted = []
    for n in (3, 12):
        gates = [open_gate(bell, on_timeout="approve" if i % 3 else "reject") for i in range(n)]
        Gate.objects.filter(pk__in=[g.pk for g in gates]).update(
            deadline=timezone.now() - timedelta(seconds=1)
        )
        with CaptureQueriesContext(connection) as queries:
            assert expire_due_gates() == n
        counted.append(len(queries))
        for gate in gates:
            gate.refresh_from_db()
            assert (gate.status, gate.outcome, gate.timed_out) == ("expired", gate.on_timeout, True)
            assert (gate.decided_by, gate.decided_at is not None) == ("", True)
            assert kinds(gate) == ["opened", "expired"]
            event = GateEvent.objects.get(gate=gate, kind="expired")
            assert (event.actor, event.detail) == ("", {"outcome": gate.on_timeout})
            step = Step.objects.get(pk=gate.step_id)
            assert (step.status, step.usage) == ("succeeded", {"timed_out": True})
            assert step.result["outcome"] == gate.on_timeout and step.result["timed_out"]
    assert counted[0] == counted[1]


def test_a_burst_of_expired_gates_resumes_its_runs_in_chunks(
    bell: Bell, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reviews.tasks import resume_runs

    settings.SLUICE_GATE_RESUME_CHUNK = 4
    gates = [open_gate(bell) for _ in range(10)]
    chunks: list[list[Any]] = []
    monkeypatch.setattr("reviews.services.send_resume_chunks", chunks.extend)
    Gate.objects.update(deadline=timezone.now() - timedelta(seconds=1))
    assert expire_due_gates() == 10
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert bell.messages == deque()  # no single doorbells for a burst
    for chunk in chunks:
        assert resume_runs(chunk) == len(chunk)
    for gate in gates:
        assert get_run(gate.run_id).status == "succeeded"
    # A chunk delivered twice (a redelivered message) changes nothing: the engine's own
    # compare-and-swap on the run lease skips finished runs.
    assert resume_runs(chunks[0]) == 0  # nothing taken, nothing advanced


def test_a_burst_rings_one_resume_message_per_chunk_that_resumes_its_runs(
    bell: Bell, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks leave as raw task messages (``send_tasks``, one round trip for the burst);
    their arguments, after the JSON a message carries, resume exactly their runs."""
    import json

    from reviews.services import RESUME_RUNS
    from reviews.tasks import resume_runs

    settings.SLUICE_GATE_RESUME_CHUNK = 3
    gates = [open_gate(bell) for _ in range(7)]
    sent: list[list[tuple[str, list[Any], str]]] = []
    monkeypatch.setattr("reviews.services.send_tasks", sent.append)
    Gate.objects.update(deadline=timezone.now() - timedelta(seconds=1))
    assert expire_due_gates() == 7
    assert len(sent) == 1  # one call for the whole burst
    messages = sent[0]
    assert [(name, queue) for name, _, queue in messages] == [(RESUME_RUNS, "default")] * 3
    carried = [json.loads(json.dumps(args)) for _, args, _ in messages]
    assert [len(args[0]) for args in carried] == [3, 3, 1]
    resumed = {run_id for args in carried for run_id, _ in args[0]}
    assert resumed == {str(gate.run_id) for gate in gates}
    assert sum(resume_runs(*args) for args in carried) == 7
    for gate in gates:
        assert get_run(gate.run_id).status == "succeeded"


def test_a_broker_failure_while_ringing_a_burst_loses_no_run(
    bell: Bell, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume messages fail to send: the gates stay expired, every run stays marked
    runnable, and the engine's sweep rings for them."""
    from workflows.core.sweeper import ring_lost

    def fail(messages: Any) -> None:
        raise ConnectionError("broker down")

    settings.SLUICE_GATE_RESUME_CHUNK = 2
    gates = [open_gate(bell) for _ in range(4)]
    monkeypatch.setattr("reviews.services.send_tasks", fail)
    Gate.objects.update(deadline=timezone.now() - timedelta(seconds=1))
    assert expire_due_gates() == 4
    assert Gate.objects.filter(status="expired").count() == 4
    assert not bell.messages
    later = timezone.now() + timedelta(seconds=settings.SLUICE_DOORBELL_GRACE_SECONDS + 1)
    assert ring_lost(later) == 4
    bell.drain()
    for gate in gates:
        assert get_run(gate.run_id).status == "succeeded"


def test_the_beat_task_has_the_scheduled_name(bell: Bell) -> None:
    from django.conf import settings

    from reviews.tasks import expire_gates

    gate = open_gate(bell)
    past_deadline(gate)
    scheduled = {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert expire_gates.name == "reviews.expire_gates" and expire_gates.name in scheduled
    assert expire_gates() == 1


# --- canceled ------------------------------------------------------------------------------------


def test_it_cancels_the_open_gates_of_a_canceled_run(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    cancel(gate.run_id)
    gate.refresh_from_db()
    assert gate.status == "canceled"
    assert kinds(gate) == ["opened", "canceled"]
    with pytest.raises(GateClosedError, match="canceled"):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    past_deadline(gate)
    assert expire_due_gates() == 0


def test_a_restarted_run_opens_a_new_gate_that_shows_the_earlier_one(bell: Bell) -> None:
    gate = open_gate(bell)
    cancel(gate.run_id)
    restart(gate.run_id)
    bell.drain()
    again = Gate.objects.get(run_id=gate.run_id, status="open")
    assert again.pk != gate.pk and again.attempt == 2


def test_a_decision_that_can_no_longer_reach_its_run_cancels_the_gate(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    # The journal row stopped waiting without the gate hearing of it (a repair by hand, say).
    Step.objects.filter(pk=gate.step_id).update(superseded=True)
    with pytest.raises(GateClosedError, match="canceled"):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.decided_by) == ("canceled", "", "")
    assert kinds(gate) == ["opened", "canceled"]


# --- claims (orthogonal to the status) ---------------------------------------------------------


def test_it_claims_and_releases(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    assert claim_gate(gate.pk, people.ana).claimed_by == people.ana
    assert claim_gate(gate.pk, people.ana).claimed_by == people.ana  # no-op, no second event
    with pytest.raises(GateClaimedError, match="claimed by ana"):
        claim_gate(gate.pk, people.ben)
    with pytest.raises(GateClaimedError):
        release_gate(gate.pk, people.ben)
    assert release_gate(gate.pk, people.ana).claimed_by is None
    assert claim_gate(gate.pk, people.ben).claimed_by == people.ben
    assert kinds(gate) == ["opened", "claimed", "released", "claimed"]
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_only_the_claim_holder_or_staff_decides_a_claimed_gate(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    with pytest.raises(GateClaimedError, match="only ana"):
        decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    decide_gate(gate.pk, outcome="reject", actor="sam", user=people.sam)
    assert Gate.objects.get(pk=gate.pk).decided_by == "sam"


def test_staff_can_release_someone_elses_claim(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    release_gate(gate.pk, people.sam)
    event = GateEvent.objects.filter(gate=gate).last()
    assert (event.kind, event.actor, event.detail) == ("released", "sam", {"holder": "ana"})


def test_a_claimed_gate_still_expires(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    past_deadline(gate)
    assert expire_due_gates() == 1
    with pytest.raises(GateClosedError):
        claim_gate(gate.pk, people.ben)
    with pytest.raises(GateClosedError):
        release_gate(gate.pk, people.ana)


# --- looping back ------------------------------------------------------------------------------


def test_a_run_that_loops_back_opens_numbered_attempts(bell: Bell, people: People) -> None:
    run = start("test.review_loop", {})
    bell.drain()
    first = Gate.objects.get(run=run, status="open")
    decide_gate(first.pk, outcome="reject", comment="Too vague", actor="ana", user=people.ana)
    bell.drain()
    second = Gate.objects.get(run=run, status="open")
    assert (first.attempt, second.attempt, second.title) == (1, 2, first.title)
    assert second.payload["summary"] == "Draft number 2"
    decide_gate(second.pk, outcome="approve", actor="ana", user=people.ana)
    bell.drain()
    assert get_run(run.pk).output == {"rounds": 2, "published": "published: Draft number 2"}


def test_a_gates_trail_is_stamped_on_the_engines_clock(bell: Bell, people: Any, skew: Any) -> None:
    """ "Opened" is stamped on the engine's clock (the step's start): a claim on a host whose
    clock is behind was stamped before it, and the trail, ordered by time, read "claimed"
    before "opened" (found by review)."""
    from reviews.models import GateEvent
    from reviews.services import claim_gate

    skew(-600)
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    trail = list(
        GateEvent.objects.filter(gate=gate).order_by("at", "id").values_list("kind", flat=True)
    )
    assert trail[:2] == ["opened", "claimed"], trail
