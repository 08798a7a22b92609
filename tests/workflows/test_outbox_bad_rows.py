"""One bad outbox row never blocks the others.

Found by review: a handler (``register_outbox_handler``) whose error text held a NUL character
made the failure's bookkeeping write fail on PostgreSQL (``DataError``). ``deliver_due`` raised
on every round, stopping at that row: it stayed pending and first in the queue, was never
backed off nor marked dead, and no row behind it was delivered again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError
from django.utils import timezone

from workflows.core import outbox
from workflows.core.services import enqueue_outbox
from workflows.models import Outbox, OutboxStatus

pytestmark = [pytest.mark.core]

SENT: list[str] = []


def hostile(row: Outbox) -> None:
    """A receiver's reply quoted in the error, with what PostgreSQL cannot store."""
    raise ValueError("receiver said: bad \x00 byte and a lone \ud800 surrogate")


def healthy(row: Outbox) -> None:
    SENT.append(row.key)


def poisoning(row: Outbox) -> None:
    """A handler whose own write fails inside the caller's transaction (on PostgreSQL, the
    transaction is aborted: every later statement in it fails)."""
    Outbox.objects.create(key="bad-rows-ok", kind="x", payload={}, next_attempt_at=timezone.now())


outbox.register_outbox_handler("test_bad_rows.hostile", hostile)
outbox.register_outbox_handler("test_bad_rows.healthy", healthy)
outbox.register_outbox_handler("test_bad_rows.poisoning", poisoning)


def _queue(first_kind: str) -> None:
    SENT.clear()
    # Both due, the bad one first in the queue.
    enqueue_outbox(first_kind, "bad-rows-first", {}, when=timezone.now() - timedelta(seconds=2))
    enqueue_outbox(
        "test_bad_rows.healthy", "bad-rows-ok", {}, when=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.django_db(transaction=True)
def test_an_error_text_the_database_refuses_is_stored_escaped() -> None:
    _queue("test_bad_rows.hostile")
    before = timezone.now()
    assert outbox.deliver_due() == 1
    assert SENT == ["bad-rows-ok"]
    row = Outbox.objects.get(key="bad-rows-first")
    assert (row.status, row.attempts, row.lease_expires_at) == (OutboxStatus.PENDING, 1, None)
    assert (
        row.last_error == "ValueError: receiver said: bad \\x00 byte and a lone \\ud800 surrogate"
    )
    assert row.next_attempt_at > before  # backed off, no longer first in the queue
    assert Outbox.objects.get(key="bad-rows-ok").status == OutboxStatus.DELIVERED


@pytest.mark.django_db(transaction=True)
def test_such_a_row_is_still_given_up_on_after_a_day() -> None:
    _queue("test_bad_rows.hostile")
    Outbox.objects.filter(key="bad-rows-first").update(
        created_at=timezone.now() - outbox.MAX_AGE - timedelta(minutes=1)
    )
    outbox.deliver_due()
    row = Outbox.objects.get(key="bad-rows-first")
    assert row.status == OutboxStatus.DEAD
    assert "\\x00" in row.last_error


@pytest.mark.django_db(transaction=True)
def test_a_row_whose_bookkeeping_fails_does_not_stop_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever else goes wrong with one row (the database refusing its write), the rows
    behind it are delivered: ``deliver_due`` stopped at the first exception."""
    real = outbox._record_failure

    def broken(mine: Any, *args: Any) -> int:
        raise DatabaseError("simulated: the write was refused")

    monkeypatch.setattr(outbox, "_record_failure", broken)
    _queue("test_bad_rows.hostile")
    assert outbox.deliver_due() == 1
    assert SENT == ["bad-rows-ok"]
    monkeypatch.setattr(outbox, "_record_failure", real)
    # The bad row's claim runs out and it is tried again, like any row whose deliverer died.
    Outbox.objects.filter(key="bad-rows-first").update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert outbox.deliver_due() == 0
    row = Outbox.objects.get(key="bad-rows-first")
    assert (row.status, row.attempts) == (OutboxStatus.PENDING, 2)
    assert row.last_error.startswith("ValueError: receiver said")


@pytest.mark.django_db
def test_inside_a_transaction_a_failing_row_does_not_spoil_it_for_the_next() -> None:
    """Called inside a transaction (this test's), each row gets a savepoint: a row whose
    writes fail leaves the transaction usable for the rows behind it."""
    _queue("test_bad_rows.poisoning")
    assert outbox.deliver_due() == 1
    assert SENT == ["bad-rows-ok"]
    assert Outbox.objects.get(key="bad-rows-ok").status == OutboxStatus.DELIVERED


@pytest.mark.django_db(transaction=True)
def test_delivering_rows_by_key_does_not_stop_at_a_failing_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reviewer notifications deliver their rows by key (``deliver_keys``) through the
    same per-row loop."""
    from reviews.notifications import OUTBOX_KIND, deliver_keys

    delivered: list[str] = []

    def first_fails(row: Outbox) -> None:
        if row.key == "notify-first":
            raise DatabaseError("simulated")
        delivered.append(row.key)

    monkeypatch.setitem(outbox._handlers, OUTBOX_KIND, first_fails)
    monkeypatch.setattr(
        outbox, "_record_failure", lambda *a: (_ for _ in ()).throw(DatabaseError())
    )
    for key in ("notify-first", "notify-second"):
        enqueue_outbox(OUTBOX_KIND, key, {}, when=timezone.now() - timedelta(seconds=1))
    assert deliver_keys(["notify-first", "notify-second"]) == 1
    assert delivered == ["notify-second"]
