"""Small server-rendered SVG charts for the ops overview (no JavaScript, no CDN).

Each function returns markup safe to put in a template: every label is escaped here. Charts
scale with their container (``viewBox`` + ``width: 100%``) and carry ``<title>`` tooltips.
Screen readers get the figures too: the column and range charts are followed by a table that
is visually hidden (``sr-only``; the drawing itself is hidden from them), and a single bar
names its parts and their values in its ``aria-label``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = (
    "#1f6feb",
    "#8250df",
    "#bf3989",
    "#0a7f6f",
    "#bc4c00",
    "#6e7781",
    "#d4a72c",
    "#2da44e",
    "#cf222e",
    "#0969da",
)
STATUS_COLORS = {
    "succeeded": "#2da44e",
    "failed": "#cf222e",
    "canceled": "#8c959f",
    "running": "#1f6feb",
    "suspended": "#d4a72c",
    "compensating": "#bc4c00",
    "pending": "#9a6700",
}
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: Sequence[float]


def nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^n)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def _num(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


# The journal keeps costs to the millionth of a dollar (``decimal_places=6``).
COST_PLACES = 6
_CENT = Decimal("0.01")


def money(value: Any) -> str:
    """Dollars as LLM costs need them, the one rule of the pages, the filter ``money`` and the
    cost chart: cents from $1 up ($1.25, $1,204.50), at least four decimals under $1 and two
    significant digits below $0.001 ($0.0042, $0.00004), and "$0" only for nothing at all: a
    cost is never shown as "$0.00".

    The figure is cut, not rounded, at the digits shown (after rounding to the journal's
    millionths, so that a float sum such as 0.7999999999999999 is $0.80): a run stopped by its
    budget after spending $999.996 of $1,000 reads "$999.99 of $1,000.00", not "$1,000 of
    $1,000"."""
    try:
        amount = Decimal(str(value or 0))
    except InvalidOperation:
        return "—"
    if not amount.is_finite():
        return "—"
    amount = amount.quantize(Decimal(1).scaleb(-COST_PLACES), rounding=ROUND_HALF_EVEN)
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount >= 1:
        return f"{sign}${amount.quantize(_CENT, rounding=ROUND_DOWN):,.2f}"
    # Two significant digits, four decimals at least: 0.00004 has its first one at the 5th.
    places = min(COST_PLACES, max(4, -amount.adjusted() + 1))
    text = f"{amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN):.{places}f}"
    whole, _, decimals = text.rstrip("0").partition(".")
    return f"{sign}${whole}.{decimals.ljust(2, '0')}"


