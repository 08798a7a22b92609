"""Celery tasks of the reviews app: thin adapters over ``reviews.services``."""
from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="reviews.expire_gates", ignore_result=True)
def expire_gates() -> int:
    """Beat-driven (every ``SLUICE_SWEEP_INTERVAL`` seconds): expire the gates that are due.

    Idempotent and safe to run twice at once: the batches skip rows another sweep holds.
    """
    from reviews.services import expire_due_gates

    return expire_due_gates()


@shared_task(name="reviews.resume_runs", ignore_result=True)
def resume_runs(runs: list[Any]) -> int:
    """Advance each of a burst of runs whose gates closed together (see
    ``reviews.services.ring_for_runs``): what the engine's doorbell does for one run, for many.

    A run another worker already took is skipped by the engine's own compare-and-swap.
    """
    from workflows.tasks import advance

    done = 0
    for run_id, generation in runs:
        try:
            advance(run_id, generation)
            done += 1
        except Exception:  # One broken run must not strand the others; the sweep rings for it.
            log.exception("could not resume run %s", run_id)
    return done
