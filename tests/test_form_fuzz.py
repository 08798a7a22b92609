"""Property-based fuzzing of every HTML form, through Django's test client.

Forms: the start form of every pipeline (the built-ins and one with every kind of field), the
gate decision form (outcome, comment, every kind of editable field), claim/release, the run
page's actions (cancel, retry, restart with ``from_step``), the login form and the admin's
"restart from a step" form.

Values: NUL characters, lone surrogates (sent percent-encoded in the body, as a browser or a
script would send them), NaN/Infinity, huge and negative numbers, 1 MB strings, deeply nested
JSON, and arbitrary text. Invariants: never a 5xx, and never a wedged run (after each request
the run is still waiting on its gate, or advanced properly when the request did something).

Examples per test: ``SLUICE_FUZZ_EXAMPLES`` (default 20, so ``make test`` stays fast; set it to
a few hundred for a long run). ``CASES`` counts the requests made; the session summary prints it.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from pipelines import forms as start_forms
from pipelines.registry import mark_pipeline, pipelines
from reviews.models import Gate
from tests.support import Bell
from workflows import start, workflow
from workflows.models import Run

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # A failing example holding a 1 MB string is reported all the same.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "20"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # One database and one client per test, shared by its examples on purpose: each example
    # must leave the run consistent for the next one.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

CASES: Counter[str] = Counter()  # requests made, by form
STATUSES: Counter[tuple[str, int]] = Counter()  # (form, HTTP status): what the fuzzing reached

MB = 1024 * 1024

# --- values ------------------------------------------------------------------------------------

SPECIAL = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ud83d",  # half of an emoji
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e400",
    "-1e400",
    "1e308",
    "1.7976931348623157e309",
    "1E+999999999",
    "1e-400",
    "-1",
    "0",
    "-0",
    "0.0000001",
    "99999999.9999999",
    "9" * 20,
    "9" * 5000,
    "٣",  # an Arabic-Indic digit
    "0x10",
    "1_000",
    "true",
    "null",
    "{}",
    "[]",
    '{"$blob": 1}',
    '"\\u0000"',
    '"\\ud800"',
    "[NaN]",
    '{"x": Infinity}',
    "[" * 100_000,
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "\u202egnp.exe",
    "<script>alert(1)</script>",
    "x" * MB,
]

nasty_text = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None), max_size=20),  # surrogates included
    st.integers().map(str),
    st.floats().map(str),
    st.integers(min_value=1, max_value=200_000).map(lambda n: "[" * n + "]" * n),
    # Objects nested past what pydantic serializes (~255 levels) and past the recursion limit.
    st.integers(min_value=1, max_value=5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """``usual`` three times in four, else ``other`` (st.one_of merges repeated branches)."""
    return st.integers(0, 3).flatmap(lambda i: other if i == 3 else usual)


def form_body(fields: dict[str, Any]) -> str:
    """``application/x-www-form-urlencoded``, lone surrogates as their (invalid) UTF-8 bytes."""

    def enc(value: str) -> str:
        return quote(value.encode("utf-8", "surrogatepass"), safe="")

    pairs = []
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            pairs.append(f"{enc(name)}={enc(str(v))}")
    return "&".join(pairs)


def post(client: Client, url: str, fields: dict[str, Any], case: str) -> Any:
    CASES[case] += 1
    response = client.post(url, form_body(fields), content_type="application/x-www-form-urlencoded")
    STATUSES[(case.split(":")[0], response.status_code)] += 1
    assert response.status_code < 500, (case, response.status_code)
    return response


# --- personas and fixtures -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _all_app_permissions(user: User) -> User:
    """Every permission of the engine's and the apps' models (whatever start or operate
    permission they define), so the fuzzing reaches the form handlers."""
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label__in=("workflows", "pipelines", "reviews")
        )
    )
    return user


@pytest.fixture
def operator(db: None) -> User:
    """Staff with every app permission: the runs' actions and the admin."""
    return _all_app_permissions(
        User.objects.create_user("opal", password="pw-opal-123", is_staff=True, is_superuser=True)
    )


