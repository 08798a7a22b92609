"""support_ticket: answer a customer request, code-first.

customer history (the run's tenant's tickets only) → summary → create ticket →
knowledge-base context → up to 5 attempts of (draft a resolution, grade it) until the grade
passes → update the ticket → reply to the customer through the outbox (once per ticket). When
no draft passes, a reviewer approves (and may edit) the reply or rejects it, which escalates
the ticket instead; so does approving an emptied reply, which sends nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field

from pipelines.builtin.common import llm_step
from pipelines.graph import Diagram
from pipelines.llm import LLMTask, complete, offline
from pipelines.registry import mark_pipeline
from workflows import current_step, step, workflow
from workflows.core.outbox import register_outbox_handler

MAX_ATTEMPTS = 5
PASS_SCORE = 0.85
REPLY_KIND = "support.reply"


class SupportTicketInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_email: str = Field(
        ..., max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", title="Customer e-mail"
    )
    subject: str = Field(..., min_length=1, max_length=200, title="Subject")
    message: str = Field(
        ...,
        min_length=1,
        max_length=20_000,
        title="Message",
        json_schema_extra={"widget": "textarea", "rows": 6},
    )
    channel: Literal["email", "chat", "web"] = Field("email", title="Channel")


# --- knowledge base ---------------------------------------------------------------------------

KNOWLEDGE_BASE: list[dict[str, Any]] = [
    {
        "id": "KB-101",
        "title": "Refunds and double charges",
        "keywords": ["refund", "charged", "charge", "twice", "double", "money", "payment"],
        "body": "Duplicate charges are refunded automatically within 5 business days "
        "once we confirm "
        "them. You can see every charge under Settings → Billing → Payments.",
    },
    {
        "id": "KB-102",
        "title": "Downloading invoices",
        "keywords": ["invoice", "invoices", "receipt", "vat", "billing", "pdf"],
        "body": "Invoices are under Settings → Billing → Invoices; each has a PDF download and "
        "shows your VAT number when it is set on the billing profile.",
    },
    {
        "id": "KB-201",
        "title": "Resetting your password",
        "keywords": ["password", "reset", "login", "log", "locked", "sign"],
        "body": "Use “Forgot password” on the sign-in page; the reset link is valid for "
        "30 minutes. "
        "After five failed sign-ins the account is locked for 15 minutes.",
    },
    {
        "id": "KB-202",
        "title": "Two-factor authentication",
        "keywords": ["2fa", "two-factor", "authenticator", "code", "codes", "phone"],
        "body": "If you lost your authenticator, sign in with a recovery code and set up 2FA again "
        "under Settings → Security.",
    },
    {
        "id": "KB-301",
        "title": "Exporting your data",
        "keywords": ["export", "csv", "download", "data", "backup"],
        "body": "Settings → Data → Export creates a CSV archive of all projects; large exports are "
        "e-mailed as a link when ready.",
    },
    {
        "id": "KB-401",
        "title": "Service status and outages",
        "keywords": ["down", "outage", "unavailable", "slow", "error", "errors", "500"],
        "body": "Live status and incident history are on the status page. During an incident, "
        "retrying after a few minutes is safe; no data is lost.",
    },
]


# --- steps ------------------------------------------------------------------------------------


def _run_tenant(what: str) -> str:
    """The tenant of the run the current step belongs to: tickets are kept per tenant."""
    from workflows.models import Run

    scope = current_step()
    if scope is None:
        raise RuntimeError(f"{what} runs as a step of a support_ticket run")
    tenant = Run.objects.filter(pk=scope.run_id).values_list("tenant", flat=True).first()
    return tenant or ""


@step
def customer_history(email: str) -> dict[str, Any]:
    """Earlier tickets of this customer in this run's tenant (from the tickets table). Another
    tenant's tickets of the same address are not this customer's history: their subjects go
    into the summary, and from there into a model's prompt and the reply."""
    from pipelines.models import Ticket

    rows = list(
        Ticket.objects.filter(tenant=_run_tenant("customer_history"), customer_email__iexact=email)
        .order_by("-created_at")[:5]
        .values("id", "subject", "status", "category", "created_at")
    )
    return {
        "previous_tickets": [{**r, "created_at": r["created_at"].date().isoformat()} for r in rows],
        "returning_customer": bool(rows),
    }


