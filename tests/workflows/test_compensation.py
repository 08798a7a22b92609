"""Compensation (sagas): the undos of completed steps run in reverse order of completion when
a run fails or is canceled, each once, journaled, retried with its own policy; a crash in the
middle resumes; on_complete runs once, after them; restart re-runs what was undone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from pipelines.examples import trip_booking  # noqa: F401  (registers the example)
from tests.support import Bell
from tests.workflows import hooks, saga_workflows
from tests.workflows.saga_workflows import LOG
from workflows import cancel, get_run, restart, send_event, start
from workflows.core.executor import advance_many, take_run
from workflows.core.sweeper import sweep
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SLUICE_TEST_CALL_LOG", raising=False)
    LOG.clear()
    hooks.SEEN.clear()
    yield
    LOG.clear()


def undo_rows(run: Run) -> list[Step]:
    return list(Step.objects.filter(run=run, kind="compensate", superseded=False))


def settle(bell: Bell) -> None:
    """Drain, and let the sweep fire retry backoffs (they are columns, never ETA tasks)."""
    for _ in range(30):
        bell.settle()
        run_states = set(Run.objects.values_list("status", flat=True))
        if not run_states & {"pending", "running", "suspended", "compensating"}:
            return
        Step.objects.filter(status="retrying").update(wake_at=timezone.now() - timedelta(1))
        sweep()


def test_undos_run_in_reverse_order_once_then_the_run_fails_with_its_error(bell: Bell) -> None:
    run = start(
        "test.saga",
        {"names": ["flight", "hotel", "car"]},
        on_complete="tests.workflows.hooks.record",
    )
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "StepFailed"
    assert "sold out" in run.error["message"]
    assert run.error["compensated"] is True
    assert LOG == [
        "do:flight",
        "do:hotel",
        "do:car",
        "fail",
        "undo:car",
        "undo:hotel",
        "undo:flight",
    ]
    rows = undo_rows(run)
    # Journaled after the handler's four positions, one row each, with the undo's inputs.
    assert [(r.position, r.name, r.status, r.attempt) for r in rows] == [
        (5, "unbook", "succeeded", 1),
        (6, "unbook", "succeeded", 1),
        (7, "unbook", "succeeded", 1),
    ]
    assert [r.result for r in rows] == [
        "cancelled ref-car",
        "cancelled ref-hotel",
        "cancelled ref-flight",
    ]
    assert rows[0].args == {"args": ["car"], "kwargs": {"result": "ref-car"}}
    assert hooks.SEEN == [(str(run.pk), "failed")]  # once, at the real end
    # Replaying the finished run again changes nothing: no undo runs twice.
    bell.settle()
    assert LOG.count("undo:car") == 1


def test_a_run_that_succeeds_runs_no_undo(bell: Bell) -> None:
    run = start("test.saga", {"names": ["a", "b"], "fail_at_end": False})
    settle(bell)
    run = get_run(run.pk)
    assert (run.status, run.output) == ("succeeded", ["ref-a", "ref-b"])
    assert not undo_rows(run)
    assert not [e for e in LOG if e.startswith("undo")]


def test_a_failure_without_undos_ends_as_before(bell: Bell) -> None:
    run = start("test.saga_none", {}, on_complete="tests.workflows.hooks.record")
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and "compensated" not in run.error
    assert hooks.SEEN == [(str(run.pk), "failed")]


def test_a_flaky_undo_is_retried_with_its_own_policy(bell: Bell) -> None:
    run = start("test.saga_undos", {"undos": [["flight", "plain"], ["hotel", "flaky"]]})
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["compensated"] is True
    assert LOG[-4:] == ["try-undo:hotel", "try-undo:hotel", "undo:hotel", "undo:flight"]
    hotel_undo = undo_rows(run)[0]
    assert (hotel_undo.name, hotel_undo.status, hotel_undo.attempt) == (
        "flaky_unbook",
        "succeeded",
        2,
    )


def test_an_undo_that_fails_for_good_is_listed_and_the_others_still_run(bell: Bell) -> None:
    run = start(
        "test.saga_undos",
        {"undos": [["flight", "plain"], ["hotel", "broken"], ["car", "plain"]]},
        on_complete="tests.workflows.hooks.record",
    )
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "CompensationFailed"
    assert (
        "undo broken_unbook of book (#2) failed: RuntimeError: hotel: cannot cancel"
        in (run.error["message"])
    )
    assert "(the run had failed: StepFailed: step 'fail' failed" in run.error["message"]
    assert "sold out" in run.error["cause"]["message"]
    assert len(run.error["undos_failed"]) == 1
    # Its two attempts (the policy's max), then the flight was still cancelled; no loop.
    assert LOG.count("try-undo:hotel") == 2
    assert LOG[-1] == "undo:flight" and LOG.count("undo:car") == 1
    assert [r.status for r in undo_rows(run)] == ["succeeded", "failed", "succeeded"]
    assert hooks.SEEN == [(str(run.pk), "failed")]


def test_cancel_compensates_then_ends_canceled(bell: Bell) -> None:
    run = start(
        "test.saga_wait",
        {"names": ["flight", "hotel"]},
        on_complete="tests.workflows.hooks.record",
    )
    settle(bell)
    assert get_run(run.pk).status == "suspended"
    generation = get_run(run.pk).generation
    run = cancel(run.pk, "customer changed plans")
    # The cancel's transaction made it compensating (a new generation), not canceled yet.
    assert (run.status, run.after_compensation) == ("compensating", "canceled")
    assert run.generation == generation + 1
    assert hooks.SEEN == []
    assert Step.objects.get(run=run, kind="event").status == "canceled"
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "canceled"
    assert run.error["message"] == "canceled: customer changed plans"
    assert LOG[-2:] == ["undo:hotel", "undo:flight"]
    assert hooks.SEEN == [(str(run.pk), "canceled")]
    with pytest.raises(Exception, match="is canceled; it takes no more events"):
        send_event(run.pk, "go", {})


def test_cancel_while_compensating_stops_and_lists_what_was_not_undone(bell: Bell) -> None:
    run = start(
        "test.saga_undos",
        {"undos": [["flight", "plain"], ["hotel", "flaky"]]},
        on_complete="tests.workflows.hooks.record",
    )
    settle_until = 0
    while get_run(run.pk).status != "compensating" and settle_until < 50:
        bell.drain(limit=1)
        settle_until += 1
    bell.drain()  # the hotel's undo fails its first attempt: parked for its backoff
    run = get_run(run.pk)
    assert (run.status, run.lease_owner) == ("compensating", "")
    run = cancel(run.pk, "stop it")
    assert run.status == "canceled"
    assert "compensation stopped before undoing: book (#2), book (#1)" in run.error["message"]
    assert "sold out" in run.error["cause"]["message"]
    settle(bell)
    assert "undo:flight" not in LOG
    assert [r.status for r in undo_rows(run)] == ["canceled"]
    assert hooks.SEEN == [(str(run.pk), "canceled")]


def test_a_crash_while_compensating_resumes_without_redoing_a_checkpointed_undo(
    bell: Bell,
) -> None:
    run = start("test.saga", {"names": ["flight", "hotel", "car"]})
    while get_run(run.pk).status != "compensating":
        assert bell.drain(limit=1)
    # A worker takes the run and dies after undoing the car and checkpointing it (the
    # checkpoint rides with the commit that starts the hotel's undo): simulate it by
    # running one undo with a step that raises SystemExit on the second.
    from workflows.core import compensation

    real = compensation._undo_one
    calls = {"n": 0}

    def dying(ctx, run_row, row):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            ctx._flush()  # the hotel undo's start commit, which records the car's undo
            raise SystemExit("worker killed")
        return real(ctx, run_row, row)

    compensation._undo_one = dying  # type: ignore[assignment]
    try:
        with pytest.raises(SystemExit):
            bell.drain()
    finally:
        compensation._undo_one = real  # type: ignore[assignment]
    assert [(r.name, r.status) for r in undo_rows(run)] == [("unbook", "succeeded")]
    # The lease expires; the sweep rings; another worker resumes the compensation.
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(1))
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["compensated"] is True
    assert [e for e in LOG if e.startswith("undo:")] == ["undo:car", "undo:hotel", "undo:flight"]


def test_a_stale_generation_cannot_advance_the_compensation(bell: Bell) -> None:
    run = start("test.saga_wait", {"names": ["a"]})
    settle(bell)
    old = get_run(run.pk).generation
    cancel(run.pk)
    assert take_run(run.pk, old, "stale-worker") is None
    bell.lose_all()
    assert get_run(run.pk).status == "compensating"
    # The doorbell was lost: after the grace period the sweep rings again, from the table.
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(1))
    settle(bell)
    assert get_run(run.pk).status == "canceled"
    assert LOG.count("undo:a") == 1


def test_fan_out_branches_are_undone_too(bell: Bell) -> None:
    run = start("test.saga_map", {"names": ["x", "y", "z"]})
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["compensated"] is True
    undone = [e for e in LOG if e.startswith("undo:")]
    assert undone[0] == "undo:after"  # the last completed, first undone
    assert sorted(undone[1:]) == ["undo:x", "undo:y", "undo:z"]
    assert len(undo_rows(run)) == 4


def test_restart_after_compensation_reruns_what_was_undone_in_a_new_generation(
    bell: Bell,
) -> None:
    run = start("test.saga", {"names": ["flight", "hotel"]})
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed"
    gen = run.generation
    LOG.clear()
    run = restart(run.pk)  # no from_step: would resume at the failed step 3, but 1-2 were undone
    assert run.generation == gen + 1 and run.after_compensation == ""
    assert not Step.objects.filter(run=run, superseded=False).exists()
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed"
    assert LOG == ["do:flight", "do:hotel", "fail", "undo:hotel", "undo:flight"]
    old = Step.objects.filter(run=run, superseded=True, kind="compensate")
    assert old.count() == 2 and set(old.values_list("generation", flat=True)) == {gen}


def test_the_example_booking_cancels_hotel_then_flight_when_the_car_fails(bell: Bell) -> None:
    for name in ("examples.trip_booking", "examples.trip_booking_machine"):
        run = start(name, {"unavailable": ["car"]})
        settle(bell)
        run = get_run(run.pk)
        assert run.status == "failed", name
        assert "no car available for Lisbon" in run.error["message"], name
        rows = undo_rows(run)
        assert [r.name for r in rows] == ["cancel_hotel", "cancel_flight"], name
        assert [r.result["cancelled"][:2] for r in rows] == ["H-", "F-"]
    ok = start("examples.trip_booking", {})
    settle(bell)
    assert set(get_run(ok.pk).output) == {"flight", "hotel", "car"}


def test_an_undo_must_be_importable_and_a_machine_says_so() -> None:
    from pipelines.dsl import final, state
    from pipelines.machine import machine
    from workflows.core.definitions import undo_path

    with pytest.raises(TypeError, match="must be a module-level function"):
        undo_path(saga_workflows.book, lambda name, result: None)
    with pytest.raises(Exception, match="compensate= must be a module-level function"):
        machine(
            id="test.saga_bad_machine",
            initial="a",
            states={
                "a": state(run=saga_workflows.book, compensate=lambda d, result: None, on_done="z"),
                "z": final(),
            },
        )


def test_a_burst_advance_of_compensating_runs_finishes_their_compensation(bell: Bell) -> None:
    runs = [start("test.saga_wait", {"names": [f"n{i}"]}) for i in range(3)]
    settle(bell)
    for run in runs:
        cancel(run.pk)
    bell.lose_all()  # the sweep's lost-doorbell pass rings in bursts (advance_many)
    advance_many([(r.pk, get_run(r.pk).generation) for r in runs])
    settle(bell)
    assert [get_run(r.pk).status for r in runs] == ["canceled"] * 3
    assert sorted(e for e in LOG if e.startswith("undo:")) == ["undo:n0", "undo:n1", "undo:n2"]


def test_a_fork_reuses_no_undone_step_and_does_not_undo_what_it_reused(bell: Bell) -> None:
    from workflows import fork
    from workflows.core.errors import InvalidInputError

    failed = start("test.saga", {"names": ["flight", "hotel"]})
    settle(bell)
    with pytest.raises(InvalidInputError, match="its steps from position 1 on were undone"):
        fork(failed.pk, from_step=2)
    ok = start("test.saga", {"names": ["flight", "hotel"], "fail_at_end": False})
    settle(bell)
    LOG.clear()
    forked = fork(ok.pk, from_step=3)  # reuses both bookings of the original
    settle(bell)
    assert get_run(forked.pk).status == "succeeded"
    assert LOG == []
    assert not Step.objects.filter(run=forked).exclude(undo="").exists()


def test_a_fork_of_a_run_still_compensating_reuses_no_step_it_is_about_to_undo(
    bell: Bell,
) -> None:
    """Canceled while waiting: the run is compensating, and no undo has been journaled yet.
    Its bookings are about to be taken back, so a fork may not reuse them (review finding)."""
    from workflows import fork
    from workflows.core.errors import InvalidInputError
    from workflows.core.forking import last_forkable

    run = start("test.saga_wait", {"names": ["flight", "hotel"]})
    settle(bell)
    cancel(run.pk)
    assert get_run(run.pk).status == "compensating"
    assert not undo_rows(run)
    for bad in (2, 3):
        with pytest.raises(InvalidInputError, match="undone"):
            fork(run.pk, from_step=bad)
    assert Run.objects.count() == 1
    rows = list(Step.objects.filter(run=run, superseded=False))
    assert last_forkable(rows, compensating=True) == 1  # what the run page offers
    forked = fork(run.pk, from_step=1)
    settle(bell)
    assert get_run(run.pk).status == "canceled"
    assert get_run(forked.pk).status == "suspended"  # waiting for its own "go"
