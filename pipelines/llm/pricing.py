"""Cost of a call from the price table in settings (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings

from pipelines.llm.config import COMPATIBLE, OFFLINE, ModelSpec
from pipelines.llm.errors import ConfigurationError

MILLION = Decimal(1_000_000)
# Run.cost and Step.cost keep six decimal places.
QUANTUM = Decimal("0.000001")
# A price is USD per million tokens: from 0 up to this.
MAX_PRICE = Decimal(1_000_000)


def price_of(spec: ModelSpec) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens, or None when the table has no entry.

    Looked up as ``provider:model``, then ``model``, then ``provider:*``. The offline analyzer
    and self-hosted OpenAI-compatible servers cost nothing unless the table says otherwise.
    """
    table: dict[str, tuple[float, float]] = dict(getattr(settings, "SLUICE_LLM_PRICES", {}) or {})
    for key in (spec.name, spec.model, f"{spec.provider}:*"):
        if key in table:
            return checked_price(key, table[key])
    if spec.provider in (OFFLINE, COMPATIBLE):
        return Decimal(0), Decimal(0)
    return None


def checked_price(key: str, entry: Any) -> tuple[Decimal, Decimal]:
    """A price table entry as two prices, or ``ConfigurationError`` (the system check reports
    it; a call with it fails before it is sent): NaN or a negative price would bill wrongly, or
    not at all, and let runs past their budget."""
    try:
        inp, out = entry
        prices = Decimal(str(inp)), Decimal(str(out))
    except (TypeError, ValueError, ArithmeticError):
        raise ConfigurationError(
            f"SLUICE_LLM_PRICES[{key!r}] is not an (input, output) pair of prices: {entry!r}"
        ) from None
    if not all(p.is_finite() and 0 <= p <= MAX_PRICE for p in prices):
        raise ConfigurationError(
            f"SLUICE_LLM_PRICES[{key!r}]: each price must be a number from 0 to "
            f"{MAX_PRICE:,} (USD per million tokens), not {entry!r}"
        )
    return prices


def cost_of(spec: ModelSpec, input_tokens: int, output_tokens: int) -> Decimal:
    """What a call with these token counts cost (0 for a model missing from the table)."""
    price = price_of(spec)
    if price is None:
        return Decimal(0)
    inp, out = price
    total = (inp * input_tokens + out * output_tokens) / MILLION
    return total.quantize(QUANTUM)
