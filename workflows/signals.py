"""Signals other apps plug into (the engine never imports them).

``run_finished`` is sent inside the transaction that moves a run to a terminal state
(succeeded, failed or canceled), after ``on_complete`` ran: receivers may write rows (gates to
cancel, webhook outbox rows) and those writes commit or roll back with the run's own.
"""

from __future__ import annotations

from django.dispatch import Signal

run_finished = Signal()  # kwargs: run