@pytest.fixture
def reviewer(db: None) -> User:
    """A reviewer of the ``reviewers`` group who may also start pipelines."""
    user = _all_app_permissions(User.objects.create_user("ana", password="pw-ana-123"))
    user.groups.add(Group.objects.get_or_create(name="reviewers")[0])
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- start forms ---------------------------------------------------------------------------


class Part(BaseModel):
    name: str = Field(..., max_length=100)
    qty: int = Field(1, ge=0, le=1000)


class EveryKind(BaseModel):
    """One field of every kind the start form renders."""

    title: str = Field("t", max_length=200)
    notes: str = Field("", json_schema_extra={"widget": "textarea"})
    count: int = Field(3, ge=0, le=10)
    ratio: float | None = None
    urgent: bool = False
    mode: str = Field("fast", json_schema_extra={"enum": ["fast", "slow"]})
    tags: list[str] = []
    sizes: list[int] = []
    weights: list[float] = []
    parts: list[Part] = []
    extra: dict[str, Any] = {}


@workflow(name="test.fuzz_every_kind", input_model=EveryKind)
def every_kind(ctx: Any, **input: Any) -> dict[str, Any]:
    return {"ok": True}


mark_pipeline(
    every_kind,
    title="Fuzz: every kind of field",
    mermaid="stateDiagram-v2\n  [*] --> done",
    mermaid_for_run=lambda run: "stateDiagram-v2\n  [*] --> done",
    sample_input={"title": "t", "parts": [{"name": "a", "qty": 1}]},
    order=10_000,
)


def field_names(schema: dict[str, Any], sample: dict[str, Any]) -> list[str]:
    names: list[str] = []

    def walk(fields: list[start_forms.Field]) -> None:
        for f in fields:
            if f.kind not in ("object", "array"):
                names.append(f.name)
            walk(f.children)

    walk(start_forms.build_fields(schema, sample))
    return names


# The built-in pipelines (test pipelines other modules register are left out, so the list does
# not depend on what else was collected) and the one above with every kind of field.
PIPELINES = [d.name for d in pipelines() if not d.name.startswith("test")] + [
    "test.fuzz_every_kind"
]


@pytest.mark.parametrize("name", PIPELINES)
def test_no_start_form_input_gives_a_5xx(name: str, reviewer: User, bell: Bell) -> None:
    from pipelines.registry import get_pipeline

    definition = get_pipeline(name)
    assert definition is not None
    names = field_names(definition.input_schema(), definition.extra.get("sample_input") or {})
    names += [f"{n.rsplit('.', 1)[0]}.99.{n.rsplit('.', 1)[1]}" for n in names if ".0." in n]
    client = logged_in(reviewer)
    url = f"/pipelines/{name}/start/"

    @FUZZ
    @given(
        values=st.fixed_dictionaries({}, optional={n: nasty_text for n in names}),
        budget=st.one_of(st.none(), nasty_text),
        junk=st.dictionaries(nasty_text, nasty_text, max_size=3),
    )
    def check(values: dict[str, str], budget: str | None, junk: dict[str, str]) -> None:
        before = Run.objects.count()
        fields: dict[str, Any] = {**junk, **values}
        if budget is not None:
            fields["max_cost"] = budget
        response = post(client, url, fields, f"start:{name}")
        after = Run.objects.count()
        if response.status_code == 302:
            assert after == before + 1
            run = Run.objects.latest("created_at")
            assert run.status == "pending" and isinstance(run.input, dict)
            if run.max_cost is not None:
                assert 0 < run.max_cost < 100_000_000
        else:
            assert response.status_code in (200, 400, 413), response.status_code
            assert after == before

    check()