def _sr_table(caption: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A chart's figures as a table only screen readers read (the ``sr-only`` class)."""
    cells = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    body = "".join(
        f'<tr><th scope="row">{escape(row[0])}</th>'
        + "".join(f"<td>{escape(v)}</td>" for v in row[1:])
        + "</tr>"
        for row in rows
    )
    # In a 1 px box: a table is never narrower than its content, so the box clips it.
    return (
        f'<div class="sr-only"><table><caption>{escape(caption)}</caption>'
        f"<thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def stacked_columns(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    width: int = 1100,
    height: int = 250,
    fmt: Callable[[float], str] = _num,
    label_every: int = 1,
    line: Series | None = None,
    line_fmt: Callable[[float], str] = lambda v: f"{v:.0f}%",
    aria: str = "chart",
) -> SafeString:
    """Stacked columns per label; an optional ``line`` (0–100, e.g. a rate) on a right axis."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    ymax = nice_max(max(totals, default=0))
    ticks = [fmt(ymax * i / 4) for i in range(5)]
    # Room for the longest axis label ("$0.00012", "$1,500.00"), ~6.2 px a character.
    left = max(44, round(8 + 6.2 * max(len(t) for t in ticks)))
    right, top, bottom = 44 if line else 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(labels))
    slot = plot_w / n
    bar = max(2.0, slot * 0.68)
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" aria-hidden="true" focusable="false"'
        f' preserveAspectRatio="xMidYMid meet" {FONT} font-size="11">'
    ]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#e3e6ea" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6472">'
            f"{escape(ticks[i])}</text>"
        )
        if line:
            out.append(
                f'<text x="{left + plot_w + 6}" y="{y + 4:.1f}" fill="#cf222e">'
                f"{escape(line_fmt(100 * i / 4))}</text>"
            )
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        tip = [label] + [f"{s.name}: {fmt(s.values[i])}" for s in series if s.values[i]]
        out.append(f"<g><title>{escape(' · '.join(tip))}</title>")
        out.append(
            f'<rect x="{left + slot * i:.1f}" y="{top}" width="{slot:.1f}" '
            f'height="{plot_h}" fill="transparent"/>'
        )
        for s in series:
            v = s.values[i]
            if not v:
                continue
            h = plot_h * v / ymax
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'rx="2" fill="{s.color}"/>'
            )
        out.append("</g>")
        if i % label_every == 0:
            out.append(
                f'<text x="{left + slot * i + slot / 2:.1f}" y="{height - 9}" '
                f'text-anchor="middle" fill="#5b6472">{escape(label)}</text>'
            )
    if line:
        points = [
            (left + slot * i + slot / 2, top + plot_h - plot_h * min(100.0, v) / 100)
            for i, v in enumerate(line.values)
            if v is not None and not math.isnan(v)
        ]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{line.color}" '
                f'stroke-width="2" stroke-linejoin="round"/>'
            )
            out += [
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{line.color}"/>'
                for x, y in points
            ]
    out.append("</svg>")
    head = ["Period", *(s.name for s in series)] + ([line.name] if line else [])
    rows = []
    for i, label in enumerate(labels):
        row = [label, *(fmt(s.values[i]) for s in series)]
        if line:
            rate: float | None = line.values[i] if i < len(line.values) else None
            row.append("—" if rate is None or math.isnan(rate) else line_fmt(rate))
        rows.append(row)
    out.append(_sr_table(aria, head, rows))
    return mark_safe("".join(out))  # noqa: S308  (every label above is escaped)


def legend(series: Sequence[Series], extra: Sequence[tuple[str, str]] = ()) -> SafeString:
    items = [(s.name, s.color) for s in series] + list(extra)
    return mark_safe(
        "".join(  # noqa: S308
            f'<span class="legend-item"><span class="legend-swatch" style="background:{color}">'
            f"</span>{escape(name)}</span>"
            for name, color in items
        )
    )


def range_bars(
    rows: Sequence[tuple[str, float, float, int]],
    *,
    width: int = 560,
    fmt: Callable[[float], str] = _num,
    aria: str = "latency",
) -> SafeString:
    """One row per label: a solid bar to p50 and a lighter one on to p95 (label, p50, p95, n)."""
    row_h, left, right, top = 30, 170, 130, 8
    height = top * 2 + row_h * max(1, len(rows))
    plot_w = width - left - right
    xmax = nice_max(max((r[2] for r in rows), default=0))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" aria-hidden="true" '
        f'focusable="false" {FONT} font-size="12">'
    ]
    for i, (label, p50, p95, n) in enumerate(rows):
        y = top + i * row_h
        w50, w95 = (plot_w * p50 / xmax, plot_w * p95 / xmax) if n else (0.0, 0.0)
        out.append(
            f"<g><title>{escape(label)}: p50 {escape(fmt(p50))}, p95 {escape(fmt(p95))} "
            f"over {n} steps</title>"
        )
        out.append(
            f'<text x="{left - 8}" y="{y + 19}" text-anchor="end" fill="#1b1f24" '
            f'font-weight="600">{escape(label)}</text>'
        )
        out.append(
            f'<rect x="{left}" y="{y + 7}" width="{plot_w}" height="14" rx="3" fill="#eef0f3"/>'
        )
        if n:
            out.append(
                f'<rect x="{left}" y="{y + 7}" width="{max(w95, 1.5):.1f}" height="14" '
                f'rx="3" fill="#9ec5fe"/>'
            )
            out.append(
                f'<rect x="{left}" y="{y + 7}" width="{max(w50, 1.5):.1f}" height="14" '
                f'rx="3" fill="#1f6feb"/>'
            )
        summary = f"{fmt(p50)} · {fmt(p95)}" if n else "no steps yet"
        out.append(
            f'<text x="{left + plot_w + 8}" y="{y + 19}" fill="#5b6472">'
            f"{escape(summary)}</text></g>"
        )
    out.append("</svg>")
    out.append(
        _sr_table(
            aria,
            ["Name", "p50", "p95", "Samples"],
            [
                [label, fmt(p50), fmt(p95), str(n)] if n else [label, "—", "—", "0"]
                for label, p50, p95, n in rows
            ],
        )
    )
    return mark_safe("".join(out))  # noqa: S308


def stacked_bar(
    parts: Sequence[tuple[str, float, str]],
    *,
    width: int = 520,
    height: int = 18,
    aria: str = "share",
) -> SafeString:
    """One horizontal bar split into parts (name, value, color), with tooltips."""
    total = sum(v for _, v, _ in parts) or 1.0
    # The figures in the label: "runs by status: succeeded 12, failed 3".
    figures = ", ".join(f"{name} {_num(value)}" for name, value, _ in parts if value) or "none"
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(f"{aria}: {figures}")}" preserveAspectRatio="none">',
        f'<rect x="0" y="0" width="{width}" height="{height}" rx="4" fill="#eef0f3"/>',
    ]
    x = 0.0
    for name, value, color in parts:
        if not value:
            continue
        w = width * value / total
        out.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" fill="{color}">'
            f"<title>{escape(name)}: {_num(value)}</title></rect>"
        )
        x += w
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308
