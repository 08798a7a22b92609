"""Turn a gate's payload (whatever JSON a pipeline produced) into something a person can read.

The payload is LLM output: untrusted. Nothing here marks anything safe; it only picks values
out of the JSON into plain strings and numbers for the templates, which escape them. Links are
kept only when their scheme is http or https (a ``javascript:`` URL becomes plain text).

Recognized shape (all optional): a list of "analyses" (under ``analyses``, ``results``,
``findings``, … or the payload itself being a list of objects), each with a title, a summary,
a ``confidence`` (0–1, or a percentage) and ``evidence`` (quotes as strings or objects with
``quote``/``source``/``url``). Other top-level values become facts above the cards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

LIST_KEYS = (
    "analyses",
    "analysis",
    "results",
    "findings",
    "items",
    "claims",
    "checks",
    "entities",
    "documents",
    "answers",
)
TITLE_KEYS = (
    "title",
    "name",
    "label",
    "analysis",
    "claim",
    "question",
    "field",
    "kind",
    "type",
    "category",
    "id",
)
BODY_KEYS = (
    "summary",
    "finding",
    "result",
    "answer",
    "conclusion",
    "explanation",
    "rationale",
    "reasoning",
    "text",
    "verdict",
    "value",
    "output",
    "description",
)
CONFIDENCE_KEYS = ("confidence", "score", "probability", "certainty")
EVIDENCE_KEYS = (
    "evidence",
    "quotes",
    "citations",
    "sources",
    "supporting_quotes",
    "references",
    "excerpts",
)
QUOTE_KEYS = ("quote", "text", "excerpt", "snippet", "content", "span")
SOURCE_KEYS = ("source", "document", "doc", "title", "file", "page", "section", "location")
URL_KEYS = ("url", "href", "link", "uri")
LEAD_KEYS = ("summary", "overview", "conclusion", "text")
MAX_TEXT = 4000


@dataclass
class Evidence:
    quote: str
    source: str = ""
    url: str = ""


@dataclass
class Card:
    title: str
    body: str = ""
    confidence: float | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)

    @property
    def confidence_pct(self) -> int | None:
        return None if self.confidence is None else round(self.confidence * 100)

    @property
    def level(self) -> str:
        if self.confidence is None:
            return ""
        if self.confidence >= 0.8:
            return "high"
        return "medium" if self.confidence >= 0.5 else "low"


@dataclass
class Presentation:
    lead: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list)
    raw: str = ""


def safe_url(value: Any) -> str:
    """``value`` if it is an absolute http(s) URL, else ""."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    if (
        parts.scheme.lower() in ("http", "https")
        and parts.netloc
        and not any(c in text for c in "\x00\r\n\t ")
    ):
        return text
    return ""


def humanize(key: str) -> str:
    words = str(key).replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:] if words else str(key)


def as_text(value: Any) -> str:
    """A short human string for a JSON value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (str, int)):
        return _clip(str(value))
    if isinstance(value, list) and all(
        isinstance(v, (str, int, float, bool)) or v is None for v in value
    ):
        return _clip(", ".join(as_text(v) for v in value))
    return _clip(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _confidence(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                text = value.strip()
                value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
            except ValueError:
                return None
        else:
            return None
    try:
        number = float(value)
    except OverflowError:  # an integer past a float's range: no confidence to show
        return None
    if 1 < number <= 100:
        number /= 100
    if 0 <= number <= 1:
        return number
    return None


def _first(
    data: dict[str, Any], keys: tuple[str, ...], kind: type | tuple[type, ...] = str
) -> tuple[str | None, Any]:
    for key in keys:
        value = data.get(key)
        if isinstance(value, kind) and not isinstance(value, bool) and value != "":
            return key, value
    return None, None


def _evidence(value: Any) -> list[Evidence]:
    items = value if isinstance(value, list) else [value]
    found: list[Evidence] = []
    for item in items[:50]:
        if isinstance(item, str) and item.strip():
            found.append(Evidence(quote=_clip(item.strip())))
        elif isinstance(item, dict):
            _, quote = _first(item, QUOTE_KEYS)
            _, source = _first(item, SOURCE_KEYS, (str, int))
            _, url = _first(item, URL_KEYS)
            if quote or source or url:
                found.append(
                    Evidence(
                        quote=_clip(str(quote or "")),
                        source=as_text(source) if source else "",
                        url=safe_url(url),
                    )
                )
                if url and not safe_url(url) and not source:
                    found[-1].source = _clip(str(url))
    return found


def card_for(item: dict[str, Any], index: int) -> Card:
    used: set[str] = set()
    title_key, title = _first(item, TITLE_KEYS, (str, int))
    body_key, body = _first(item, BODY_KEYS)
    used |= {k for k in (title_key, body_key) if k}
    card = Card(
        title=as_text(title) if title is not None else f"Analysis {index}",
        body=_clip(body) if body else "",
    )
    for key in CONFIDENCE_KEYS:
        if key in item and (conf := _confidence(item[key])) is not None:
            card.confidence = conf
            used.add(key)
            break
    for key in EVIDENCE_KEYS:
        if key in item:
            card.evidence += _evidence(item[key])
            used.add(key)
    for key, value in item.items():
        if key in used:
            continue
        if key in URL_KEYS and isinstance(value, str):
            url = safe_url(value)
            if url:
                card.links.append((humanize(key), url))
                continue
        card.facts.append((humanize(key), as_text(value)))
    return card


def present(payload: Any) -> Presentation:
    """Cards per analysis, facts, a lead text and the raw JSON of a gate's payload."""
    view = Presentation(raw=json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False))
    items: list[Any] | None = None
    rest: dict[str, Any] = {}
    if isinstance(payload, list):
        items = payload
    elif isinstance(payload, dict):
        rest = dict(payload)
        list_key = next((k for k in LIST_KEYS if _is_records(payload.get(k))), None)
        if list_key is None:
            list_key = next((k for k, v in payload.items() if _is_records(v)), None)
        if list_key is not None:
            items = payload[list_key]
            rest.pop(list_key)
        lead_key, lead = _first(rest, LEAD_KEYS)
        if lead_key:
            view.lead = _clip(lead)
            rest.pop(lead_key)
    elif payload is not None:
        view.lead = as_text(payload)
    if items is not None:
        for i, item in enumerate(items[:200], start=1):
            if isinstance(item, dict):
                view.cards.append(card_for(item, i))
            else:
                view.cards.append(Card(title=f"Item {i}", body=as_text(item)))
    elif rest and isinstance(payload, dict) and _looks_like_one_analysis(rest):
        view.cards.append(card_for(rest, 1))
        rest = {}
    elif rest:
        # No list of analyses: each nested object (one per analysis, say) becomes a card
        # titled by its key.
        for key, value in list(rest.items()):
            if isinstance(value, dict) and value:
                card = card_for(value, len(view.cards) + 1)
                if not any(k in value for k in TITLE_KEYS):
                    card.title = humanize(key)
                view.cards.append(card)
                rest.pop(key)
    # Facts are the plain values; nested structures stay readable in the raw JSON below.
    view.facts = [(humanize(k), as_text(v)) for k, v in rest.items() if _is_plain(v)]
    return view


def _is_plain(value: Any) -> bool:
    if isinstance(value, dict):
        return False
    if isinstance(value, list):
        return all(not isinstance(v, dict | list) for v in value)
    return True


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _looks_like_one_analysis(data: dict[str, Any]) -> bool:
    return any(k in data for k in CONFIDENCE_KEYS + EVIDENCE_KEYS)