def test_the_start_form_refuses_nul_and_nan_with_form_errors(reviewer: User, bell: Bell) -> None:
    """The two start-form 500s of the issue (item 4), as plain regression checks."""
    client = logged_in(reviewer)
    url = "/pipelines/thread_analysis/start/"
    r = post(client, url, {"input.thread": "A: hi\x00there"}, "start:regression")
    assert r.status_code == 400 and "Remove the NUL character" in r.content.decode()
    for bad in ("NaN", "Infinity", "-Infinity", "sNaN", "1e400", "-1", "99999999.9999999"):
        r = post(client, url, {"input.thread": "A: hi", "max_cost": bad}, "start:regression")
        assert r.status_code == 400, bad
        assert r.context["budget_error"], bad
    assert not Run.objects.exists()
    r = post(client, url, {"input.thread": "A: hi", "max_cost": "0.25"}, "start:regression")
    assert r.status_code == 302
    assert str(Run.objects.get().max_cost) == "0.250000"
    # The six characters \u0000 are text, not a NUL: they are stored as typed.
    text = "A: in JSON a NUL is written \\u0000"
    r = post(client, url, {"input.thread": text}, "start:regression")
    assert r.status_code == 302
    assert Run.objects.latest("created_at").input["thread"] == text


# --- the gate decision form, claim and release -------------------------------------------------

EVERY_FIELD: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "level": {"enum": [1, 2, 3]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 4},
        "count": {"type": "integer"},
        "notes": {"type": "string", "maxLength": 500},
        "reply": {"type": "string", "format": "textarea"},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "labels": {"type": "array", "items": {"enum": ["a", "b"]}},
        "extra": {"type": "object"},
    },
    "required": ["sentiment", "score"],
}
# A value each field accepts: most examples mix valid fields with a few hostile ones, so the
# fuzzing also reaches decisions that go through and runs that resume. (Text without NUL,
# which no column stores: with no hostile field and a valid outcome, a decision must pass.)
plain = st.characters(exclude_characters="\x00")
VALID_EDITS: dict[str, st.SearchStrategy[Any]] = {
    "sentiment": st.sampled_from(["positive", "neutral", "negative"]),
    "level": st.sampled_from(["1", "2", "3"]),
    "score": st.floats(0, 1).map(str),
    "ratio": st.one_of(st.just(""), st.floats(-1e6, 1e6).map(str)),
    # Blank optional numbers mean "not edited", as an API decision that leaves them out.
    "priority": st.one_of(st.just(""), st.integers(1, 4).map(str)),
    "count": st.one_of(st.just(""), st.integers(-(10**30), 10**30).map(str)),
    "notes": st.text(plain, max_size=100),
    "reply": st.text(plain, max_size=100),
    "urgent": st.sampled_from(["on", ""]),
    "tags": st.lists(st.text(plain, max_size=10), max_size=3).map("\n".join),
    "labels": st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True),
    "extra": st.sampled_from(['{"k": 1}', "{}", '{"a": [1, "x", null]}']),
}


VALID_FORM = {
    "edit-sentiment": "neutral",
    "edit-level": "2",
    "edit-score": "0.5",
    "edit-priority": "2",
    "edit-count": "7",
    "edit-notes": "ok",
    "edit-tags": "a\nb",
    "edit-extra": "{}",
}


def open_gate(bell: Bell) -> Gate:
    run = start(
        "test.review",
        {"payload": {"sentiment": "positive", "score": 0.5}, "fields": EVERY_FIELD},
    )
    bell.drain()
    return Gate.objects.get(run=run, status="open")


def assert_consistent(gate: Gate, bell: Bell) -> None:
    """The run is waiting on its open gate, or, once the gate is decided, runs to its end."""
    bell.drain()
    gate.refresh_from_db()
    run = Run.objects.get(pk=gate.run_id)
    if gate.status == "open":
        assert run.status in ("suspended", "pending", "running"), run.status
    else:
        assert gate.status == "decided", gate.status
        assert run.status == "succeeded", (run.status, run.error)


