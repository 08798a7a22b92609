"""Beat's saved schedule (config.celery.Scheduler): a last run saved in the future is taken as
now, so a clock set back (or a var/ copied from a machine whose clock ran ahead) does not
silence the sweeps, gate expiry and the outbox until real time catches up (found by review)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from config.celery import Scheduler, app


def _scheduler(path: Path) -> Scheduler:
    return Scheduler(app, schedule_filename=str(path), lazy=False)


def test_a_last_run_saved_in_the_future_is_taken_as_now(tmp_path: Path) -> None:
    path = tmp_path / "celerybeat-schedule"
    first = _scheduler(path)
    ahead = app.now() + timedelta(hours=1)
    for entry in first.schedule.values():
        entry.last_run_at = ahead
    first.sync()
    first.close()

    again = _scheduler(path)
    try:
        sweep = again.schedule["sluice-sweep"]
        assert sweep.last_run_at <= app.now()
        due, _ = sweep.is_due()
        wait = sweep.schedule.remaining_estimate(sweep.last_run_at).total_seconds()
        assert due or wait <= sweep.schedule.run_every.total_seconds()  # within one interval
    finally:
        again.close()


def test_it_is_the_scheduler_beat_uses() -> None:
    assert app.conf.beat_scheduler == "config.celery:Scheduler"
