"""Delivering outbox rows: side effects that leave the process after their transaction commits.

Other apps register a handler per ``kind`` (webhooks, sending a reply). A handler receives the
row and must be idempotent on ``row.key``; it raises to ask for a retry. Delivery claims each
row with a short lease (compare-and-swap), so two deliverers never send the same row at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q

from workflows.core import clock
from workflows.core.models import Outbox, OutboxStatus

log = logging.getLogger(__name__)

_handlers: dict[str, Callable[[Outbox], Any]] = {}
MAX_AGE = timedelta(hours=24)
CLAIM_SECONDS = 60  # the default of settings.SLUICE_OUTBOX_CLAIM_SECONDS


def claim_seconds() -> float:
    return float(getattr(settings, "SLUICE_OUTBOX_CLAIM_SECONDS", CLAIM_SECONDS))


def register_outbox_handler(kind: str, handler: Callable[[Outbox], Any]) -> None:
    _handlers[kind] = handler


def backoff(attempts: int) -> float:
    base = min(3600.0, 2.0 * 2 ** max(0, attempts - 1))
    return base / 2 + random.uniform(0, base / 2)


def deliver_one(row: Outbox) -> bool:
    """Claim and deliver one row. Returns True when it was delivered now.

    The claim is (attempts + 1, lease until): every write after delivery is fenced on it, so a
    deliverer whose claim ran out while its handler was slow, and whose row another deliverer
    claimed meanwhile, changes nothing (it cannot undo the other's "delivered" or reschedule
    the row under the other's claim).
    """
    now = clock.now()
    until = now + timedelta(seconds=claim_seconds())
    if not Outbox.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now),
        pk=row.pk,
        status=OutboxStatus.PENDING,
        attempts=row.attempts,
    ).update(lease_expires_at=until, attempts=row.attempts + 1):
        return False
    row.attempts += 1
    mine = Outbox.objects.filter(
        pk=row.pk, status=OutboxStatus.PENDING, attempts=row.attempts, lease_expires_at=until
    )
    handler = _handlers.get(row.kind)
    try:
        if handler is None:
            raise LookupError(f"no outbox handler registered for kind {row.kind!r}")
        handler(row)
    except Exception as exc:
        later = clock.now()
        dead = later - row.created_at > MAX_AGE
        if not mine.update(
            status=OutboxStatus.DEAD if dead else OutboxStatus.PENDING,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            next_attempt_at=later + timedelta(seconds=backoff(row.attempts)),
            lease_expires_at=None,
        ):
            log.warning("outbox %s: claim lost during attempt %s", row.key, row.attempts)
        log.warning("outbox %s attempt %s failed: %s", row.key, row.attempts, exc)
        return False
    if not mine.update(
        status=OutboxStatus.DELIVERED,
        delivered_at=clock.now(),
        lease_expires_at=None,
        last_error="",
    ):
        log.warning("outbox %s: claim lost during attempt %s", row.key, row.attempts)
        return False
    return True


def deliver_due(limit: int = 100) -> int:
    now = clock.now()
    rows = list(
        Outbox.objects.filter(status=OutboxStatus.PENDING, next_attempt_at__lte=now)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .order_by("next_attempt_at")[:limit]
    )
    return sum(deliver_one(row) for row in rows)