class RequestSummary(BaseModel):
    summary: str
    category: Literal["billing", "account", "bug", "how-to", "outage", "other"]
    urgency: Literal["low", "normal", "high"]
    sentiment: float = Field(ge=-1, le=1)
    key_terms: list[str]


CATEGORY_WORDS = {
    "billing": {
        "invoice",
        "charged",
        "charge",
        "refund",
        "payment",
        "billing",
        "card",
        "twice",
        "vat",
    },
    "account": {"password", "login", "locked", "2fa", "account", "sign", "email"},
    "outage": {"down", "outage", "unavailable", "500", "offline"},
    "bug": {"error", "crash", "broken", "bug", "fails", "failing", "wrong"},
    "how-to": {"how", "export", "import", "setup", "configure", "where", "can"},
}
URGENT = ("urgent", "asap", "immediately", "right now", "charged twice", "lost", "outage", "down")


def _summary_offline(data: dict[str, Any]) -> RequestSummary:
    text = f"{data['subject']}. {data['message']}"
    ws = set(offline.words(text))
    scores = {cat: len(ws & words) for cat, words in CATEGORY_WORDS.items()}
    category = max(scores, key=lambda c: scores[c]) if max(scores.values()) else "other"
    lowered = text.lower()
    urgency: Literal["low", "normal", "high"] = (
        "high"
        if any(u in lowered for u in URGENT) or offline.intensity(text) > 0.5
        else "low"
        if category == "how-to"
        else "normal"
    )
    history = data.get("history") or {}
    summary = " ".join(offline.summarize(data["message"], 2))
    if history.get("returning_customer"):
        summary += f" Returning customer with {len(history['previous_tickets'])} earlier ticket(s)."
    return RequestSummary(
        summary=summary,
        category=category,  # type: ignore[arg-type]
        urgency=urgency,
        sentiment=offline.sentiment(text),
        key_terms=offline.keywords(text, 5),
    )


SUMMARIZE = LLMTask(
    name="support_ticket.summarize",
    output_type=RequestSummary,
    instructions="Summarize a customer's support request in two sentences, classify it "
    "(billing, account, bug, how-to, outage, other), rate its urgency and sentiment, "
    "and list up to five key terms the reply must address.",
    prompt=lambda d: f"Subject: {d['subject']}\n\n{d['message']}\n\nHistory: {d.get('history')}",
    offline=_summary_offline,
)


@llm_step(SUMMARIZE)
def summarize_request(data: dict[str, Any]) -> dict[str, Any]:
    return complete(SUMMARIZE, data).result()


@step
def create_ticket(data: dict[str, Any]) -> dict[str, Any]:
    """Open the ticket; one per run, so a retried attempt finds the one it made."""
    from pipelines.models import Ticket

    scope = current_step()
    if scope is None:
        raise RuntimeError("create_ticket runs as a step of a support_ticket run")
    summary = data["summary"]
    ticket, _ = Ticket.objects.get_or_create(
        run_id=scope.run_id,
        defaults={
            "tenant": _run_tenant("create_ticket"),
            "customer_email": data["customer_email"],
            "subject": data["subject"],
            "message": data["message"],
            "category": summary["category"],
            "urgency": summary["urgency"],
            "summary": summary["summary"],
        },
    )
    return {"ticket_id": ticket.pk}


@step
def gather_context(data: dict[str, Any]) -> dict[str, Any]:
    """The knowledge-base articles that share the most words with the request."""
    ws = set(offline.words(f"{data['subject']} {data['message']}"))
    scored = sorted(
        ((len(ws & set(a["keywords"])), a) for a in KNOWLEDGE_BASE), key=lambda x: -x[0]
    )
    return {"articles": [a for score, a in scored if score >= 1][:2]}


class Draft(BaseModel):
    reply: str
    cited_articles: list[str]


def _name(email: str) -> str:
    local = email.split("@", 1)[0].split(".")[0].split("+")[0]
    return local.capitalize() if local.isalpha() else "there"


