"""Text analysis for the offline provider: tokens, sentences, lexicons, patterns.

The offline provider answers every LLM task without a network or a key, so ``make run`` works
anywhere. Its answers come from real (simple) analysis of the input: word frequencies,
lexicon and phrase matches with the sentence they occur in, regular expressions for entities.
They are deterministic, and every result says ``generated_by: offline`` so nobody mistakes
them for a model's.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“A-Z0-9])|\n{2,}")

STOPWORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves also get got let us ok okay yes
yeah really still even much many well back one two i'm you're it's don't can't won't didn't
that's i've i'll i'd you've you'll we're they're isn't wasn't aren't doesn't
need needs want wants please hi hello hey thanks thank dear regards best know like make
made way since nearly almost bit lot just said says told
""".split()
)

POSITIVE = frozenset(
    """
thanks thank appreciate glad happy great good love kind helpful sorry understand agree support
calm fair welcome pleased wonderful excellent resolved works working fixed clear care caring
""".split()
)
NEGATIVE = frozenset(
    """
angry hate stupid crazy never always fault blame worst terrible awful useless ridiculous
pathetic liar lying lie lies insane selfish disgusting broken wrong fail failed failure bad
annoyed upset furious unacceptable refund cancel error errors problem problems issue issues
hurt hurting ashamed threat threaten leave leaving alone sick tired
""".split()
)


def estimate_tokens(text: str) -> int:
    """Roughly what a tokenizer would count (about four characters per token)."""
    return max(1, math.ceil(len(text) / 4))


def words(text: str) -> list[str]:
    return [w.lower().strip("'’-") for w in WORD.findall(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 2]


def sentences(text: str) -> list[str]:
    parts = SENTENCE_END.split(text.strip())
    return [" ".join(p.split()) for p in parts if p and p.strip()]


def keywords(text: str, n: int = 8) -> list[str]:
    """The most frequent content words (ties broken by first appearance)."""
    counts = Counter(content_words(text))
    order = {w: i for i, w in reversed(list(enumerate(content_words(text))))}
    ranked = sorted(counts, key=lambda w: (-counts[w], order[w]))
    return ranked[:n]


def summarize(text: str, n: int = 2) -> list[str]:
    """The ``n`` sentences with the highest average content-word frequency, in text order."""
    sents = sentences(text)
    if len(sents) <= n:
        return sents
    freq = Counter(content_words(text))
    top = max(freq.values(), default=1)

    def score(i: int, s: str) -> float:
        ws = content_words(s)
        if not ws:
            return 0.0
        # A small bonus for the opening sentence: it often states the subject.
        return sum(freq[w] / top for w in ws) / math.sqrt(len(ws)) + (0.3 if i == 0 else 0.0)

    best = sorted(range(len(sents)), key=lambda i: -score(i, sents[i]))[:n]
    return [sents[i] for i in sorted(best)]


def sentiment(text: str) -> float:
    """A lexicon score in [-1, 1]: (positive - negative) / matched words."""
    ws = words(text)
    pos = sum(1 for w in ws if w in POSITIVE)
    neg = sum(1 for w in ws if w in NEGATIVE)
    if pos + neg == 0:
        return 0.0
    return round((pos - neg) / (pos + neg), 3)


def intensity(text: str) -> float:
    """Exclamation marks and shouted words per sentence, capped at 1."""
    shouted = sum(1 for w in WORD.findall(text) if len(w) > 2 and w.isupper())
    marks = text.count("!")
    return round(min(1.0, (shouted + marks) / max(1, len(sentences(text))) / 2), 3)


@dataclass(frozen=True)
class Match:
    """A lexicon hit: which label, which phrase matched, and the sentence as evidence."""

    label: str
    phrase: str
    evidence: str


def compile_lexicon(lexicon: Mapping[str, Sequence[str]]) -> dict[str, list[re.Pattern[str]]]:
    """Phrases are matched case-insensitively on word boundaries; ``*`` stands for one word."""
    compiled: dict[str, list[re.Pattern[str]]] = {}
    for label, phrases in lexicon.items():
        compiled[label] = [
            re.compile(r"\b" + re.escape(p.lower()).replace(r"\*", r"[\w'’-]+") + r"\b", re.I)
            for p in phrases
        ]
    return compiled


def find(text: str, lexicon: Mapping[str, list[re.Pattern[str]]]) -> list[Match]:
    """Every lexicon hit in ``text``, one per (label, sentence), in text order."""
    hits: list[Match] = []
    for sent in sentences(text) or [text]:
        for label, patterns in lexicon.items():
            for pattern in patterns:
                m = pattern.search(sent)
                if m:
                    hits.append(Match(label, m.group(0), sent))
                    break
    return hits


def coverage(required: Iterable[str], text: str) -> tuple[float, list[str]]:
    """Share of ``required`` words that ``text`` mentions, and the missing ones."""
    req = list(dict.fromkeys(required))
    if not req:
        return 1.0, []
    have = set(words(text))
    missing = [w for w in req if not any(_same_word(w, h) for h in have)]
    return round(1 - len(missing) / len(req), 3), missing


def _same_word(a: str, b: str) -> bool:
    """Equal, or sharing a stem (``refund`` / ``refunded``): the first len-2 letters, at least 4."""
    if a == b:
        return True
    n = max(4, len(a) - 2)
    return len(a) >= 4 and len(b) >= n and a[:n] == b[:n]


# --- entities -----------------------------------------------------------------------------------

# Every repetition below that a failed match could backtrack through is bounded (by what the
# thing can be: a mailbox name is at most 64 characters, a domain label 63, an amount 30
# digits, a word of a name 40 letters), and the words of a name are matched possessively (a
# name word ends at a space, so giving back letters cannot help). Unbounded, a 100,000-character
# "A'A'A'…" took a minute and "1,1,1,…" or "a.a.a.…" as long, from each position on.
EMAIL = re.compile(r"\b[\w.+-]{1,64}+@[\w-]{1,63}(?:\.[\w-]{1,63}){1,10}\b")
MONEY = re.compile(
    r"(?:[$€£]\s?\d[\d,]{0,30}(?:\.\d{1,12})?(?:\s?(?:million|billion|k))?)"
    r"|\b\d[\d,]{0,30}+(?:\.\d{1,12}+)?\s?(?:USD|EUR|GBP|dollars|euros)\b",
    re.I,
)
MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DATE = re.compile(
    rf"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}} (?:{MONTHS}) \d{{4}}"
    rf"|(?:{MONTHS}) \d{{1,2}}(?:, \d{{4}})?|(?:{MONTHS}) \d{{4}}|Q[1-4] \d{{4}})\b"
)
ORG_SUFFIX = re.compile(
    r"\b((?:[A-Z][\w&'-]{0,40}+\s){0,3}(?:[A-Z][\w&'-]{0,40}+\s(?:Inc\.?|Ltd\.?|LLC|GmbH|Corp\.?|Corporation|Company|Group|Bank|University|Institute|Agency|Council|Foundation|Labs?)))(?=\W|$)"
)
ORG_OF = re.compile(
    r"\b((?:University|Bank|Institute|Ministry|Department|Museum) of "
    r"(?:[A-Z][a-z]+)(?: [A-Z][a-z]+)?)"
)
PERSON_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof)\.?\s([A-Z][a-z]+(?:\s[A-Z][a-z]+)?)")
PERSON_VERB = re.compile(
    r"\b([A-Z][a-z]+\s[A-Z][a-z]+)(?=,?\s(?:said|says|told|wrote|announced|added|explained|noted|reported))"
)
PLACE = re.compile(r"\b(?:in|at|from|to|near)\s((?:[A-Z][a-z]+)(?:\s[A-Z][a-z]+)?)\b")
NOT_PLACES = frozenset(
    {
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "The",
        "This",
    }
)