def test_no_decision_form_input_gives_a_5xx_or_a_wedged_run(reviewer: User, bell: Bell) -> None:
    import tests.reviews.workflows  # noqa: F401  (registers test.review)

    client = logged_in(reviewer)
    current = {"gate": open_gate(bell)}

    @FUZZ
    @given(
        # Weighted towards valid outcomes and no hostile field, so decisions go through too.
        outcome=mostly(st.sampled_from(["approve", "reject"]), nasty_text),
        comment=st.one_of(st.none(), nasty_text),
        valid=st.fixed_dictionaries({f"edit-{n}": v for n, v in VALID_EDITS.items()}),
        hostile=mostly(
            st.just({}),
            st.dictionaries(
                st.sampled_from([f"edit-{n}" for n in VALID_EDITS]),
                st.one_of(nasty_text, st.lists(nasty_text, min_size=2, max_size=3)),
                max_size=3,
            ),
        ),
    )
    def check(
        outcome: str, comment: str | None, valid: dict[str, Any], hostile: dict[str, Any]
    ) -> None:
        gate = current["gate"]
        fields: dict[str, Any] = {"outcome": outcome, **valid, **hostile}
        if comment is not None:
            fields["comment"] = comment
        response = post(client, f"/reviews/{gate.pk}/decide/", fields, "gate:decide")
        assert response.status_code in (302, 422, 400, 413), response.status_code
        if not hostile and comment is None and outcome in ("approve", "reject"):
            # Only valid values: the decision goes through (a blank optional number once
            # answered 422 "input should be a valid integer").
            assert response.status_code == 302, response.context["edits_form"].errors
        assert_consistent(gate, bell)
        if gate.status != "open":
            assert response.status_code == 302
            current["gate"] = open_gate(bell)

    check()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("edit-tags", "fine\na\x00b"),
        ("edit-extra", "[" * 100_000),
        ("edit-extra", '{"x": NaN}'),
        ("edit-extra", '{"x": "\\u0000"}'),
        ("edit-extra", '{"x": 1e400}'),
    ],
)
def test_the_decision_form_refuses_edits_that_cannot_be_stored(
    reviewer: User, bell: Bell, field: str, value: str
) -> None:
    import tests.reviews.workflows  # noqa: F401

    gate = open_gate(bell)
    client = logged_in(reviewer)
    fields = {"outcome": "approve", **VALID_FORM, field: value}
    response = post(client, f"/reviews/{gate.pk}/decide/", fields, "gate:regression")
    assert response.status_code == 422
    assert response.context["edits_form"].errors[field.removeprefix("edit-")]
    assert_consistent(gate, bell)
    assert gate.status == "open"
    # The same form with storable values goes through and the run finishes.
    response = post(
        client,
        f"/reviews/{gate.pk}/decide/",
        {"outcome": "approve", **VALID_FORM},
        "gate:regression",
    )
    assert response.status_code == 302
    assert_consistent(gate, bell)
    assert gate.status == "decided"


# A gate's fields schema comes from the pipeline's code (or a run's input, for test.review):
# bounds that are not numbers, patterns that do not compile, lengths that are text.
bounds = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    nasty_text,
)
field_schemas = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "x"])},
    optional={
        "pattern": st.one_of(
            st.sampled_from(["[", "(", "a{2,1}", "\\", "^a+$", "(?P<"]), nasty_text
        ),
        "minimum": bounds,
        "maximum": bounds,
        "exclusiveMinimum": bounds,
        "minLength": bounds,
        "maxLength": bounds,
        "maxItems": bounds,
        "enum": st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=3),
        "items": st.sampled_from([{"type": "string"}, {"enum": ["a", "b"]}, {"type": "integer"}]),
        "default": st.one_of(st.integers(), st.text(max_size=5), st.none()),
    },
)


