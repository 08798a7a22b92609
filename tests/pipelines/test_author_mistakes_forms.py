"""Start forms of input models a pipeline author may well write, that the form once got wrong.

- A recursive model (``children: list["Node"]``, ``child: Node | None``) made the form recurse
  until RecursionError (a 500 on GET). The repeat of a ``$ref`` is now edited as JSON.
- ``bool | None = None`` was a checkbox, so an untouched form sent False; ``Addr | None = None``
  was a fieldset filled with Addr's defaults, so an untouched form sent an Addr. Now a select
  (—, Yes, No) and an "include" checkbox.

Each is checked as a browser would do it: GET the form, submit exactly what it shows.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from pydantic import BaseModel

from pipelines import forms
from pipelines.registry import mark_pipeline
from workflows import workflow
from workflows.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db]


class Node(BaseModel):
    name: str = "root"
    children: list[Node] = []


class Chain(BaseModel):
    name: str = "a"
    child: Chain | None = None


class Addr(BaseModel):
    street: str = "Main"
    zip: int = 1000


class Tree(BaseModel):
    tree: Node = Node(children=[Node(name="leaf")])
    chain: Chain = Chain()


class Optionals(BaseModel):
    title: str = "t"
    flag: bool | None = None
    sure: bool | None = True
    plain: bool = False
    addr: Addr | None = None
    home: Addr | None = Addr(street="Home")
    work: Addr = Addr()


def _register(name: str, model: type[BaseModel]) -> None:
    def handler(ctx: Any, **input: Any) -> dict[str, Any]:
        return input

    handler.__name__ = handler.__qualname__ = name.replace(".", "_")
    definition = workflow(name=name, input_model=model)(handler)
    mark_pipeline(
        definition,
        title=name,
        mermaid="stateDiagram-v2\n  [*] --> done",
        mermaid_for_run=lambda run: "stateDiagram-v2\n  [*] --> done",
        sample_input={},
        order=10_100,
    )


_register("test.author_forms.tree", Tree)
_register("test.author_forms.optionals", Optionals)


@pytest.fixture(autouse=True)
def _no_doorbell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs are started, not executed, here."""
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)


@pytest.fixture
def starter(client: Client) -> Client:
    user = User.objects.create_user("author", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="start_run"))
    client.force_login(user)
    return client


