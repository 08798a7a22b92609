"""thread_analysis reads speakers of any script, keeps lines it cannot attribute, shows a failed
analysis as a card of its own, and a machine's parallel state revisited after a reject does not
keep what a branch produced the time before."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from pipelines.builtin import thread_analysis as ta
from pipelines.machine import final, goto, human, machine, parallel, state, unregister
from reviews.models import Gate
from reviews.services import decide_gate
from tests.pipelines import fake_llm as fakes
from tests.pipelines.fake_llm import FakeLLM
from tests.support import Bell
from workflows import NonRetryableError, RetryPolicy, get_run, start, step
from workflows.models import Run

pytestmark = pytest.mark.core
engine = pytest.mark.django_db(transaction=True)


def settle(bell: Bell, run: Run) -> Run:
    bell.settle()
    return get_run(run.pk)


def parse(thread: str) -> dict[str, Any]:
    return ta.parse_thread({"thread": thread})  # type: ignore[no-any-return]


def speakers(thread: str) -> list[tuple[str, str]]:
    return [(m["speaker"], m["text"]) for m in parse(thread)["messages"]]


# --- speakers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thread", "expected"),
    [
        (
            "Émile: I never said that.\nAlex: You made me wait.\nÉmile: After everything I do",
            [
                ("Émile", "I never said that."),
                ("Alex", "You made me wait."),
                ("Émile", "After everything I do"),
            ],
        ),
        (
            "Иван: Я никогда этого не говорил\nМария: Ты всегда так делаешь",
            [("Иван", "Я никогда этого не говорил"), ("Мария", "Ты всегда так делаешь")],
        ),
        (
            "محمد: لم أقل ذلك أبدا\nسارة: أنت دائما تفعل هذا",
            [("محمد", "لم أقل ذلك أبدا"), ("سارة", "أنت دائما تفعل هذا")],
        ),
        (
            "李明：我从来没说过\n王芳：你总是这样",
            [("李明", "我从来没说过"), ("王芳", "你总是这样")],
        ),
        ("alex: hi\nsam: hey", [("alex", "hi"), ("sam", "hey")]),
        ("🦄: hi\nBob 🙂: yo", [("🦄", "hi"), ("Bob 🙂", "yo")]),
        ("O'Neil-Smith Jr.: fine", [("O'Neil-Smith Jr.", "fine")]),
    ],
    ids=["accents", "cyrillic", "arabic", "cjk-full-width-colon", "lowercase", "emoji", "ascii"],
)
def test_it_reads_speakers_of_any_script(thread: str, expected: list[tuple[str, str]]) -> None:
    """Review finding: only names starting with A–Z counted; the other lines were dropped, or
    appended to the message before them (Émile's words became Alex's)."""
    assert speakers(thread) == expected
    assert parse(thread)["participants"] == list(dict.fromkeys(s for s, _ in expected))


def test_lines_that_name_nobody_continue_the_message_before_them() -> None:
    thread = "Sam: see you at\n10:30 at the station\nsee https://example.com/map\nAnn:\nok, fine"
    assert speakers(thread) == [
        ("Sam", "see you at 10:30 at the station see https://example.com/map"),
        ("Ann", "ok, fine"),
    ]


def test_lines_before_the_first_name_are_kept_as_an_unnamed_message() -> None:
    """They were dropped without a word; they are nobody's, so they are not a participant."""
    data = parse("Chat export, 3 May\nexported by the app\nSam: hi\nAnn: hello")
    assert [(m["n"], m["speaker"], m["text"]) for m in data["messages"]] == [
        (1, ta.UNNAMED, "Chat export, 3 May exported by the app"),
        (2, "Sam", "hi"),
        (3, "Ann", "hello"),
    ]
    assert data["participants"] == ["Sam", "Ann"]


def test_a_thread_without_any_name_is_refused() -> None:
    with pytest.raises(NonRetryableError, match="no messages found"):
        parse("just some text\nwithout names")


@engine
def test_a_thread_in_another_script_is_analysed_by_speaker(bell: Bell, offline: Any) -> None:
    thread = (
        "Émile: I never said that. You're crazy.\nAlex: Could we talk?\n"
        "Émile: After everything I do for you, you're attacking me?"
    )
    run = settle(bell, start("thread_analysis", {"thread": thread}))
    gate = Gate.objects.get(run=run, status="open")
    assert gate.payload["participants"] == ["Émile", "Alex"]
    darvo = gate.payload["darvo"]
    assert (darvo["detected"], darvo["speaker"]) == (True, "Émile")
    assert gate.title == "Verify DARVO analysis"


# --- a failed analysis on the gate ------------------------------------------------------------


