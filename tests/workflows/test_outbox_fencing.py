"""Outbox writes after delivery are fenced on the claim: a deliverer whose claim ran out while
its handler was slow, and whose row another deliverer claimed and delivered meanwhile, changes
nothing: it neither undoes "delivered" (which would send the side effect again) nor reschedules
the row."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from workflows.core.outbox import deliver_one, register_outbox_handler
from workflows.core.services import enqueue_outbox
from workflows.models import Outbox, OutboxStatus

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

SENT: list[int] = []


def overtaken(row: Outbox, *, fail: bool) -> None:
    """The first delivery stalls past its claim; a second deliverer claims and delivers."""
    SENT.append(row.attempts)
    if len(SENT) == 1:
        Outbox.objects.filter(pk=row.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert deliver_one(Outbox.objects.get(pk=row.pk)) is True
        if fail:
            raise TimeoutError("the first attempt finally timed out")


@pytest.mark.parametrize("fail", [True, False], ids=["late-failure", "late-success"])
def test_a_deliverer_that_lost_its_claim_changes_nothing(fail: bool) -> None:
    SENT.clear()
    register_outbox_handler("test.fence", lambda row: overtaken(row, fail=fail))
    row = enqueue_outbox("test.fence", f"fence-{fail}", {})
    assert deliver_one(row) is False  # the first deliverer's claim was lost
    fresh = Outbox.objects.get(pk=row.pk)
    assert fresh.status == OutboxStatus.DELIVERED
    assert fresh.attempts == 2 and fresh.last_error == ""
    assert SENT == [1, 2]
    assert deliver_one(fresh) is False  # nothing left to send: no third attempt
    assert SENT == [1, 2]
