"""Reading Prometheus's text exposition in tests."""

from __future__ import annotations

import re

LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the first series ``name`` whose labels include ``labels`` (0 if none)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match or match[1] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return 0.0


def names(text: str) -> set[str]:
    """Every series name in an exposition."""
    return {m[1] for line in text.splitlines() if (m := LINE.match(line))}
