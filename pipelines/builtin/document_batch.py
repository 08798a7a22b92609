"""document_batch: extract → summarize → entities for N documents, fanned out with ``ctx.map``.

Each stage is one ``ctx.map`` over the documents: one journal row per document, run in
parallel (at most the run's ``max_parallel`` at once, in document order), joined in the
database. A finished document's row is never run again, so a batch whose worker is killed
after three of five documents resumes at the fourth. Each LLM row records its own tokens and
cost, failed attempts included: the run's journal (the run page, ``GET /api/runs/{id}/steps``)
lists them per document. The output says which model wrote each document's summary and
entities (``generated_by_stage``), and ``generated_by`` names every model that wrote any.
"""

from __future__ import annotations

import html
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.builtin.common import llm_step
from pipelines.graph import Diagram
from pipelines.llm import LLMTask, complete, offline
from pipelines.registry import mark_pipeline
from workflows import step, workflow


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(..., min_length=1, max_length=200, title="Title")
    text: str = Field(
        ...,
        min_length=1,
        max_length=200_000,
        title="Text",
        description="Plain text or HTML (tags are stripped).",
        json_schema_extra={"widget": "textarea", "rows": 4},
    )


class DocumentBatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(..., min_length=1, max_length=100, title="Documents")


# A tag ends at the first ">" (or the next "<" starts another): "[^>]+" went on to the end of
# the text from every "<" that has no ">" after it, quadratic in a 200,000-character document.
TAG = re.compile(r"<[^<>]+>")
BLOCK = re.compile(r"<(script|style)\b", re.I)
BLOCK_END = {kind: re.compile(f"</{kind}>", re.I) for kind in ("script", "style")}


def strip_markup(text: str) -> str:
    """``text`` without tags, and without the content of ``<script>``/``<style>`` blocks.

    A block's end is looked up once per kind of block that has none: a regular expression
    (``<(script|style)\b.*?</\1>``) scanned to the end of the text from every unclosed opening
    tag, quadratic in the number of them."""
    parts: list[str] = []
    unclosed: set[str] = set()
    pos = 0
    while (m := BLOCK.search(text, pos)) is not None:
        kind = m.group(1).lower()
        end = None if kind in unclosed else BLOCK_END[kind].search(text, m.end())
        if end is None:
            unclosed.add(kind)  # no end after here, so none after any later one either
            parts.append(text[pos : m.end()])  # its opening tag goes with the other tags
            pos = m.end()
            continue
        parts += [text[pos : m.start()], " "]
        pos = end.end()
    parts.append(text[pos:])
    return TAG.sub(" ", "".join(parts))


@step
def extract_document(document: dict[str, Any]) -> dict[str, Any]:
    """Plain text from the document (markup stripped, whitespace normalized) and its size."""
    text = html.unescape(strip_markup(document["text"]))
    text = "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip())
    return {
        "title": document["title"],
        "text": text,
        "words": len(offline.words(text)),
        "sentences": len(offline.sentences(text)),
    }


class DocumentSummary(BaseModel):
    summary: str
    key_points: list[str]
    keywords: list[str]


SUMMARIZE = LLMTask(
    name="document_batch.summarize",
    output_type=DocumentSummary,
    instructions="Summarize the document in at most three sentences, list its key points and "
    "up to eight keywords.",
    prompt=lambda d: f"# {d['title']}\n\n{d['text'][:60_000]}",
    offline=lambda d: DocumentSummary(
        summary=" ".join(offline.summarize(d["text"], 2)),
        key_points=offline.summarize(d["text"], 4),
        keywords=offline.keywords(d["text"], 8),
    ),
)


@llm_step(SUMMARIZE)
def summarize_document(doc: dict[str, Any]) -> dict[str, Any]:
    return {"title": doc["title"], **complete(SUMMARIZE, doc).result()}


class Entities(BaseModel):
    people: list[str]
    organizations: list[str]
    places: list[str]
    dates: list[str]
    money: list[str]
    emails: list[str]


ENTITIES = LLMTask(
    name="document_batch.entities",
    output_type=Entities,
    instructions="List the named entities of the document: people, organizations, places, "
    "dates, amounts of money and e-mail addresses, each once, as written.",
    prompt=lambda d: f"# {d['title']}\n\n{d['text'][:60_000]}",
    offline=lambda d: Entities(**offline.entities(d["text"])),
)


