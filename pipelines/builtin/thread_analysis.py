"""thread_analysis: psychological analysis of a message thread, as a state machine.

parse → three analyses in parallel (DARVO, manipulation tactics, psychological profile; two
of three must succeed) → a guard picks the review path (DARVO found or not) → a review gate
that waits the run's review timeout, 24 hours by default (approve → synthesis; reject → the
analyses run again with the reviewer's comment in their prompts; no decision → approved) →
synthesis.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.builtin.common import llm_step
from pipelines.llm import LLMTask, complete, offline
from pipelines.machine import final, goto, human, machine, parallel, state
from workflows import NonRetryableError, step

# --- input and parsing ------------------------------------------------------------------------


class ThreadInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(
        "",
        max_length=200,
        title="Title",
        description="A name for this analysis, shown to reviewers.",
    )
    thread: str = Field(
        ...,
        min_length=1,
        max_length=50_000,
        title="Message thread",
        description="One message per line, written as “Name: message” (any script; “Name：” "
        "too). Lines without a name continue the previous message.",
        json_schema_extra={"widget": "textarea", "rows": 10},
    )


# A speaker's name: up to 40 characters before the first colon (":" or the full-width "：" of
# Chinese and Japanese text), starting with a letter of any script or an emoji, then letters,
# digits, marks (accents, emoji variation selectors), emoji, spaces and . ' ’ - _. A line that
# starts otherwise ("10:30 works", "https://…") continues the previous message.
NAME_MAX = 40
COLON = re.compile(r"[:：]")
NAME_PUNCTUATION = frozenset(" .'’-_\u200d")  # U+200D joins the parts of one emoji
# Lines before the first named message are kept, as this speaker's message: dropped, they
# were lost without a word; joined to the first message, they were put in its author's mouth.
UNNAMED = "(unnamed)"
URI_SCHEMES = frozenset(
    {"mailto", "tel", "sms", "urn", "http", "https", "ftp", "file", "data", "news", "irc"}
)


def _is_name_char(c: str) -> bool:
    return c.isalnum() or c in NAME_PUNCTUATION or unicodedata.category(c)[0] in "MS"


def split_speaker(line: str) -> tuple[str, str] | None:
    """``(name, message)`` of a ``Name: message`` line, or None when the line names nobody."""
    colon = COLON.search(line)
    if colon is None:
        return None
    name, text = line[: colon.start()].strip(), line[colon.end() :].strip()
    if not name or len(name) > NAME_MAX or text.startswith("//"):
        return None
    if not (name[0].isalpha() or unicodedata.category(name[0]) == "So"):
        return None
    if not all(_is_name_char(c) for c in name):
        return None
    # Prose with a colon is no speaker: "and then he said: …", "note to self: …" (a lowercase
    # name is one word), "mailto:…" (a URI scheme), or a name of more than four words.
    words = name.split()
    if len(words) > 4 or (name[0].islower() and len(words) > 1):
        return None
    if name.lower() in URI_SCHEMES:
        return None
    return name, text


@step
def parse_thread(data: dict[str, Any]) -> dict[str, Any]:
    """Split the thread into messages by speaker. A line without a name continues the message
    before it; lines before the first name form a message of their own, by ``(unnamed)``."""
    messages: list[dict[str, Any]] = []
    for line in data["thread"].splitlines():
        if not line.strip():
            continue
        named = split_speaker(line)
        if named:
            messages.append({"speaker": named[0], "text": named[1]})
        elif messages:
            messages[-1]["text"] = f"{messages[-1]['text']} {line.strip()}".strip()
        else:
            messages.append({"speaker": UNNAMED, "text": line.strip()})
    # "Name:" alone on its line is followed by its text; one never followed says nothing.
    messages = [m for m in messages if m["text"]]
    participants = list(dict.fromkeys(m["speaker"] for m in messages if m["speaker"] != UNNAMED))
    if not participants:
        raise NonRetryableError("no messages found: write one message per line as “Name: message”")
    for n, msg in enumerate(messages, 1):
        msg["n"] = n
    return {
        "messages": [{"n": m["n"], "speaker": m["speaker"], "text": m["text"]} for m in messages],
        "participants": participants,
    }


# --- shared output pieces ---------------------------------------------------------------------


class Finding(BaseModel):
    label: str
    speaker: str
    quote: str


def _findings(
    messages: list[dict[str, Any]], lexicon: dict[str, list[re.Pattern[str]]]
) -> list[Finding]:
    found = []
    for msg in messages:
        for hit in offline.find(msg["text"], lexicon):
            found.append(Finding(label=hit.label, speaker=msg["speaker"], quote=hit.evidence))
    return found


def _transcript(data: dict[str, Any]) -> str:
    lines = [f"{m['speaker']}: {m['text']}" for m in data.get("messages", [])]
    feedback = data.get("reviewer_comment") or ""
    if feedback:
        lines.append("")
        lines.append(f"A reviewer rejected the previous analysis with this comment: {feedback}")
        lines.append("Take it into account.")
    return "\n".join(lines)


def _revision(data: dict[str, Any]) -> str:
    comment = data.get("reviewer_comment") or ""
    return f"Revised after reviewer feedback: “{comment}”." if comment else ""


# --- DARVO ------------------------------------------------------------------------------------


class DarvoAnalysis(BaseModel):
    detected: bool = Field(
        description="True when one speaker shows at least two of deny, attack "
        "and reverse victim/offender."
    )
    confidence: float = Field(ge=0, le=1)
    speaker: str = Field("", description="Who shows the pattern most, if anyone.")
    findings: list[Finding]
    explanation: str
    revision_note: str = ""


DARVO_LEXICON = offline.compile_lexicon(
    {
        "deny": [
            "I never",
            "never said",
            "that never happened",
            "didn't happen",
            "not true",
            "you're making that up",
            "making things up",
            "I did not",
            "I didn't do",
            "you imagined",
        ],
        "attack": [
            "you always",
            "you never",
            "you're crazy",
            "you are crazy",
            "your fault",
            "you're the one",
            "you are the one",
            "what is wrong with you",
            "you're insane",
            "you're pathetic",
            "you're so dramatic",
            "you're unstable",
            "liar",
        ],
        "reverse": [
            "I'm the victim",
            "I am the victim",
            "you're hurting me",
            "you are hurting me",
            "after everything I",
            "look what you made me",
            "you made me",
            "I'm the one suffering",
            "you're attacking me",
            "you are attacking me",
            "how could you do this to me",
            "you're abusing me",
            "you are abusing me",
        ],
    }
)


def _darvo_offline(data: dict[str, Any]) -> DarvoAnalysis:
    findings = _findings(data["messages"], DARVO_LEXICON)
    by_speaker: dict[str, set[str]] = {}
    for f in findings:
        by_speaker.setdefault(f.speaker, set()).add(f.label)
    speaker, parts = max(by_speaker.items(), key=lambda kv: len(kv[1]), default=("", set()))
    detected = len(parts) >= 2
    confidence = round(min(0.95, len(parts) / 3 * 0.8 + min(len(findings), 6) * 0.025), 2)
    if detected:
        text = (
            f"{speaker} shows {len(parts)} of 3 DARVO components ({', '.join(sorted(parts))}) "
            f"across {len(findings)} matching statements."
        )
    elif findings:
        text = "Isolated DARVO-like statements, but no speaker shows two components."
    else:
        text = "No statements matching deny, attack or reverse-victim patterns."
    return DarvoAnalysis(
        detected=detected,
        confidence=confidence if findings else 0.05,
        speaker=speaker if detected else "",
        findings=findings,
        explanation=text,
        revision_note=_revision(data),
    )


DARVO = LLMTask(
    name="thread_analysis.analyze_darvo",
    output_type=DarvoAnalysis,
    instructions=(
        "You analyse message threads for DARVO (Deny, Attack, Reverse Victim and Offender). "
        "Quote the statements that show each component and name the speaker. Report DARVO as "
        "detected only when one speaker shows at least two components. Be conservative."
    ),
    prompt=_transcript,
    offline=_darvo_offline,
)


@llm_step(DARVO)
def analyze_darvo(data: dict[str, Any]) -> dict[str, Any]:
    answer = complete(DARVO, data)
    return {"darvo": answer.result(), "darvo_detected": answer.output.detected}


# --- manipulation tactics ---------------------------------------------------------------------


class Tactic(BaseModel):
    name: str
    count: int = Field(ge=0)
    examples: list[Finding]


class TacticsAnalysis(BaseModel):
    tactics: list[Tactic]
    most_frequent: str = ""
    explanation: str
    revision_note: str = ""


TACTICS_LEXICON = offline.compile_lexicon(
    {
        "gaslighting": [
            "you're imagining",
            "you are imagining",
            "that never happened",
            "you're too sensitive",
            "you're remembering it wrong",
            "you're overthinking",
            "nobody else thinks",
            "you're confused",
            "I never said that",
        ],
        "guilt-tripping": [
            "after everything I",
            "if you really loved me",
            "I guess I'm just",
            "you don't care about",
            "I sacrificed",
            "you owe me",
        ],
        "blame-shifting": [
            "your fault",
            "you made me",
            "because of you",
            "if you hadn't",
            "look what you made me",
        ],
        "minimizing": [
            "just a joke",
            "overreacting",
            "not a big deal",
            "calm down",
            "relax",
            "making a big deal",
            "so dramatic",
        ],
        "stonewalling": [
            "I'm not talking about this",
            "I'm done talking",
            "whatever",
            "not discussing",
            "leave me alone",
            "this conversation is over",
        ],
        "threats": [
            "or else",
            "you'll regret",
            "I'll leave",
            "I will leave",
            "you'll be sorry",
            "I'll tell everyone",
            "I'll make sure",
        ],
        "name-calling": ["idiot", "stupid", "pathetic", "crazy", "psycho", "loser", "insane"],
    }
)


def _tactics_offline(data: dict[str, Any]) -> TacticsAnalysis:
    findings = _findings(data["messages"], TACTICS_LEXICON)
    grouped: dict[str, list[Finding]] = {}
    for f in findings:
        grouped.setdefault(f.label, []).append(f)
    tactics = sorted(
        (Tactic(name=k, count=len(v), examples=v[:3]) for k, v in grouped.items()),
        key=lambda t: (-t.count, t.name),
    )
    if tactics:
        text = "Found " + ", ".join(f"{t.name} ×{t.count}" for t in tactics) + "."
    else:
        text = "No manipulation tactics from the lexicon were found."
    return TacticsAnalysis(
        tactics=tactics,
        most_frequent=tactics[0].name if tactics else "",
        explanation=text,
        revision_note=_revision(data),
    )


TACTICS = LLMTask(
    name="thread_analysis.analyze_tactics",
    output_type=TacticsAnalysis,
    instructions=(
        "You identify manipulation tactics in a message thread (gaslighting, guilt-tripping, "
        "blame-shifting, minimizing, stonewalling, threats, name-calling). Count each tactic and "
        "quote up to three examples with their speaker."
    ),
    prompt=_transcript,
    offline=_tactics_offline,
)


@llm_step(TACTICS)
def analyze_tactics(data: dict[str, Any]) -> dict[str, Any]:
    return {"tactics": complete(TACTICS, data).result()}


# --- psychological profile --------------------------------------------------------------------


class SpeakerProfile(BaseModel):
    speaker: str
    messages: int = Field(ge=0)
    sentiment: float = Field(ge=-1, le=1, description="-1 hostile … 1 warm")
    intensity: float = Field(ge=0, le=1)
    you_statements: int = Field(ge=0)
    i_statements: int = Field(ge=0)
    apologies: int = Field(ge=0)
    questions: int = Field(ge=0)
    tone: str


class PsychologicalAnalysis(BaseModel):
    speakers: list[SpeakerProfile]
    escalation: bool = Field(description="True when hostility rises over the thread.")
    dynamics: str
    revision_note: str = ""


YOU = re.compile(r"\byou(?:'re| are|'ve| have| always| never)?\b", re.I)
I_STATEMENT = re.compile(r"\bI (?:feel|felt|think|need|want|am|was)\b")
APOLOGY = re.compile(r"\b(?:sorry|apologi[sz]e|my bad|my fault)\b", re.I)


def _tone(sentiment: float, intensity: float) -> str:
    if sentiment <= -0.3:
        return "hostile" if intensity >= 0.3 else "negative"
    if sentiment >= 0.3:
        return "warm"
    return "tense" if intensity >= 0.3 else "neutral"


def _psych_offline(data: dict[str, Any]) -> PsychologicalAnalysis:
    profiles = []
    for speaker in data["participants"]:
        texts = [m["text"] for m in data["messages"] if m["speaker"] == speaker]
        joined = " ".join(texts)
        sent, inten = offline.sentiment(joined), offline.intensity(joined)
        profiles.append(
            SpeakerProfile(
                speaker=speaker,
                messages=len(texts),
                sentiment=sent,
                intensity=inten,
                you_statements=len(YOU.findall(joined)),
                i_statements=len(I_STATEMENT.findall(joined)),
                apologies=len(APOLOGY.findall(joined)),
                questions=joined.count("?"),
                tone=_tone(sent, inten),
            )
        )
    scores = [offline.sentiment(m["text"]) for m in data["messages"]]
    half = len(scores) // 2
    escalation = (
        half > 0 and sum(scores[half:]) / (len(scores) - half) < sum(scores[:half]) / half - 0.2
    )
    accusatory = [p.speaker for p in profiles if p.you_statements > max(1, 2 * p.i_statements)]
    parts = [
        f"{p.speaker}: {p.tone} (sentiment {p.sentiment:+.2f}, {p.apologies} apologies)"
        for p in profiles
    ]
    if accusatory:
        parts.append(f"accusatory “you” language dominates for {', '.join(accusatory)}")
    if escalation:
        parts.append("the exchange grows more hostile over time")
    return PsychologicalAnalysis(
        speakers=profiles,
        escalation=escalation,
        dynamics="; ".join(parts) + ".",
        revision_note=_revision(data),
    )


PSYCH = LLMTask(
    name="thread_analysis.analyze_psychological",
    output_type=PsychologicalAnalysis,
    instructions=(
        "You describe the psychological dynamics of a message thread: per speaker, the tone, "
        "sentiment (-1..1), intensity (0..1), 'you' versus 'I' statements, apologies and "
        "questions; then whether the exchange escalates. Describe behaviour, do not diagnose."
    ),
    prompt=_transcript,
    offline=_psych_offline,
)


@llm_step(PSYCH)
def analyze_psychological(data: dict[str, Any]) -> dict[str, Any]:
    return {"psychological": complete(PSYCH, data).result()}


# --- synthesis --------------------------------------------------------------------------------


class Synthesis(BaseModel):
    summary: str
    risk_level: Literal["low", "moderate", "high"]
    key_findings: list[str]
    recommendations: list[str]
    caveats: list[str]


def _synthesis_prompt(data: dict[str, Any]) -> str:
    import json

    parts = {
        k: data.get(k) for k in ("darvo", "tactics", "psychological", "branch_failures", "review")
    }
    return "Analyses of the thread (JSON):\n" + json.dumps(parts, indent=1)[:20_000]


def _synthesis_offline(data: dict[str, Any]) -> Synthesis:
    darvo, tactics, psych = data.get("darvo"), data.get("tactics"), data.get("psychological")
    findings: list[str] = []
    score = 0
    if darvo:
        findings.append(darvo["explanation"])
        score += 2 if darvo["detected"] else 0
    if tactics:
        findings.append(tactics["explanation"])
        score += min(2, sum(t["count"] for t in tactics["tactics"]) // 2)
    if psych:
        findings.append("Dynamics: " + psych["dynamics"])
        score += 1 if psych["escalation"] else 0
    risk: Literal["low", "moderate", "high"] = (
        "high" if score >= 4 else "moderate" if score >= 2 else "low"
    )
    recs = {
        "high": [
            "Treat the pattern as serious; document further incidents with dates.",
            "Consider support from a counsellor or a trusted third party.",
        ],
        "moderate": [
            "Name the behaviour calmly and set a clear boundary.",
            "Watch whether the pattern repeats.",
        ],
        "low": ["No action needed beyond ordinary communication."],
    }[risk]
    caveats = [
        "Produced by the offline analyzer from word lists and patterns; it misses sarcasm, "
        "context and anything not phrased in its lexicons."
    ]
    failed = {s: f for s, f in (data.get("branch_failures") or {}).items() if f}
    for state_name, branches in failed.items():
        caveats.append(f"Analyses missing from {state_name}: {', '.join(branches)} failed.")
    review = data.get("review") or {}
    if review.get("timed_out"):
        caveats.append("No reviewer decided in time; the analysis was approved by default.")
    summary = f"Risk {risk}: " + (findings[0] if findings else "no analysis available.")
    return Synthesis(
        summary=summary,
        risk_level=risk,
        key_findings=findings,
        recommendations=recs,
        caveats=caveats,
    )


SYNTHESIS = LLMTask(
    name="thread_analysis.synthesize",
    output_type=Synthesis,
    instructions=(
        "You combine analyses of a message thread into a short, careful report: a summary, a risk "
        "level (low, moderate, high), key findings, recommendations and caveats (including any "
        "analysis that failed)."
    ),
    prompt=_synthesis_prompt,
    offline=_synthesis_offline,
)


@llm_step(SYNTHESIS)
def synthesize(data: dict[str, Any]) -> dict[str, Any]:
    return {"report": complete(SYNTHESIS, data).result()}


# --- the machine ------------------------------------------------------------------------------


def darvo_detected(data: dict[str, Any]) -> bool:
    return bool(data.get("darvo_detected"))


# The reviewer's names of the analyses (the branches of the "analysis" state).
ANALYSIS_TITLES = {
    "darvo": "DARVO",
    "tactics": "Manipulation tactics",
    "psychological": "Psychological profile",
}


def review_payload(data: dict[str, Any]) -> dict[str, Any]:
    """What the reviewer sees: one card per analysis (summary, confidence, evidence quotes),
    plus the analyses themselves for the raw view and for the synthesis."""
    darvo = data.get("darvo") or None
    tactics = data.get("tactics") or None
    psych = data.get("psychological") or None
    failed = {k: v for k, v in (data.get("branch_failures") or {}).items() if v}
    analyses: list[dict[str, Any]] = []
    if darvo:
        verdict = "DARVO detected" if darvo.get("detected") else "No DARVO pattern"
        who = f" ({darvo['speaker']})" if darvo.get("speaker") else ""
        analyses.append(
            {
                "title": ANALYSIS_TITLES["darvo"],
                "summary": f"{verdict}{who}. {darvo.get('explanation', '')}".strip(),
                "confidence": darvo.get("confidence"),
                "evidence": [
                    {"quote": f["quote"], "source": f"{f['speaker']} · {f['label']}"}
                    for f in darvo.get("findings", [])
                ],
            }
        )
    if tactics:
        analyses.append(
            {
                "title": ANALYSIS_TITLES["tactics"],
                "summary": tactics.get("explanation", ""),
                "evidence": [
                    {"quote": ex["quote"], "source": f"{ex['speaker']} · {t['name']}"}
                    for t in tactics.get("tactics", [])
                    for ex in t.get("examples", [])
                ],
            }
        )
    if psych:
        analyses.append(
            {
                "title": ANALYSIS_TITLES["psychological"],
                "summary": psych.get("dynamics", ""),
                "evidence": [
                    f"{p['speaker']}: {p['tone']}, sentiment {p['sentiment']:+.2f}, "
                    f"{p['you_statements']} you-statements, {p['apologies']} apologies"
                    for p in psych.get("speakers", [])
                ],
            }
        )
    for branches in failed.values():
        # One card per failed analysis, where its results would be: its title, and why it
        # failed in words (the error type is a fact on the card).
        for branch, why in branches.items():
            why = why if isinstance(why, dict) else {"message": str(why)}
            title = ANALYSIS_TITLES.get(branch, branch.replace("_", " ").capitalize())
            analyses.append(
                {
                    "title": f"{title} (failed)",
                    "summary": "This analysis failed, so its results are missing: "
                    + (str(why.get("message") or "") or "no reason was recorded."),
                    "error": str(why.get("type") or "Error"),
                }
            )
    made_by = {a.get("generated_by") for a in (darvo, tactics, psych) if a} - {None}
    return {
        "title": data.get("title") or "Message thread",
        "participants": data.get("participants", []),
        "produced_by": ", ".join(sorted(made_by))
        + (" (lexicons and patterns, not a language model)" if made_by == {"offline"} else ""),
        "analyses": analyses,
        "darvo": darvo,
        "tactics": tactics,
        "psychological": psych,
        "failed_analyses": failed,
    }


SAMPLE_THREAD = """\
Alex: You said you'd pick me up at 6 and I waited an hour.
Sam: I never said 6. You're making that up again.
Alex: I have the message right here.
Sam: You always do this. You're so dramatic about everything, it was just a joke.
Alex: I feel hurt that you forgot. I just want to talk about it.
Sam: After everything I do for you, you're attacking me? I'm the victim here.
Sam: Whatever. I'm done talking about this.
"""

REVIEW = "Please verify the analysis results. Reject with a comment to have them redone."

thread_analysis = machine(
    id="thread_analysis",
    version=1,
    initial="parsing",
    title="Thread analysis",
    description=(
        "Psychological analysis of a message thread: DARVO, manipulation tactics and a "
        "psychological profile run in parallel (two of three must succeed), a reviewer "
        "verifies them within the run's review timeout, 24 hours by default (reject sends them "
        "back with the comment), then a synthesis report."
    ),
    input_model=ThreadInput,
    context={"darvo_detected": False},
    sample_input={"title": "Pick-up argument", "thread": SAMPLE_THREAD},
    order=1,
    states={
        "parsing": state(run=parse_thread, on_done="analysis", on_error="failed"),
        "analysis": parallel(
            {
                "darvo": state(run=analyze_darvo),
                "tactics": state(run=analyze_tactics),
                "psychological": state(run=analyze_psychological),
            },
            min_success=2,
            on_done=[
                goto("darvo_review", guard=darvo_detected, label="DARVO detected"),
                goto("standard_review"),
            ],
            on_error="failed",
        ),
        "darvo_review": human(
            title="Verify DARVO analysis",
            instruction=REVIEW,
            on={"approve": "synthesis", "reject": "analysis"},
            on_timeout="approve",
            payload=review_payload,
        ),
        "standard_review": human(
            title="Verify thread analysis",
            instruction=REVIEW,
            on={"approve": "synthesis", "reject": "analysis"},
            on_timeout="approve",
            payload=review_payload,
        ),
        "synthesis": state(run=synthesize, on_done="complete", on_error="failed"),
        "complete": final(),
        "failed": final(status="failed"),
    },
)
