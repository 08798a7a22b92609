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
import weakref
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.dispatch import Signal
from django.dispatch.dispatcher import _make_id  # type: ignore[attr-defined]  # its own keys

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
    """A signal whose ``send`` isolates each receiver in a savepoint and never raises.

    A receiver may be connected with ``wants``: a predicate ``wants(run, status)`` saying
    whether it has anything to do for ``run`` ending with ``status``. ``idle_for(run, status)``
    is True when every receiver says no: the run's end then has nothing to write but its own
    row, and the engine writes it in one statement, without a transaction around it
    (``Context.finish``). A receiver connected without ``wants`` always counts as wanting the
    run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # By Django's own key of a connection: (dispatch_uid or the receiver's id, sender's id).
        self._wants: dict[tuple[Any, Any], Callable[[Any, str], bool]] = {}

    def connect(  # type: ignore[override]
        self,
        receiver: Any,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Any = None,
        wants: Callable[[Any, str], bool] | None = None,
    ) -> None:
        super().connect(receiver, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        key = (dispatch_uid or _make_id(receiver), _make_id(sender))
        with self.lock:
            if wants is None:
                self._wants.pop(key, None)
            else:
                self._wants[key] = wants

    def disconnect(
        self, receiver: Any = None, sender: Any = None, dispatch_uid: Any = None
    ) -> bool:
        disconnected = super().disconnect(receiver, sender=sender, dispatch_uid=dispatch_uid)
        with self.lock:
            self._wants.pop((dispatch_uid or _make_id(receiver), _make_id(sender)), None)
        return disconnected

    def idle_for(self, run: Any, status: str) -> bool:
        """No live receiver has anything to do for ``run`` ending with ``status`` (see the
        class docstring)."""
        senders = (_make_id(None), _make_id(run.__class__))
        with self.lock:
            entries = list(self.receivers)
            wanted = dict(self._wants)
        for key, ref, sender_ref, _ in entries:
            if key[1] not in senders:
                continue
            if isinstance(ref, weakref.ReferenceType) and ref() is None:
                continue  # a receiver that is gone is not called
            if sender_ref is not None and sender_ref() is None:
                continue
            wants = wanted.get(key)
            if wants is None or wants(run, status):
                return False
        return True

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
                    # The flag first: an ORM statement that failed inside the receiver marked
                    # the transaction for rollback, and with the flag set Django refuses even
                    # the ROLLBACK TO SAVEPOINT (as Atomic.__exit__ clears it first).
                    transaction.set_rollback(False)
                    transaction.savepoint_rollback(guard.sid)
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

# Sent in the transaction of a cancel that does not end the run yet: it has steps to undo, so it
# is compensating, and ends canceled (``run_finished``) when they are done. It takes nothing more
# from outside meanwhile (the reviews app closes its gates); kwargs: run.
run_stopped = IsolatedSignal()

# Sent by the retention prune inside the transaction that deletes a batch of finished runs,
# before the delete; kwargs: run_ids. Apps keep or archive what must outlive the run (the
# reviews app: its gates' audit trail). A plain signal on purpose: a receiver that raises rolls
# the batch back, so the runs stay rather than lose a trail.
runs_pruning = Signal()
