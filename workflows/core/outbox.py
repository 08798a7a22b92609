"""Delivering outbox rows: side effects that leave the process after their transaction commits.

Other apps register a handler per ``kind`` (webhooks, sending a reply). A handler receives the
row and must be idempotent on ``row.key``; it raises to ask for a retry. Delivery claims each
row with a short lease (compare-and-swap), so two deliverers never send the same row at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q, QuerySet

from workflows.core import clock
from workflows.core.calls import shown, storable_text
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
        # The handler's words are anyone's (a receiver's reply): a NUL or a lone surrogate,
        # which PostgreSQL refuses, is stored as its escape, or the row would never be backed
        # off nor given up on.
        error = storable_text(f"{type(exc).__name__}: {shown(exc)}"[:2000])
        if not _record_failure(mine, dead, error, later + timedelta(seconds=backoff(row.attempts))):
            log.warning("outbox %s: claim lost during attempt %s", row.key, row.attempts)
        log.warning("outbox %s attempt %s failed: %s", row.key, row.attempts, error[:500])
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


def _record_failure(mine: QuerySet[Outbox], dead: bool, error: str, next_at: datetime) -> int:
    """Back the row off (or mark it dead) with ``error``, fenced on the claim. In a savepoint,
    so a write the database refuses does not break a transaction around the delivery; then the
    attempt is recorded with a placeholder instead of the text."""
    fields = {
        "status": OutboxStatus.DEAD if dead else OutboxStatus.PENDING,
        "next_attempt_at": next_at,
        "lease_expires_at": None,
    }
    try:
        with transaction.atomic():
            return mine.update(last_error=error, **fields)
    except DatabaseError:
        log.exception("outbox: the error of a failed delivery could not be stored")
    with transaction.atomic():
        return mine.update(last_error="(the error could not be stored)", **fields)


def due_again(rows: QuerySet[Outbox]) -> int:
    """An operator's "deliver again now": make the undelivered ``rows`` due at once; how many.

    A row in the middle of an attempt (claimed, the claim not run out) is left alone: clearing
    its claim let a second deliverer send it at the same time. A dead row gets one more
    attempt: past ``MAX_AGE`` a failure makes it dead again, with the new error, so a retry
    after fixing what failed (a mail server's password, a chat URL) is one try, not a day of
    them."""
    now = clock.now()  # claims are written on the database's clock
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    return (
        rows.exclude(status=OutboxStatus.DELIVERED)
        .filter(free)
        .update(status=OutboxStatus.PENDING, next_attempt_at=now, lease_expires_at=None)
    )


def deliver_due(limit: int = 100) -> int:
    """Deliver the rows that are due, oldest first. Each row on its own: one whose delivery or
    bookkeeping fails unexpectedly is logged and skipped (its claim runs out and it is tried
    again later), and the rows behind it are still delivered."""
    now = clock.now()
    rows = list(
        Outbox.objects.filter(status=OutboxStatus.PENDING, next_attempt_at__lte=now)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .order_by("next_attempt_at")[:limit]
    )
    return deliver_rows(rows)


def deliver_rows(rows: Iterable[Outbox]) -> int:
    """Deliver these rows, each on its own (``deliver_due``); how many were delivered."""
    delivered = 0
    for row in rows:
        try:
            # Called inside a transaction, each row gets a savepoint, so a failed write leaves
            # the transaction usable for the next. In autocommit there is none to spoil, and a
            # transaction around the handler would hide the claim while it runs.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                delivered += deliver_one(row)
        except Exception:
            log.exception("outbox %s: delivery failed unexpectedly; skipped this round", row.key)
    return delivered