def test_a_failed_analysis_is_a_card_titled_by_the_analysis_with_its_error() -> None:
    error = {"type": "RequestRejected", "message": "openai:gpt-4o: request rejected (HTTP 400)"}
    payload = ta.review_payload(
        {"branch_failures": {"analysis": {"tactics": error, "psychological": error}}}
    )
    assert payload["analyses"] == [
        {
            "title": "Manipulation tactics (failed)",
            "summary": "This analysis failed, so its results are missing: openai:gpt-4o: "
            "request rejected (HTTP 400)",
            "error": "RequestRejected",
        },
        {
            "title": "Psychological profile (failed)",
            "summary": "This analysis failed, so its results are missing: openai:gpt-4o: "
            "request rejected (HTTP 400)",
            "error": "RequestRejected",
        },
    ]


@engine
def test_the_gate_page_shows_the_failed_analysis_in_words(
    bell: Bell, offline: Any, fake_llm: FakeLLM
) -> None:
    """Review finding: one card titled "analysis (failed)" whose text was a Python dict."""
    offline.SLUICE_LLM_MODELS = {
        "thread_analysis.analyze_tactics": f"openai-compatible:fake@{fake_llm.base_url}"
    }
    fake_llm.fail(fakes.status(400))
    run = settle(bell, start("thread_analysis", {"thread": "Ann: hi\nBo: hello, thanks!"}))
    gate = Gate.objects.get(run=run, status="open")
    reviewer = User.objects.create_user("ana", password="pw-ana-123")
    reviewer.groups.add(Group.objects.get_or_create(name="reviewers")[0])
    client = Client()
    client.force_login(reviewer)
    html = client.get(f"/reviews/{gate.pk}/").content.decode()
    # (The markup around the texts is the reviews app's: match the texts, not its attributes.)
    assert re.search(r"<h3[^>]*>Manipulation tactics \(failed\)</h3>", html)
    assert re.search(
        r"<p[^>]*>This analysis failed, so its results are missing: openai-compatible:fake: "
        r"request rejected \(HTTP 400\)",
        html,
    )
    assert re.search(r"<dt[^>]*>Error</dt>\s*<dd[^>]*>RequestRejected</dd>", html)
    assert "analysis (failed)" not in html and "{&#x27;" not in html


# --- a parallel state visited again -----------------------------------------------------------

NO_RETRY = RetryPolicy(max_attempts=1)


@step(retry=NO_RETRY)
def first_opinion(data: dict[str, Any]) -> dict[str, Any]:
    """Succeeds on the first visit, fails once a reviewer has sent the work back."""
    if data.get("reviewer_comment"):
        raise NonRetryableError("no second opinion today")
    return {"opinion": "stale after a reject", "worrying": True}


@step
def headcount(data: dict[str, Any]) -> dict[str, Any]:
    return {"visits": data.get("visits", 0) + 1}


def is_worrying(data: dict[str, Any]) -> bool:
    return bool(data.get("worrying"))


@pytest.fixture
def revisited() -> Iterator[None]:
    machine(
        id="test_machine.revisited",
        initial="fan",
        context={"worrying": False},
        states={
            "fan": parallel(
                {"opinion": state(run=first_opinion), "count": state(run=headcount)},
                min_success=1,
                on_done=[goto("worried", guard=is_worrying), goto("calm")],
            ),
            "worried": human(
                title="Worried review", instruction="?", on={"approve": "done", "reject": "fan"}
            ),
            "calm": human(
                title="Calm review", instruction="?", on={"approve": "done", "reject": "fan"}
            ),
            "done": final(),
        },
    )
    yield
    unregister("test_machine.revisited")


@engine
def test_a_branch_that_fails_on_a_second_visit_leaves_nothing_of_its_first(
    bell: Bell, revisited: Any
) -> None:
    """Review finding: after a reject loop, the analysis a branch produced on the first visit
    stayed in the context when the branch failed on the second: shown to the reviewer, read
    by the guards and fed to the report as if it were new."""
    run = settle(bell, start("test_machine.revisited", {}))
    gate = Gate.objects.get(run=run, status="open")
    assert gate.title == "Worried review"
    assert gate.payload["opinion"] == "stale after a reject"
    decide_gate(gate.pk, outcome="reject", comment="look again", actor="tester")

    run = settle(bell, run)
    second = Gate.objects.get(run=run, status="open")
    # The guard reads the machine's default again, not the first visit's True.
    assert second.title == "Calm review"
    assert "opinion" not in second.payload and second.payload["worrying"] is False
    assert second.payload["visits"] == 2  # the branch that succeeded keeps its fresh result
    assert list(second.payload["branch_failures"]["fan"]) == ["opinion"]
    decide_gate(second.pk, outcome="approve", actor="tester")
    run = settle(bell, run)
    assert run.status == "succeeded"
    context = run.output["context"]
    assert "opinion" not in context and context["worrying"] is False
    assert run.output["trail"] == ["fan", "worried", "fan", "calm", "done"]


