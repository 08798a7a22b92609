"""on_complete hooks used by the tests."""

from __future__ import annotations

from typing import Any

SEEN: list[tuple[str, str]] = []


def record(run: Any) -> None:
    SEEN.append((str(run.pk), run.status))


def explode(run: Any) -> None:
    raise RuntimeError("hook exploded")