@llm_step(ENTITIES)
def extract_entities(doc: dict[str, Any]) -> dict[str, Any]:
    return {"title": doc["title"], **complete(ENTITIES, doc).result()}


@workflow(
    name="document_batch",
    version=1,
    max_parallel=3,
    input_model=DocumentBatchInput,
    description="For each document: extract the text, summarize it and list its named "
    "entities. Documents run in parallel (three at a time); a crashed batch "
    "resumes where it stopped without redoing finished documents.",
)
def document_batch(ctx: Any, documents: list[Document]) -> dict[str, Any]:
    texts = ctx.map(extract_document, [d.model_dump() for d in documents])
    summaries = ctx.map(summarize_document, texts)
    entities = ctx.map(extract_entities, texts)
    results = []
    for text, summary, found in zip(texts, summaries, entities, strict=True):
        results.append(
            {
                "title": text["title"],
                "generated_by_stage": {
                    "summarize": summary.get("generated_by", ""),
                    "entities": found.get("generated_by", ""),
                },
                "words": text["words"],
                "summary": summary["summary"],
                "key_points": summary["key_points"],
                "keywords": summary["keywords"],
                "entities": {
                    k: found[k]
                    for k in ("people", "organizations", "places", "dates", "money", "emails")
                },
            }
        )
    # Each stage's model is its own setting (SLUICE_LLM_MODELS["document_batch.entities"]):
    # labelled by the summaries alone, a paid model's entities read "offline".
    stages = {
        stage: _labels(r.get("generated_by", "") for r in rows)
        for stage, rows in (("summarize", summaries), ("entities", entities))
    }
    return {
        "documents": results,
        "count": len(results),
        "generated_by": _labels(
            r.get("generated_by", "") for rows in (summaries, entities) for r in rows
        ),
        "generated_by_stage": stages,
    }


def _labels(labels: Any) -> str:
    """Distinct model labels in order, joined: ``offline``, or ``offline, openai:gpt-4o``."""
    return ", ".join(dict.fromkeys(label for label in labels if label))


# --- graph ------------------------------------------------------------------------------------

DIAGRAM = Diagram(initial="extract")
DIAGRAM.add("extract", "extract")
DIAGRAM.add("summarize", "summarize")
DIAGRAM.add("entities", "entities")
DIAGRAM.add("done", "done", "final")
DIAGRAM.edge("extract", "summarize", "each document")
DIAGRAM.edge("summarize", "entities", "each document")
DIAGRAM.edge("entities", "done")
STAGES = {
    "extract_document": "extract",
    "summarize_document": "summarize",
    "extract_entities": "entities",
}


def _locate(kind: str, name: str) -> str | None:
    return STAGES.get(name.removeprefix("map:"))


def mermaid_for_run(run: Any) -> str:
    return DIAGRAM.for_run(run, _locate, end_state="done")


SAMPLE = {
    "documents": [
        {
            "title": "Quarterly update",
            "text": "Acme Corp reported revenue of $4.2 million for Q3 2024, up 12% on the year. "
            "Chief executive Maria Lopez said the growth came from the new plant in Lyon. "
            "The board will meet on 14 November 2024 to approve the budget.",
        },
        {
            "title": "Partnership announcement",
            "text": "Northwind Labs and the University of Leeds signed a research agreement "
            "on March 3, "
            "2025. Dr. Amir Patel will lead the project from Leeds. Funding of €750,000 comes "
            "from the Innovation Agency. Contact press@northwind.example for details.",
        },
        {
            "title": "Incident report",
            "text": "<p>On 2025-01-18 the payment service in Frankfurt was unavailable for "
            "40 minutes.</p>"
            "<p>Engineers at Globex Ltd traced it to an expired certificate. No data was lost. "
            "Customers were refunded $12,300 in fees.</p>",
        },
    ]
}

mark_pipeline(
    document_batch,
    title="Document batch",
    mermaid=DIAGRAM.render(),
    mermaid_for_run=mermaid_for_run,
    sample_input=SAMPLE,
    order=3,
)
