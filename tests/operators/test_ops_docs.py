"""docs/operators.md says what the ops overview's code does: its sample sizes and thresholds.

Found by review: the page said each pool's latency came from its newest 1,000 steps
(``LATENCY_SAMPLE``) and the guide said 5,000.
"""

from __future__ import annotations

import re
from pathlib import Path

from workflows import ops

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operators.md"


def _bullet(title: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"- **{title}**")
    end = text.find("\n- ", start + 1)
    return re.sub(r"\s+", " ", text[start:end])


def _figures(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+\b", text)]


def test_the_latency_sample_is_the_codes() -> None:
    latency = _bullet("Step latency per pool")
    figures = _figures(latency)
    assert set(figures) <= {24, 50, 95, ops.LATENCY_SAMPLE, 4 * ops.LATENCY_SAMPLE}, figures
    assert ops.LATENCY_SAMPLE in figures and 4 * ops.LATENCY_SAMPLE in figures, latency
    assert "LATENCY_SAMPLE" in latency


def test_the_status_count_thresholds_are_the_codes() -> None:
    status = _figures(_bullet("Runs by status now"))
    assert ops.ESTIMATE_ABOVE in status
    assert getattr(ops, "EXACT_BELOW", None) in status
    assert getattr(ops, "SHARE_SAMPLE", None) in status
