"""document_batch: extract → summarize → entities for N documents, fanned out with ``ctx.map``.

Each stage is one ``ctx.map`` over the documents: one journal row per document, run in
parallel (at most the run's ``max_parallel`` at once, in document order), joined in the
database. A finished document's row is never run again, so a batch whose worker is killed
after three of five documents resumes at the fourth. Each LLM row records its own tokens and
cost; the output lists them per document.
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


TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)


@step
def extract_document(document: dict[str, Any]) -> dict[str, Any]:
    """Plain text from the document (markup stripped, whitespace normalized) and its size."""
    text = html.unescape(TAG.sub(" ", document["text"]))
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
    return {
        "documents": results,
        "count": len(results),
        "generated_by": summaries[0].get("generated_by", "") if summaries else "",
    }


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