@engine
def test_a_run_from_before_the_revisit_fix_replays_with_the_merge_it_had(
    bell: Bell, revisited: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review of the fix: a run that re-visited the state under the old merge and
    waited at its second gate when the fix was deployed replayed another context, took
    another path and failed as non-deterministic. The fix is a patch (ctx.patched): such a
    run keeps the old merge; a run started after it takes the new one."""
    from workflows.core.context import Context

    with monkeypatch.context() as before:
        # The code before the fix asked nothing: no marker in the journal, the plain merge.
        before.setattr(Context, "patched", lambda self, patch_id: False)
        run = settle(bell, start("test_machine.revisited", {}))
        decide_gate(Gate.objects.get(run=run, status="open").pk, outcome="reject", actor="t")
        run = settle(bell, run)
        second = Gate.objects.get(run=run, status="open")
        assert second.title == "Worried review"  # the old merge kept the stale opinion
    decide_gate(second.pk, outcome="approve", actor="t")  # the fix deployed
    run = settle(bell, run)
    assert run.status == "succeeded", run.error
    assert run.output["trail"] == ["fan", "worried", "fan", "worried", "done"]


@step
def fast_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {"summary": f"fast, visit {data.get('round', 0) + 1}", "round": data.get("round", 0) + 1}


@step(retry=NO_RETRY)
def slow_summary(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("round", 0) >= 1:
        raise NonRetryableError("slow is down")
    return {"summary": "slow, visit 1"}


@engine
def test_a_failed_branch_does_not_undo_a_siblings_fresh_value_of_the_same_key(
    bell: Bell,
) -> None:
    """Found by review of the fix: merged branch by branch, the failed branch restored the
    value from before its own first write, which was its sibling's first-visit value, over
    the sibling's fresh one."""
    machine(
        id="test_machine.overlap",
        initial="fan",
        states={
            "fan": parallel(
                {"fast": state(run=fast_summary), "slow": state(run=slow_summary)},
                min_success=1,
                on_done="check",
            ),
            "check": human(title="Check", instruction="?", on={"approve": "done", "reject": "fan"}),
            "done": final(),
        },
    )
    try:
        run = settle(bell, start("test_machine.overlap", {}))
        decide_gate(Gate.objects.get(run=run, status="open").pk, outcome="reject", actor="t")
        run = settle(bell, run)
        gate = Gate.objects.get(run=run, status="open")
        assert gate.payload["summary"] == "fast, visit 2"
    finally:
        unregister("test_machine.overlap")


@engine
def test_a_rejected_darvo_analysis_that_fails_again_is_not_shown_or_reported(
    bell: Bell, offline: Any, fake_llm: FakeLLM, keyed: Any
) -> None:
    keyed.SLUICE_LLM_MODEL = "offline"
    keyed.SLUICE_LLM_MODELS = {
        "thread_analysis.analyze_darvo": f"openai-compatible:fake-model@{fake_llm.base_url}"
    }
    fake_llm.answer = {
        "detected": True,
        "confidence": 0.9,
        "speaker": "Sam",
        "findings": [],
        "explanation": "FIRST VISIT: Sam shows DARVO",
    }
    run = settle(bell, start("thread_analysis", {"thread": "Alex: You said 6.\nSam: ok."}))
    gate = Gate.objects.get(run=run, status="open")
    assert gate.title == "Verify DARVO analysis"
    decide_gate(gate.pk, outcome="reject", comment="Sam did nothing wrong", actor="tester")
    fake_llm.fail(fakes.status(400))
    run = settle(bell, run)

    second = Gate.objects.get(run=run, status="open")
    assert second.title == "Verify thread analysis"  # darvo_detected is False again
    assert second.payload["darvo"] is None
    titles = [card["title"] for card in second.payload["analyses"]]
    assert titles == ["Manipulation tactics", "Psychological profile", "DARVO (failed)"]
    decide_gate(second.pk, outcome="approve", actor="tester")
    run = settle(bell, run)
    report = run.output["context"]["report"]
    assert "FIRST VISIT" not in str(report)
    assert "Analyses missing from analysis: darvo failed." in report["caveats"]


@pytest.mark.parametrize(
    "line",
    [
        "and then he said: you're imagining it",
        "note to self: bring charts",
        "mailto:bob@example.com",
        "https://example.com/a:b",
        "one two three four five: too many words for a name",
    ],
)
def test_prose_with_a_colon_continues_the_message(line: str) -> None:
    """Found by review of the i18n fix: lowercase prose before a colon became a speaker, took
    the quotes and got a profile."""
    assert ta.split_speaker(line) is None
    assert ta.split_speaker("alex: hi") == ("alex", "hi")  # one lowercase word still names
    assert ta.split_speaker("Mary Ann: hello") == ("Mary Ann", "hello")
