"""The run audit trail: cancel and restart through the services record who and why, in the
transaction of the action; a refused action records nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import cancel, get_run, restart, start
from workflows.core.audit import Actor
from workflows.core.errors import InvalidInputError, InvalidStateError
from workflows.models import Run, RunAudit

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_records_who_canceled_a_run_and_why(bell: Bell) -> None:
    ops = User.objects.create_user("ops", is_staff=True)
    run = start(samples.waiter, {})
    bell.drain()
    run = cancel(run.pk, "customer withdrew the ticket", actor=Actor.of_user(ops))
    assert run.error["message"] == "canceled by user:ops: customer withdrew the ticket"
    (entry,) = RunAudit.objects.filter(run=run)
    assert entry.action == "cancel" and entry.generation == 1
    assert entry.actor == "user:ops" and entry.actor_user == ops and entry.api_key is None
    assert entry.reason == "customer withdrew the ticket"


def test_it_records_restarts_with_their_position(bell: Bell) -> None:
    run = start(samples.chain, {"n": 3})
    bell.drain()
    restart(run.pk, from_step=2, actor=Actor("script:nightly"), reason="flaky provider")
    bell.drain()
    restart(run.pk)  # no actor: the Python API called without one
    entries = list(
        RunAudit.objects.filter(run=run).values_list(
            "action", "generation", "from_step", "actor", "reason"
        )
    )
    assert entries == [
        ("restart", 1, 2, "script:nightly", "flaky provider"),
        ("restart", 2, 1, "", ""),  # all succeeded: from the start
    ]


def test_a_refused_action_leaves_no_entry(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1})
    bell.drain()
    with pytest.raises(InvalidStateError):
        cancel(run.pk, "too late", actor=Actor("user:ops"))
    with pytest.raises(InvalidInputError):
        restart(run.pk, from_step=99, actor=Actor("user:ops"))
    waiting = start(samples.waiter, {})
    bell.drain()
    with pytest.raises(InvalidStateError):
        restart(waiting.pk, actor=Actor("user:ops"))
    assert not RunAudit.objects.exists()
    assert get_run(run.pk).generation == 1


def test_canceling_a_parent_records_the_operator_on_the_parent_and_its_child(bell: Bell) -> None:
    """The child's own trail says who canceled it, and that it came from above (found by
    review: its page said no one had canceled it)."""
    parent = start(samples.parent_waiting_child, {})
    bell.settle()
    child = Run.objects.get(parent=parent)
    cancel(parent.pk, "wrong input", actor=Actor("user:ops"))
    entries = {
        run_id: (action, actor, reason)
        for run_id, action, actor, reason in RunAudit.objects.values_list(
            "run_id", "action", "actor", "reason"
        )
    }
    assert entries == {
        parent.pk: ("cancel", "user:ops", "wrong input"),
        child.pk: ("cancel", "user:ops", f"parent run {parent.pk} canceled: wrong input"),
    }
    assert get_run(parent.pk).error["message"] == "canceled by user:ops: wrong input"
    assert get_run(child.pk).error["message"] == (
        f"parent run {parent.pk} canceled by user:ops: wrong input"
    )


@pytest.mark.parametrize(
    "reason",
    ["a\x00b", "lone \ud800 surrogate", "x" * 2001],
    ids=["nul", "surrogate", "too-long"],
)
def test_a_reason_that_cannot_be_kept_is_refused_before_anything_changes(
    bell: Bell, reason: str
) -> None:
    # PostgreSQL's text and jsonb columns refuse NUL and lone surrogates: a cancel failed
    # writing run.error, a restart failed writing RunAudit.reason (a 500 on the run page).
    waiting = start(samples.waiter, {})
    done = start(samples.chain, {"n": 1})
    bell.drain()
    with pytest.raises(InvalidInputError) as cancel_error:
        cancel(waiting.pk, reason, actor=Actor("user:ops"))
    with pytest.raises(InvalidInputError) as restart_error:
        restart(done.pk, from_step=1, actor=Actor("user:ops"), reason=reason)
    for exc in (cancel_error.value, restart_error.value):
        assert [e["field"] for e in exc.errors] == ["reason"]
    assert get_run(waiting.pk).status == "suspended"
    assert get_run(done.pk).status == "succeeded" and get_run(done.pk).generation == 1
    assert not RunAudit.objects.exists()
    # A reason of exactly the limit is kept whole.
    cancel(waiting.pk, "y" * 2000, actor=Actor("user:ops"))
    assert RunAudit.objects.get(run=waiting).reason == "y" * 2000
