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
    # Entries are numbers, or text as written in the environment (checked_price reads both).
    table: dict[str, Any] = dict(getattr(settings, "SLUICE_LLM_PRICES", {}) or {})
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
        if isinstance(entry, str | bytes):
            raise TypeError  # "12" would unpack as the prices 1 and 2
        inp, out = entry
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"SLUICE_LLM_PRICES[{key!r}] is not an (input, output) pair of prices: {entry!r}"
        ) from None
    price_in, price_out = _price(inp), _price(out)
    if price_in is None or price_out is None:
        price_in = price_out = Decimal("NaN")
    if not all(p.is_finite() and 0 <= p <= MAX_PRICE for p in (price_in, price_out)):
        raise ConfigurationError(
            f"SLUICE_LLM_PRICES[{key!r}]: each price must be a number from 0 to "
            f"{MAX_PRICE:,} (USD per million tokens), not {entry!r}"
        )
    return price_in, price_out


def _price(value: Any) -> Decimal | None:
    """A price as a Decimal, or None. Text too: the settings keep an environment entry
    (``openai:gpt-5=1.25/10``) as the strings it was written as, so that one nobody can read
    is this error (a system check error, a call that fails before it is sent), not a crash of
    the settings import."""
    if isinstance(value, bool):
        return None
    try:
        return Decimal(value.strip() if isinstance(value, str) else str(value))
    except (TypeError, ValueError, ArithmeticError):
        return None


def cost_of(spec: ModelSpec, input_tokens: int, output_tokens: int) -> Decimal:
    """What a call with these token counts cost (0 for a model missing from the table)."""
    price = price_of(spec)
    if price is None:
        return Decimal(0)
    inp, out = price
    total = (inp * input_tokens + out * output_tokens) / MILLION
    return total.quantize(QUANTUM)
