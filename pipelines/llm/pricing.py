"""Cost of a call from the price table in settings (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings

from pipelines.llm.config import COMPATIBLE, OFFLINE, ModelSpec

MILLION = Decimal(1_000_000)
# Run.cost and Step.cost keep six decimal places.
QUANTUM = Decimal("0.000001")


def price_of(spec: ModelSpec) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens, or None when the table has no entry.

    Looked up as ``provider:model``, then ``model``, then ``provider:*``. The offline analyzer
    and self-hosted OpenAI-compatible servers cost nothing unless the table says otherwise.
    """
    table: dict[str, tuple[float, float]] = dict(getattr(settings, "SLUICE_LLM_PRICES", {}) or {})
    for key in (spec.name, spec.model, f"{spec.provider}:*"):
        if key in table:
            inp, out = table[key]
            return Decimal(str(inp)), Decimal(str(out))
    if spec.provider in (OFFLINE, COMPATIBLE):
        return Decimal(0), Decimal(0)
    return None


def cost_of(spec: ModelSpec, input_tokens: int, output_tokens: int) -> Decimal:
    """What a call with these token counts cost (0 for a model missing from the table)."""
    price = price_of(spec)
    if price is None:
        return Decimal(0)
    inp, out = price
    total = (inp * input_tokens + out * output_tokens) / MILLION
    return total.quantize(QUANTUM)