def test_no_fields_schema_gives_a_5xx_or_a_gate_nobody_can_close(
    reviewer: User, bell: Bell
) -> None:
    """A schema no validator can be built from fails its run when the gate would open, naming
    the field; any gate that opens can be shown, decided through the form without a 5xx, and
    always closed by a decision without edits."""
    import tests.reviews.workflows  # noqa: F401
    from reviews.services import decide_gate
    from workflows.core.errors import InvalidInputError

    client = logged_in(reviewer)

    @FUZZ
    @given(prop=field_schemas, value=mostly(st.text(plain, max_size=10), nasty_text))
    def check(prop: dict[str, Any], value: str) -> None:
        fields = {"type": "object", "properties": {"a": prop, "note": {"type": "string"}}}
        try:
            run = start("test.review", {"payload": {"a": "x"}, "fields": fields})
        except InvalidInputError:
            return  # NUL or a lone surrogate in the schema itself: refused at the door
        bell.drain()
        run.refresh_from_db()
        gate = Gate.objects.filter(run=run, status="open").first()
        if gate is None:
            assert run.status == "failed", (run.status, run.error)
            assert "field 'a' of the gate's fields schema is invalid" in run.error["message"]
            return
        CASES["gate:schema"] += 1
        assert client.get(f"/reviews/{gate.pk}/").status_code == 200
        fields_posted = {"outcome": "approve", "edit-a": value, "edit-note": "n"}
        response = post(client, f"/reviews/{gate.pk}/decide/", fields_posted, "gate:schema")
        assert response.status_code in (302, 400, 413, 422), response.status_code
        gate.refresh_from_db()
        if gate.status == "open":
            decide_gate(gate.pk, outcome="approve", actor="fuzz")
        bell.drain()
        run.refresh_from_db()
        assert run.status == "succeeded", (run.status, run.error)

    check()


def test_no_claim_or_release_gives_a_5xx_or_a_wedged_run(
    reviewer: User, operator: User, bell: Bell
) -> None:
    import tests.reviews.workflows  # noqa: F401

    gate = open_gate(bell)
    clients = {"ana": logged_in(reviewer), "opal": logged_in(operator)}

    @FUZZ
    @given(
        steps=st.lists(
            st.tuples(
                st.sampled_from(["ana", "opal"]),
                st.sampled_from(["claim", "release"]),
                st.dictionaries(nasty_text, nasty_text, max_size=2),
            ),
            min_size=1,
            max_size=4,
        ),
        htmx=st.booleans(),
    )
    def check(steps: list[tuple[str, str, dict[str, str]]], htmx: bool) -> None:
        for who, action, junk in steps:
            client = clients[who]
            CASES["gate:" + action] += 1
            response = client.post(
                f"/reviews/{gate.pk}/{action}/",
                form_body(junk),
                content_type="application/x-www-form-urlencoded",
                **({"HTTP_HX_REQUEST": "true"} if htmx else {}),
            )
            STATUSES[("gate", response.status_code)] += 1
            assert response.status_code < 500
            gate.refresh_from_db()
            assert gate.status == "open"
            assert gate.claimed_by_id in (None, reviewer.pk, operator.pk)
        assert_consistent(gate, bell)

    check()


# --- run actions and the admin's restart form -----------------------------------------------

# Journal positions: real ones, past the journal, beyond any database integer, and hostile text.
steps = st.one_of(
    mostly(st.integers(1, 4).map(str), st.integers(-(2**70), 2**70).map(str)),
    st.sampled_from(["9" * 19, "9" * 20, str(2**63), "1e3", " 2 ", "٢"]),
    nasty_text,
)


# Reasons for the audit trail: NUL and lone surrogates (which no PostgreSQL column stores),
# the longest kept, one character too long, and hostile text.
reasons = mostly(
    st.sampled_from(["why\x00not", "\x00", "\ud800", "x" * 2001, "x" * 2000, "duplicate"]),
    st.one_of(st.none(), nasty_text),
)


def test_no_run_action_gives_a_5xx_or_a_wedged_run(operator: User, bell: Bell) -> None:
    client = logged_in(operator)
    finished = start("test.chain", {"n": 2})  # ends "succeeded" (or "canceled": never cancels)
    waiting = start("test.event", {})  # waits for an event: "suspended", or "canceled"
    bell.drain()

    @FUZZ
    @given(
        which=st.sampled_from(["finished", "waiting"]),
        action=mostly(
            st.sampled_from(["cancel", "retry", "restart"]), st.from_regex(r"\A[a-z-]{1,12}\Z")
        ),
        from_step=st.one_of(st.none(), steps),
        reason=reasons,
    )
    def check(which: str, action: str, from_step: str | None, reason: str | None) -> None:
        run = finished if which == "finished" else waiting
        fields = {"from_step": from_step} if from_step is not None else {}
        if reason is not None:
            fields["reason"] = reason
        response = post(client, f"/runs/{run.pk}/actions/{action}/", fields, "run:action")
        assert response.status_code in (302, 400, 403, 404, 413, 422), response.status_code
        bell.drain()
        run.refresh_from_db()
        settled = ("succeeded",) if run is finished else ("suspended",)
        assert run.status in (*settled, "canceled"), (run.status, run.error)

    check()