def _draft_offline(data: dict[str, Any]) -> Draft:
    articles = data["articles"]
    lines = [f"Hi {_name(data['customer_email'])},", "", "Thanks for getting in touch."]
    for article in articles:
        lines.append(f"{article['body']} (see {article['id']}: {article['title']})")
    unanswered = []
    for term in data.get("missing_terms", []):
        sentence = next(
            (s for a in articles for s in offline.sentences(a["body"]) if term in offline.words(s)),
            "",
        )
        if sentence and sentence not in lines:
            lines.append(sentence)
        else:
            unanswered.append(f"“{term}”")
    if unanswered:
        lines.append(
            f"You also mentioned {', '.join(unanswered)}: we have noted this on your "
            "ticket and will follow up on each point."
        )
    if not articles:
        lines.append("We are looking into this and will get back to you.")
    lines += [
        "",
        f"Your ticket number is #{data['ticket_id']}; reply to this message to add details.",
        "",
        "Best regards,",
        "Sluice Support",
    ]
    return Draft(reply="\n".join(lines), cited_articles=[a["id"] for a in articles])


DRAFT = LLMTask(
    name="support_ticket.draft",
    output_type=Draft,
    instructions="Write a friendly, specific reply to the customer that resolves their request "
    "using only the knowledge-base articles given, cites them by id, mentions the "
    "ticket number, and fixes every issue the grader raised last time.",
    prompt=lambda d: (
        f"Request: {d['subject']}\n{d['message']}\n\nTicket #{d['ticket_id']}\n"
        f"Articles: {d['articles']}\nGrader feedback: {d.get('feedback') or 'none'}"
    ),
    offline=_draft_offline,
)


@llm_step(DRAFT)
def draft_resolution(data: dict[str, Any]) -> dict[str, Any]:
    return complete(DRAFT, data).result()


class Grade(BaseModel):
    score: float = Field(ge=0, le=1)
    passed: bool
    issues: list[str]
    missing_terms: list[str]


def _grade_offline(data: dict[str, Any]) -> Grade:
    reply = data["draft"]["reply"]
    issues: list[str] = []
    cover, missing = offline.coverage(data["key_terms"], reply)
    if missing:
        issues.append("does not address: " + ", ".join(missing))
    grounded = bool(data["draft"]["cited_articles"])
    if not grounded:
        issues.append("no knowledge-base article supports the answer")
    n_words = len(offline.words(reply))
    if not 30 <= n_words <= 400:
        issues.append(f"length {n_words} words (30–400 expected)")
    polite = reply.lower().startswith("hi") and "regards" in reply.lower()
    if not polite:
        issues.append("missing greeting or sign-off")
    score = round(0.5 * cover + 0.3 * grounded + 0.1 * (30 <= n_words <= 400) + 0.1 * polite, 3)
    return Grade(
        score=score, passed=grounded and score >= PASS_SCORE, issues=issues, missing_terms=missing
    )


GRADE = LLMTask(
    name="support_ticket.grade",
    output_type=Grade,
    instructions=f"Grade a support reply from 0 to 1: does it address every key term, rely on a "
    f"cited knowledge-base article, stay between 30 and 400 words, greet and sign "
    f"off? It passes at {PASS_SCORE} when grounded. List the issues and the key "
    "terms it misses.",
    prompt=lambda d: f"Key terms: {d['key_terms']}\n\nReply:\n{d['draft']['reply']}",
    offline=_grade_offline,
)


@llm_step(GRADE)
def grade_resolution(data: dict[str, Any]) -> dict[str, Any]:
    return complete(GRADE, data).result()


@step
def update_ticket(
    ticket_id: int, status: str, resolution: str, grade: float, attempts: int
) -> dict[str, Any]:
    from pipelines.models import Ticket

    Ticket.objects.filter(pk=ticket_id).update(
        status=status,
        resolution=resolution,
        grade=grade,
        attempts=attempts,
        updated_at=timezone.now(),
    )
    return {"ticket_id": ticket_id, "status": status}


