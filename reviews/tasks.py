"""Celery tasks of the reviews app: thin adapters over ``reviews.services``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from reviews.services import RESUME_RUNS

log = logging.getLogger(__name__)


@shared_task(name="reviews.expire_gates", ignore_result=True)
def expire_gates() -> int:
    """Beat-driven (every ``SLUICE_SWEEP_INTERVAL`` seconds): escalate, then expire, the gates
    that are due.

    Idempotent and safe to run twice at once: the batches skip rows another sweep holds.
    """
    from reviews.services import escalate_due_gates, expire_due_gates

    # Escalation first: a gate due for both is expired right after, and its trail shows both.
    try:
        escalate_due_gates()
    except Exception:  # Never let escalation stop the expiry sweep; the next sweep retries.
        log.exception("gate escalation sweep failed")
    return expire_due_gates()


@shared_task(name=RESUME_RUNS, ignore_result=True)
def resume_runs(runs: list[Any]) -> int:
    """Advance a burst of runs whose gates closed together (see
    ``reviews.services.ring_for_runs``) through the engine's ``advance_many``: their leases
    and journals in one statement each, their ends in one transaction.

    A run another worker already took is skipped by the engine's own compare-and-swap.
    """
    from workflows.core.executor import advance_many

    try:
        return sum(advance_many([(run_id, generation) for run_id, generation in runs]).values())
    except Exception:  # The runs stay marked runnable; the engine's sweep rings for them.
        log.exception("could not resume a burst of %s runs", len(runs))
        return 0


@shared_task(name="reviews.notify", ignore_result=True)
def notify() -> dict[str, int]:
    """Beat-driven: reminders that are due, and digests whose window ended
    (``reviews.notifications.sweep``); idempotent like every sweep."""
    from reviews.notifications import sweep

    return sweep()


@shared_task(name="reviews.deliver_notifications", ignore_result=True)
def deliver_notifications(keys: list[str]) -> int:
    """Deliver these notification outbox rows now (sent after the commit that wrote them)."""
    from reviews.notifications import deliver_keys

    return deliver_keys(keys)


@shared_task(name="reviews.release_void_claims", ignore_result=True)
def release_void_claims() -> int:
    """Beat-driven (every ``SLUICE_VOID_CLAIM_INTERVAL`` seconds): free the claims of people
    who can no longer decide the gates they hold (``reviews.claims``); idempotent."""
    from reviews.claims import release_void_claims

    return release_void_claims()
