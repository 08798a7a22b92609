"""Test helpers: an in-memory broker stand-in and small utilities."""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any

from django.utils import timezone


class Bell:
    """Collects doorbell messages instead of sending them; ``drain`` handles them in-process.

    The engine's truth is in the tables, so this stands in for the broker faithfully: dropping
    messages (``lose_all``) is exactly what a flushed Redis does.
    """

    def __init__(self) -> None:
        self.messages: deque[tuple[str, Any]] = deque()
        self.sent: list[tuple[str, Any]] = []

    def send_advance(self, run_id: Any, generation: int) -> None:
        msg = ("advance", (str(run_id), generation))
        self.messages.append(msg)
        self.sent.append(msg)

    def send_advance_many(self, items: list[tuple[Any, int]]) -> None:
        msg = ("advance_many", ([(str(pk), gen) for pk, gen in items],))
        self.messages.append(msg)
        self.sent.append(msg)

    def send_steps(self, items: list[tuple[int, str]]) -> None:
        for step_id, queue in items:
            self.send_step(step_id, queue)

    def send_batches(self, batches: list[tuple[list[int], str]]) -> None:
        """A batch doorbell is a delivery detail: here each of its steps is a message."""
        for ids, queue in batches:
            self.send_steps([(step_id, queue) for step_id in ids])

    def send_step(self, step_id: int, queue: str) -> None:
        msg = ("step", (step_id,))
        self.messages.append(msg)
        self.sent.append(msg)

    def lose_all(self) -> int:
        n = len(self.messages)
        self.messages.clear()
        return n

    def drain(self, limit: int = 10_000) -> int:
        from workflows.core.executor import advance, advance_many, execute_step

        handled = 0
        while self.messages and handled < limit:
            kind, args = self.messages.popleft()
            if kind == "advance":
                advance(*args)
            elif kind == "advance_many":
                advance_many(*args)
            else:
                execute_step(*args)
            handled += 1
        return handled

    def settle(self, rounds: int = 20) -> None:
        """Drain, run the sweep, repeat until nothing more happens."""
        from workflows.core.sweeper import sweep

        for _ in range(rounds):
            self.drain()
            sweep()
            if not self.messages:
                return


def past(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)
