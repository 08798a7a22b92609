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
from django.db import connection, transaction
from django.dispatch import Signal

log = logging.getLogger(__name__)


class _LazySavepoint:
    """An execute wrapper that opens a savepoint just before a receiver's first statement: a
    receiver that writes nothing (the common case: no callback URL, a run that succeeded) costs
    no round trip, and one that writes can still be rolled back alone."""

    def __init__(self) -> None:
        self.opened = False
        self.sid: str | None = None

    def __call__(self, execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        if not self.opened:
            self.opened = True  # before savepoint(): its own statement passes through here
            self.sid = transaction.savepoint_create()
        return execute(sql, params, many, context)


class IsolatedSignal(Signal):
    """A signal whose ``send`` isolates each receiver in a savepoint and never raises."""

    def send(self, sender: Any, **named: Any) -> list[tuple[Any, Any]]:
        if not self.receivers:
            return []
        sync_receivers, async_receivers = self._live_receivers(sender)
        responses: list[tuple[Any, Any]] = []
        for receiver in [*sync_receivers, *async_receivers]:
            guard = _LazySavepoint()
            callbacks = len(connection.run_on_commit)
            try:
                with connection.execute_wrapper(guard):
                    if receiver in async_receivers:
                        response = async_to_sync(receiver)(signal=self, sender=sender, **named)
                    else:
                        response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                log.exception("run_finished receiver %r failed; its writes rolled back", receiver)
                if guard.sid is not None:
                    transaction.savepoint_rollback(guard.sid)
                    transaction.set_rollback(False)
                # Its on_commit callbacks go with its writes (a manual savepoint's rollback
                # does not drop them the way an atomic block's does).
                del connection.run_on_commit[callbacks:]
                response = exc
            else:
                if guard.sid is not None:
                    transaction.savepoint_commit(guard.sid)
            responses.append((receiver, response))
        return responses


run_finished = IsolatedSignal()  # kwargs: run

# Sent by the retention prune inside the transaction that deletes a batch of finished runs,
# before the delete; kwargs: run_ids. Apps keep or archive what must outlive the run (the
# reviews app: its gates' audit trail). A plain signal on purpose: a receiver that raises rolls
# the batch back, so the runs stay rather than lose a trail.
runs_pruning = Signal()