def test_no_admin_restart_form_input_gives_a_5xx(operator: User, bell: Bell) -> None:
    client = logged_in(operator)
    run = start("test.chain", {"n": 2})
    bell.drain()

    @FUZZ
    @given(
        action=st.sampled_from(["restart_from_step", "cancel_runs", "retry_failed_step"]),
        from_step=steps,
        reason=reasons,
    )
    def check(action: str, from_step: str, reason: str | None) -> None:
        fields = {
            "action": action,
            "_selected_action": str(run.pk),
            "apply": "1",
            "from_step": from_step,
        }
        if reason is not None:
            fields["reason"] = reason
        response = post(client, "/admin/workflows/run/", fields, "admin:restart")
        assert response.status_code in (200, 302, 400, 413), response.status_code
        bell.drain()
        run.refresh_from_db()
        assert run.status == "succeeded", (run.status, run.error)

    check()


# --- the login form --------------------------------------------------------------------------


def test_no_login_form_input_gives_a_5xx(reviewer: User, settings: Any) -> None:
    # Lockouts are tested on their own; here every attempt reaches the form.
    settings.SLUICE_LOGIN_MAX_FAILURES = 10_000
    settings.SLUICE_LOGIN_MAX_FAILURES_PER_IP = 10_000

    @FUZZ
    @given(
        username=mostly(st.just("ana"), nasty_text),
        password=mostly(st.just("pw-ana-123"), nasty_text),
        next_url=st.one_of(st.none(), nasty_text),
    )
    def check(username: str, password: str, next_url: str | None) -> None:
        client = Client()
        fields = {"username": username, "password": password}
        if next_url is not None:
            fields["next"] = next_url
        response = post(client, "/accounts/login/", fields, "login")
        assert response.status_code in (200, 302, 400, 413, 429), response.status_code
        if response.status_code == 302:
            assert username == "ana" and password == "pw-ana-123"

    check()


def test_no_preferences_form_input_gives_a_5xx(reviewer: User) -> None:
    """The notification preferences form: any input is saved (302) or refused (4xx), and a
    refused one changes nothing."""
    from reviews.models import NotificationPreference

    client = Client()
    client.force_login(reviewer)

    @FUZZ
    @given(
        email=st.one_of(st.none(), st.just("on"), nasty_text),
        chat=st.one_of(st.none(), st.just("on"), nasty_text),
        url=mostly(st.just("https://hooks.slack.com/services/T0/B0/x"), nasty_text),
        mode=mostly(st.sampled_from(["immediate", "digest"]), nasty_text),
        minutes=mostly(st.integers(-5, 2000).map(str), nasty_text),
        events=st.lists(mostly(st.sampled_from(["opened", "reminder", "expired"]), nasty_text)),
    )
    def check(
        email: str | None, chat: str | None, url: str, mode: str, minutes: str, events: list[str]
    ) -> None:
        before = list(NotificationPreference.objects.values())
        fields: dict[str, Any] = {"chat_webhook_url": url, "mode": mode, "digest_minutes": minutes}
        if email is not None:
            fields["email_enabled"] = email
        if chat is not None:
            fields["chat_enabled"] = chat
        if events:
            fields["events"] = events
        response = post(client, "/reviews/preferences/", fields, "preferences")
        assert response.status_code in (302, 400, 413, 422), response.status_code
        if response.status_code != 302:
            assert list(NotificationPreference.objects.values()) == before

    check()