@step
def send_reply(ticket_id: int, to: str, subject: str, body: str) -> dict[str, Any]:
    """Queue the reply in the outbox, once per ticket. The key is the ticket, so a retried step
    (or a restarted run) finds the row it already wrote; and a ticket whose reply already left
    (``reply_sent_at``) gets none queued at all, as retention prunes delivered rows
    (``SLUICE_OUTBOX_RETENTION_DAYS``) and a restart after that would mail the customer again."""
    from pipelines.models import Ticket
    from workflows.core.services import enqueue_outbox

    scope = current_step()
    key = f"support-reply:{ticket_id}"
    sent_at = Ticket.objects.filter(pk=ticket_id).values_list("reply_sent_at", flat=True).first()
    if sent_at is not None:
        return {"outbox_key": key, "already_sent_at": sent_at.isoformat()}
    with transaction.atomic():
        enqueue_outbox(
            REPLY_KIND,
            key,
            # One line: a mail header refuses CR and LF, and the subject is the customer's text.
            {"ticket_id": ticket_id, "to": to, "subject": _subject(subject), "body": body},
            run=_run(scope.run_id) if scope else None,
        )
    return {"outbox_key": key}


def _subject(subject: str) -> str:
    """The reply's subject: ``Re:`` and the ticket's subject on one line, at most 200 chars."""
    return ("Re: " + " ".join(str(subject).split()))[:200]


def _run(run_id: Any) -> Any:
    from workflows.models import Run

    return Run.objects.filter(pk=run_id).first()


def deliver_reply(row: Any) -> None:
    """Outbox handler: record the reply on the ticket, and e-mail it when configured."""
    from pipelines.models import Ticket

    data = row.payload
    if Ticket.objects.filter(pk=data["ticket_id"], reply_sent_at__isnull=False).exists():
        return  # Its reply already left (a redelivered row, or a second row): never mail twice.
    if getattr(settings, "SLUICE_SUPPORT_SEND_EMAIL", False):
        from django.core.mail import send_mail

        send_mail(data["subject"], data["body"], settings.SLUICE_SUPPORT_FROM_EMAIL, [data["to"]])
    # A compare-and-swap: a redelivered row (after a crash mid-handler) leaves the first record.
    Ticket.objects.filter(pk=data["ticket_id"], reply_sent_at__isnull=True).update(
        reply=data["body"], reply_sent_at=timezone.now()
    )


register_outbox_handler(REPLY_KIND, deliver_reply)


# --- the workflow -----------------------------------------------------------------------------

REVIEW_TITLE = "Approve support reply"


@workflow(
    name="support_ticket",
    version=1,
    input_model=SupportTicketInput,
    description="Answer a customer request: summarize it with the customer's history, "
    "open a ticket, draft and grade a reply up to 5 times until it passes, "
    "update the ticket and send the reply through the outbox; a reviewer "
    "approves or edits the reply when no draft passed.",
)
def support_ticket(
    ctx: Any, customer_email: str, subject: str, message: str, channel: str = "email"
) -> dict[str, Any]:
    request = {
        "customer_email": customer_email,
        "subject": subject,
        "message": message,
        "channel": channel,
    }
    history = ctx.run(customer_history, customer_email)
    summary = ctx.run(summarize_request, {**request, "history": history})
    ticket_id = ctx.run(create_ticket, {**request, "summary": summary})["ticket_id"]
    articles = ctx.run(gather_context, request)["articles"]
    draft: dict[str, Any] = {}
    grade: dict[str, Any] = {}
    missing: list[str] = []
    attempts = 0
    for attempts in range(1, MAX_ATTEMPTS + 1):  # noqa: B007 (the count is reported)
        draft = ctx.run(
            draft_resolution,
            {
                **request,
                "ticket_id": ticket_id,
                "articles": articles,
                "feedback": grade.get("issues", []),
                "missing_terms": missing,
            },
        )
        grade = ctx.run(grade_resolution, {"draft": draft, "key_terms": summary["key_terms"]})
        if grade["passed"]:
            break
        missing = grade["missing_terms"]
    reply = draft["reply"]
    status, reviewed = "resolved", None
    if not grade["passed"]:
        decision = ctx.review(
            title=REVIEW_TITLE,
            instruction=f"No draft passed grading in {MAX_ATTEMPTS} attempts. Edit the reply if "
            "needed and approve to send it, or reject to escalate the ticket.",
            payload={
                "ticket": ticket_id,
                "customer": customer_email,
                "subject": subject,
                "message": message,
                "reply": reply,
                "grade": grade,
            },
            timeout=ctx.review_timeout,  # 24 h unless the run was started with review_timeout
            on_timeout="reject",
            choices=("approve", "reject"),
            fields={
                "type": "object",
                "properties": {
                    "reply": {"type": "string", "title": "Reply to the customer", "default": reply}
                },
            },
        )
        reviewed = {
            "outcome": decision.outcome,
            "by": decision.decided_by,
            "timed_out": decision.timed_out,
            "comment": decision.comment,
        }
        edits = decision.edits if isinstance(decision.edits, dict) else {}
        if isinstance(edits.get("reply"), str):
            reply = edits["reply"]
        status = "resolved" if decision.outcome == "approve" else "escalated"
        if status == "resolved" and not reply.strip():
            # Approved with the reply field emptied: there is nothing to send, and the failing
            # draft is what the reviewer removed. Nobody answered the customer, so the ticket
            # is escalated to a person, and the output says why.
            status = "escalated"
            reviewed["note"] = (
                "approved with an empty reply: nothing was sent and the ticket was escalated"
            )
    ctx.run(
        update_ticket,
        ticket_id,
        status,
        reply if status == "resolved" else "",
        grade["score"],
        attempts,
    )
    sent = None
    if status == "resolved":
        sent = ctx.run(send_reply, ticket_id, customer_email, subject, reply)
    return {
        "ticket_id": ticket_id,
        "status": status,
        "attempts": attempts,
        "grade": grade,
        "review": reviewed,
        "reply": reply if sent else "",
        "outbox_key": sent["outbox_key"] if sent else None,
        "generated_by": draft.get("generated_by", ""),
    }