class Shown(HTMLParser):
    """What a browser submits for the form as shown: each named control's current value
    (checked boxes only; a select's selected option, else its first)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []
        self._textarea: str | None = None
        self._text = ""
        self._template = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "template":
            self._template += 1
        if self._template:
            return
        if tag == "input" and a.get("name"):
            kind = a.get("type") or "text"
            if kind == "checkbox":
                if "checked" in a:
                    self.fields.append((a["name"] or "", a.get("value") or "on"))
            elif kind not in ("submit", "button"):
                self.fields.append((a["name"] or "", a.get("value") or ""))
        elif tag == "select":
            self._select, self._options = a.get("name"), []
        elif tag == "option" and self._select:
            self._options.append((a.get("value") or "", "selected" in a))
        elif tag == "textarea":
            self._textarea, self._text = a.get("name"), ""

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self._template -= 1
        elif tag == "select" and self._select:
            chosen = [v for v, selected in self._options if selected] or [self._options[0][0]]
            self.fields.append((self._select, chosen[0]))
            self._select = None
        elif tag == "textarea" and self._textarea:
            self.fields.append((self._textarea, self._text.removeprefix("\n")))
            self._textarea = None


def shown(client: Client, url: str) -> dict[str, list[str]]:
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    parser = Shown()
    parser.feed(response.content.decode())
    data: dict[str, list[str]] = {}
    for name, value in parser.fields:
        data.setdefault(name, []).append(value)
    return data


def submit(client: Client, url: str, data: dict[str, list[str]]) -> Run:
    before = Run.objects.count()
    response = client.post(url, data)
    assert response.status_code == 302, (response.status_code, response.context["fields"])
    assert Run.objects.count() == before + 1
    return Run.objects.latest("created_at")


# --- recursive models -------------------------------------------------------------------------


def test_a_recursive_model_gets_a_form_whose_repeat_is_json(starter: Client) -> None:
    url = "/pipelines/test.author_forms.tree/start/"
    data = shown(starter, url)
    # The first level is fields; where the model repeats, one JSON text field.
    assert data["input.tree.name"] == ["root"]
    assert data["input.chain.name"] == ["a"]
    assert "input.tree.children" in data and "input.chain.child" in data
    run = submit(starter, url, data)
    assert run.input == {
        "tree": {"name": "root", "children": [{"name": "leaf", "children": []}]},
        "chain": {"name": "a", "child": None},
    }
    data = shown(starter, url)  # a new form (a new idempotency key)
    data["input.tree.children"] = ['[{"name": "x", "children": [{"name": "y"}]}]']
    data["input.chain.child"] = ['{"name": "b", "child": {"name": "c"}}']
    run = submit(starter, url, data)
    assert run.input["tree"]["children"][0]["children"][0]["name"] == "y"
    assert run.input["chain"]["child"]["child"]["name"] == "c"


def test_the_fields_of_a_recursive_model_and_their_reading_agree() -> None:
    schema = Tree.model_json_schema()
    fields = {f.name: f for f in forms.build_fields(schema, Tree().model_dump(mode="json"))}
    tree = {c.name: c for c in fields["input.tree"].children}
    chain = {c.name: c for c in fields["input.chain"].children}
    assert tree["input.tree.children"].kind == "json"
    assert chain["input.chain.child"].kind == "json"
    data, errors = forms.parse_post(
        schema,
        {
            "input.tree.name": "r",
            "input.tree.children": "[]",
            "input.chain.name": "a",
            "input.chain.child": "",
        },
    )
    assert errors == {}
    assert data == {"tree": {"name": "r", "children": []}, "chain": {"name": "a", "child": None}}


def test_objects_nested_deeper_than_the_limit_are_json() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"leaf": {"type": "string"}}}
    for _ in range(forms.MAX_DEPTH + 3):
        schema = {"type": "object", "properties": {"x": schema}}
    kinds: list[str] = []
    fields = forms.build_fields(schema, {})
    while fields:
        kinds.append(fields[0].kind)
        fields = fields[0].children
    assert kinds == ["object"] * (forms.MAX_DEPTH - 1) + ["json"]
    post = {"input" + ".x" * forms.MAX_DEPTH: '{"x": {"leaf": "deep"}}'}
    data, errors = forms.parse_post(schema, post)
    assert errors == {}
    for _ in range(forms.MAX_DEPTH - 1):
        data = data["x"]
    assert data == {"x": {"x": {"leaf": "deep"}}}


# --- None for an optional bool or object ------------------------------------------------------


def test_an_untouched_form_sends_none_for_optional_bools_and_objects(starter: Client) -> None:
    url = "/pipelines/test.author_forms.optionals/start/"
    data = shown(starter, url)
    assert data["input.flag"] == [""] and data["input.sure"] == ["true"]
    assert "input.plain" not in data  # a plain bool stays a checkbox
    assert "input.addr.__present__" not in data and data["input.home.__present__"] == ["on"]
    run = submit(starter, url, data)
    assert run.input == {
        "title": "t",
        "flag": None,
        "sure": True,
        "plain": False,
        "addr": None,
        "home": {"street": "Home", "zip": 1000},
        "work": {"street": "Main", "zip": 1000},
    }


def test_the_optional_values_can_be_set_and_cleared(starter: Client) -> None:
    url = "/pipelines/test.author_forms.optionals/start/"
    data = shown(starter, url)
    data["input.flag"] = ["false"]
    data["input.sure"] = [""]
    data["input.addr.__present__"] = ["on"]
    data["input.addr.street"] = ["Elm"]
    del data["input.home.__present__"]
    run = submit(starter, url, data)
    assert (run.input["flag"], run.input["sure"]) == (False, None)
    assert run.input["addr"] == {"street": "Elm", "zip": 1000}
    assert run.input["home"] is None


def test_the_optional_widgets_show_what_was_submitted() -> None:
    schema = Optionals.model_json_schema()
    values = {"flag": False, "sure": None, "addr": {"street": "Elm"}, "home": None}
    fields = {f.name: f for f in forms.build_fields(schema, values)}
    assert fields["input.flag"].kind == fields["input.sure"].kind == "tristate"
    assert fields["input.flag"].display_value == "false"
    assert fields["input.sure"].display_value == ""
    assert fields["input.plain"].kind == "checkbox"
    assert (fields["input.addr"].optional, fields["input.addr"].present) == (True, True)
    assert (fields["input.home"].optional, fields["input.home"].present) == (True, False)
    assert not fields["input.work"].optional
    _, errors = forms.parse_post(schema, {"input.flag": "maybe"})
    assert errors == {"flag": ["Choose —, Yes or No."]}
