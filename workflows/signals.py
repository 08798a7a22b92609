"""Signals other apps plug into (the engine never imports them).

``run_finished`` is sent inside the transaction that moves a run to a terminal state
(succeeded, failed or canceled), after ``on_complete`` ran: receivers may write rows (gates to
cancel, webhook outbox rows) and those writes commit or roll back with the run's own.

Each receiver runs in its own savepoint. One that raises is logged and its writes roll back;
the run's end, ``on_complete`` and the other receivers' writes still commit. A receiver can
therefore never make the engine end the run a second time (and run ``on_complete`` twice).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.dispatch import Signal

log = logging.getLogger(__name__)


class IsolatedSignal(Signal):
    """A signal whose ``send`` isolates each receiver in a savepoint and never raises."""

    def send(self, sender: Any, **named: Any) -> list[tuple[Any, Any]]:
        if not self.receivers:
            return []
        sync_receivers, async_receivers = self._live_receivers(sender)
        responses: list[tuple[Any, Any]] = []
        for receiver in [*sync_receivers, *async_receivers]:
            try:
                with transaction.atomic():
                    if receiver in async_receivers:
                        response = async_to_sync(receiver)(signal=self, sender=sender, **named)
                    else:
                        response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                log.exception("run_finished receiver %r failed; its writes rolled back", receiver)
                response = exc
            responses.append((receiver, response))
        return responses


run_finished = IsolatedSignal()  # kwargs: run