# --- graph ------------------------------------------------------------------------------------


def _diagram() -> Diagram:
    d = Diagram(initial="customer_history")
    for node, label in (
        ("customer_history", "customer history"),
        ("summarize", "summarize"),
        ("create_ticket", "create ticket"),
        ("gather_context", "gather context"),
        ("draft", "draft resolution"),
        ("grade", "grade"),
    ):
        d.add(node, label)
    d.add("review", "reviewer approves reply", "gate")
    d.add("update_ticket", "update ticket")
    d.add("send_reply", "send reply (outbox)")
    d.add("escalated", "escalated", "final")
    d.add("done", "done", "final")
    for a, b, label in (
        ("customer_history", "summarize", ""),
        ("summarize", "create_ticket", ""),
        ("create_ticket", "gather_context", ""),
        ("gather_context", "draft", ""),
        ("draft", "grade", ""),
        ("grade", "draft", "failed, try again"),
        ("grade", "update_ticket", "passed"),
        ("grade", "review", f"failed {MAX_ATTEMPTS} times"),
        ("review", "update_ticket", "approve"),
        ("review", "escalated", "reject / timeout / empty reply"),
        ("update_ticket", "send_reply", "resolved"),
        ("send_reply", "done", ""),
    ):
        d.edge(a, b, label)
    return d


DIAGRAM = _diagram()
STEP_STATES = {
    "customer_history": "customer_history",
    "summarize_request": "summarize",
    "create_ticket": "create_ticket",
    "gather_context": "gather_context",
    "draft_resolution": "draft",
    "grade_resolution": "grade",
    "update_ticket": "update_ticket",
    "send_reply": "send_reply",
    REVIEW_TITLE: "review",
}


def _locate(kind: str, name: str) -> str | None:
    return STEP_STATES.get(name)


def mermaid_for_run(run: Any) -> str:
    end = None
    if run.status == "succeeded":
        end = "escalated" if (run.output or {}).get("status") == "escalated" else "done"
    return DIAGRAM.for_run(run, _locate, end_state=end)


SAMPLE = {
    "customer_email": "dana@example.com",
    "subject": "Charged twice for my subscription",
    "message": "Hi, I was charged twice for my March subscription and I need a refund for the "
    "duplicate payment. Also, where can I download the invoice for my accountant? "
    "This is urgent because the card is nearly at its limit.",
    "channel": "email",
}

mark_pipeline(
    support_ticket,
    title="Support ticket",
    mermaid=DIAGRAM.render(),
    mermaid_for_run=mermaid_for_run,
    sample_input=SAMPLE,
    order=2,
)