# Entities of one kind an answer lists, at most: the offline answer is a summary of a document,
# not an index of it. Names are compared with each other (an organization inside a longer one
# is dropped), so the candidates are capped too: 20,000 distinct names took seconds.
MAX_ENTITIES = 100
MAX_CANDIDATES = 500


def entities(text: str) -> dict[str, list[str]]:
    """People, organizations, places, dates, amounts of money and e-mail addresses (each once,
    at most ``MAX_ENTITIES`` of a kind, in the order found)."""
    orgs = _unique(m.strip() for m in ORG_OF.findall(text) + ORG_SUFFIX.findall(text))
    orgs = orgs[:MAX_CANDIDATES]
    orgs = [o for o in orgs if not any(o != other and o in other for other in orgs)]
    orgs = orgs[:MAX_ENTITIES]
    people = _unique(list(PERSON_TITLE.findall(text)) + list(PERSON_VERB.findall(text)))
    people = [p for p in people[:MAX_CANDIDATES] if not any(p in o for o in orgs)]
    people = people[:MAX_ENTITIES]
    taken = set(people) | set(orgs)
    places = _unique(
        p for p in PLACE.findall(text) if p.split()[0] not in NOT_PLACES and p not in taken
    )
    return {
        "people": people,
        "organizations": orgs,
        "places": places[:MAX_ENTITIES],
        "dates": _unique(DATE.findall(text))[:MAX_ENTITIES],
        "money": _unique(m.strip() for m in MONEY.findall(text))[:MAX_ENTITIES],
        "emails": _unique(EMAIL.findall(text) if "@" in text else [])[:MAX_ENTITIES],
    }


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))
