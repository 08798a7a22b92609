"""The "Start run" form, generated from a pipeline's input JSON Schema.

``build_fields(schema, values, errors)`` turns the schema into ``Field`` objects the template
renders (recursively); ``parse_post(schema, post)`` reads the submitted form back into input
data. Input names are ``input.<path>`` with list indexes in the path
(``input.documents.0.title``), which is also how the engine names validation errors, so each
error lands under its field.

Supported: strings (text, ``widget: textarea``, ``enum`` as a select), integers, numbers,
booleans, nullable variants, nested objects, arrays of objects (repeatable fieldsets), arrays
of scalars (one per line). Anything else is edited as JSON.

Nullable booleans (``bool | None``) are a select of "—" (None), Yes and No, not a checkbox,
which cannot say None. A nullable object (``Addr | None``) is a fieldset with an "include"
checkbox in its legend (``input.<path>.__present__``): unticked, the object is None whatever
its fields hold. A recursive model (``children: list["Node"]``) is drawn as fields down to the
first repeat of a ``$ref`` on the path, which is edited as JSON; so is anything nested deeper
than ``MAX_DEPTH`` objects and arrays.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, DecimalException, InvalidOperation
from typing import Any

from workflows.core.errors import InvalidInputError
from workflows.core.services import parse_review_timeout as parse_review_timeout_value

PREFIX = "input"
INDEX = "__index__"
# The "include" checkbox of a nullable object: ``input.<path>.__present__``.
PRESENT = "__present__"
# Objects and arrays nested deeper than this are edited as JSON (a guard beside the check for
# a repeated ``$ref``: the form is built and read by recursion).
MAX_DEPTH = 8
# The choices of a nullable boolean (kind "tristate"): (value, label).
TRISTATE = (("", "—"), ("true", "Yes"), ("false", "No"))


@dataclass
class Field:
    name: str  # the form input name: input.documents.0.title
    label: str
    # text | textarea | integer | number | checkbox | tristate | select | lines | json | object
    # | array
    kind: str
    required: bool = False
    help: str = ""
    value: Any = None
    choices: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    children: list[Field] = field(default_factory=list)  # object fields / array items
    template: Field | None = None  # a blank array item, named with __index__
    index: int | None = None  # position in its array
    # A nullable object: drawn with an "include" checkbox, ticked when ``present``.
    optional: bool = False
    present: bool = True

    @property
    def id(self) -> str:
        return "f-" + re.sub(r"[^\w-]", "-", self.name)

    @property
    def display_value(self) -> str:
        """The value as the input shows it."""
        if self.value is None:
            return ""
        if self.kind == "tristate" and isinstance(self.value, bool):
            return "true" if self.value else "false"
        if self.kind == "lines":
            return (
                "\n".join(str(v) for v in self.value)
                if isinstance(self.value, list)
                else str(self.value)
            )
        if self.kind == "json":
            return self.value if isinstance(self.value, str) else json.dumps(self.value, indent=2)
        return str(self.value)

    @property
    def item_label(self) -> str:
        return f"{self.label} {self.index + 1}" if self.index is not None else self.label

    @property
    def present_name(self) -> str:
        """The name of a nullable object's "include" checkbox."""
        return f"{self.name}.{PRESENT}"

    @property
    def tristate_choices(self) -> tuple[tuple[str, str], ...]:
        return TRISTATE


def resolve(
    schema: Mapping[str, Any], root: Mapping[str, Any], refs: list[str] | None = None
) -> tuple[dict[str, Any], bool]:
    """Follow ``$ref`` and unwrap ``anyOf [X, null]``: (schema, nullable). The ``$ref``s
    followed are appended to ``refs``."""
    node = dict(schema)
    nullable = False
    for _ in range(10):
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            if refs is not None:
                refs.append(str(node["$ref"]))
            merged = dict(root.get("$defs", {}).get(name, {}))
            merged.update({k: v for k, v in node.items() if k != "$ref"})
            node = merged
            continue
        options = node.get("anyOf") or node.get("oneOf")
        if options:
            rest = [o for o in options if o.get("type") != "null"]
            nullable = nullable or len(rest) < len(options)
            if len(rest) == 1:
                merged = dict(rest[0])
                merged.update({k: v for k, v in node.items() if k not in ("anyOf", "oneOf")})
                node = merged
                continue
        break
    return node, nullable


def kind_of(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    node, _ = resolve(schema, root)
    t = node.get("type")
    if "enum" in node and t in ("string", None):
        return "select"
    if t == "string":
        return "textarea" if node.get("widget") == "textarea" else "text"
    if t in ("integer", "number"):
        return str(t)
    if t == "boolean":
        return "checkbox"
    if t == "object" and node.get("properties"):
        return "object"
    if t == "array":
        items, _ = resolve(node.get("items", {}), root)
        if items.get("type") == "object" and items.get("properties"):
            return "array"
        if items.get("type") in ("string", "integer", "number"):
            return "lines"
    return "json"


def shape(
    schema: Mapping[str, Any], root: Mapping[str, Any], seen: frozenset[str], depth: int
) -> tuple[dict[str, Any], bool, str, frozenset[str]]:
    """(schema, nullable, kind, the ``$ref``s on the path down to its contents).

    ``seen``: the ``$ref``s already being expanded on the path from the form's root; ``depth``:
    the objects and arrays around this one. An object or array whose ``$ref`` (or whose items'
    ``$ref``) is one of them is a recursive model, edited as JSON; so is one nested deeper than
    ``MAX_DEPTH``. Building the form and reading it back both go through here, so they agree on
    every field's kind.
    """
    refs: list[str] = []
    node, nullable = resolve(schema, root, refs)
    kind = kind_of(node, root)
    inner = seen | frozenset(refs)
    if kind in ("object", "array"):
        if depth >= MAX_DEPTH or seen & set(refs):
            kind = "json"
        elif kind == "array":
            item_refs: list[str] = []
            resolve(node.get("items", {}), root, item_refs)
            if inner & set(item_refs):
                kind = "json"
    elif kind == "checkbox" and nullable:
        kind = "tristate"
    return node, nullable, kind, inner


def build_fields(
    schema: Mapping[str, Any],
    values: Mapping[str, Any] | None,
    errors: Mapping[str, list[str]] | None = None,
) -> list[Field]:
    """The form's fields for an object schema, filled with ``values``."""
    root = schema
    obj = build(schema, root, PREFIX, "", dict(values or {}), dict(errors or {}), required=True)
    return obj.children


def build(
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    name: str,
    label: str,
    value: Any,
    errors: Mapping[str, list[str]],
    required: bool = False,
    seen: frozenset[str] = frozenset(),
    depth: int = 0,
) -> Field:
    node, nullable, kind, inner = shape(schema, root, seen, depth)
    f = Field(
        name=name,
        # The property's own title, then its name, before the title of the model it refers to:
        # two fields of one model (``addr``, ``billing``) were both labelled "Addr".
        label=str(
            schema.get("title") or label.replace("_", " ").capitalize() or node.get("title") or ""
        ),
        kind=kind,
        required=required and not nullable,
        help=str(node.get("description") or ""),
        value=value,
        errors=list(errors.get(_path(name), [])),
    )
    if kind == "object":
        if nullable:
            # None is "not included": the fields show their defaults, to fill in on ticking.
            f.optional, f.present = True, value is not None
        req = set(node.get("required", []))
        props = node.get("properties", {})
        data = value if isinstance(value, dict) else {}
        f.children = [
            build(
                sub,
                root,
                f"{name}.{key}",
                key,
                data.get(key, sub.get("default")),
                errors,
                key in req,
                inner,
                depth + 1,
            )
            for key, sub in props.items()
        ]
    elif kind == "array":
        items = node.get("items", {})
        rows = value if isinstance(value, list) else []
        f.children = [
            _item(items, root, name, i, row, errors, inner, depth + 1) for i, row in enumerate(rows)
        ]
        f.template = _item(items, root, name, None, {}, {}, inner, depth + 1)
        f.attrs = {k: node[k] for k in ("minItems", "maxItems") if k in node}
    else:
        f.attrs = _attrs(node, kind)
        if kind == "select":
            f.choices = [str(c) for c in node.get("enum", [])]
    return f


def _item(
    items: Mapping[str, Any],
    root: Mapping[str, Any],
    name: str,
    index: int | None,
    value: Any,
    errors: Mapping[str, list[str]],
    seen: frozenset[str],
    depth: int,
) -> Field:
    key = str(index) if index is not None else INDEX
    item = build(items, root, f"{name}.{key}", "", value, errors, True, seen, depth)
    item.index = index
    return item


def _attrs(node: Mapping[str, Any], kind: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if kind in ("text", "textarea"):
        if "maxLength" in node:
            attrs["maxlength"] = node["maxLength"]
        if "pattern" in node and kind == "text":
            attrs["pattern"] = node["pattern"]
        if kind == "textarea":
            attrs["rows"] = node.get("rows", 5)
    if kind in ("integer", "number"):
        for src, dst in (("minimum", "min"), ("maximum", "max")):
            if src in node:
                attrs[dst] = node[src]
        attrs["step"] = "1" if kind == "integer" else "any"
    return attrs


def _path(name: str) -> str:
    """``input.documents.0.title`` → ``documents.0.title`` (the engine's error field)."""
    return name[len(PREFIX) + 1 :] if name.startswith(PREFIX + ".") else ""


# --- reading a submitted form -----------------------------------------------------------------


def parse_post(
    schema: Mapping[str, Any], post: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Input data from the form, and errors the form itself finds (bad numbers, bad JSON)."""
    errors: dict[str, list[str]] = {}
    data = _parse(schema, schema, PREFIX, post, errors)
    return (data if isinstance(data, dict) else {}), errors


_MISSING = object()


def _parse(
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    name: str,
    post: Mapping[str, Any],
    errors: dict[str, list[str]],
    seen: frozenset[str] = frozenset(),
    depth: int = 0,
) -> Any:
    node, nullable, kind, inner = shape(schema, root, seen, depth)
    if kind == "object":
        if nullable and f"{name}.{PRESENT}" not in post:
            return None  # "include" left unticked
        out: dict[str, Any] = {}
        for key, sub in node.get("properties", {}).items():
            value = _parse(sub, root, f"{name}.{key}", post, errors, inner, depth + 1)
            if value is not _MISSING:
                out[key] = value
        return out
    if kind == "array":
        # ASCII digits, at most 4: int() of a long digit string raises; no form has 10,000 items.
        pattern = re.compile(re.escape(name) + r"\.([0-9]{1,4})\.")
        indexes = sorted({int(m.group(1)) for k in post for m in [pattern.match(k)] if m})
        items = node.get("items", {})
        return [_parse(items, root, f"{name}.{i}", post, errors, inner, depth + 1) for i in indexes]
    if kind == "checkbox":
        return name in post
    if name not in post:
        return _MISSING
    raw = str(post.get(name, ""))
    problem = text_problem(raw)
    if problem:
        errors.setdefault(_path(name), []).append(problem)
        return _MISSING
    if kind == "tristate":
        choice = {"": None, "true": True, "false": False}.get(raw.strip(), _MISSING)
        if choice is _MISSING:
            errors.setdefault(_path(name), []).append("Choose —, Yes or No.")
        return choice
    if kind in ("text", "textarea", "select"):
        if raw == "" and nullable:
            return None
        return raw.replace("\r\n", "\n")
    if raw.strip() == "":
        return None if nullable else _MISSING
    if kind in ("integer", "number"):
        number = _number(raw, kind)
        if isinstance(number, str):
            errors.setdefault(_path(name), []).append(number)
            return _MISSING
        return number
    if kind == "lines":
        items_kind = resolve(node.get("items", {}), root)[0].get("type")
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        if items_kind in ("integer", "number"):
            numbers = [_number(x, str(items_kind)) for x in lines]
            if any(isinstance(x, str) for x in numbers):
                errors.setdefault(_path(name), []).append("Enter one number per line.")
                return _MISSING
            return numbers
        return lines
    try:
        value = json.loads(raw, parse_constant=_no_constant)
        problem = json_problem(value)
    except (ValueError, RecursionError) as exc:
        problem = f"Not valid JSON: {exc}"[:300]
    if problem:
        errors.setdefault(_path(name), []).append(problem)
        return _MISSING
    return value


# Beyond these a number is not one a run's input can carry as JSON (a float overflows to
# Infinity, which no JSON column stores) nor one a person means.
MAX_DIGITS = 40
MAX_FLOAT = 1e300


def _number(raw: str, kind: str) -> int | float | str:
    """A number from a form input, or the error to show."""
    text = raw.strip()
    if len(text) > MAX_DIGITS + 10:
        return "Enter a number with at most 40 digits."
    try:
        number = Decimal(text)
    except InvalidOperation:
        return "Enter a number."
    if not number.is_finite():
        return "Enter a number (not NaN or Infinity)."
    # adjusted() and copy_abs() do no context arithmetic, so an exponent such as 1E+999999999
    # cannot overflow here (abs() would raise decimal.Overflow).
    if number and (number.adjusted() > MAX_DIGITS or number.copy_abs() >= Decimal(MAX_FLOAT)):
        return "Enter a smaller number."
    try:
        if kind == "integer":
            if number != number.to_integral_value():
                return "Enter a whole number."
            return int(number)
        return float(number)
    except DecimalException:  # an exponent far below any meaningful value, say
        return "Enter a number."


MAX_JSON_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def text_problem(text: str) -> str:
    """Why ``text`` cannot be stored in a run's input (PostgreSQL's jsonb refuses NUL and lone
    surrogates), or ''."""
    if "\x00" in text:
        return "Remove the NUL character (\\u0000): it cannot be stored."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "The text is not valid Unicode (it holds a lone surrogate)."
    return ""


def json_problem(value: Any, depth: int = 0) -> str:
    """Why a parsed JSON value cannot be stored (NUL, lone surrogates, deep nesting), or ''."""
    if depth > MAX_JSON_DEPTH:
        return f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels."
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "Numbers must be finite (not NaN or Infinity)."
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return ""
    for item in items:
        problem = json_problem(item, depth + 1)
        if problem:
            return problem
    return ""


BUDGET_PLACES = Decimal("0.000001")  # Run.max_cost: 14 digits, 6 of them decimals
BUDGET_LIMIT = Decimal("100000000")


def parse_budget(raw: str) -> tuple[Decimal | None, str]:
    """The optional budget (max_cost, USD): (value, error).

    NaN and Infinity parse as Decimals but compare with an exception, and a value with more
    digits than the column holds fails in the database: both are form errors here.
    """
    text = (raw or "").strip()
    if not text:
        return None, ""
    if len(text) > 40:
        return None, "Enter an amount in USD, like 0.50."
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None, "Enter an amount in USD, like 0.50."
    if not value.is_finite():
        return None, "Enter an amount in USD, like 0.50."
    if value <= 0 or value >= BUDGET_LIMIT:
        return None, "The budget must be more than 0 and less than 100,000,000 USD."
    value = value.quantize(BUDGET_PLACES)
    if value <= 0 or value >= BUDGET_LIMIT:
        return None, "The budget must be more than 0 and less than 100,000,000 USD."
    return value, ""


REVIEW_TIMEOUT_UNITS = {"minutes": 60, "hours": 3600, "days": 86400}


def parse_review_timeout(amount: str, unit: str) -> tuple[timedelta | None, str]:
    """The optional review timeout (a number and a unit): (value, error). Empty is the
    pipeline's default (24 hours); the range, 1 minute to 30 days, is the engine's."""
    text = (amount or "").strip()
    if not text:
        return None, ""
    seconds = REVIEW_TIMEOUT_UNITS.get(unit)
    if seconds is None or len(text) > 20:
        return None, "Enter a number of minutes, hours or days, like 36 hours."
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None, "Enter a number of minutes, hours or days, like 36 hours."
    if not value.is_finite():
        return None, "Enter a number of minutes, hours or days, like 36 hours."
    try:
        duration = parse_review_timeout_value(float(value * seconds))
    except (InvalidInputError, ArithmeticError):  # ArithmeticError: 1E+999999999 overflows
        return None, "The review timeout must be from 1 minute to 30 days."
    return duration, ""


def attach_errors(errors: list[dict[str, Any]]) -> tuple[dict[str, list[str]], list[str]]:
    """The engine's ``InvalidInputError.errors`` as (by field path, errors of the whole input)."""
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for e in errors:
        path = str(e.get("field") or "")
        if path:
            by_field.setdefault(path, []).append(str(e.get("message", "")))
        else:
            general.append(str(e.get("message", "")))
    return by_field, general


def unplaced(errors: Mapping[str, list[str]], fields: list[Field]) -> list[str]:
    """Errors whose field the form does not show (so they are listed at the top instead)."""
    shown: set[str] = set()

    def walk(fs: list[Field]) -> None:
        for f in fs:
            shown.add(_path(f.name))
            walk(f.children)

    walk(fields)
    return [f"{path}: {m}" for path, msgs in errors.items() if path not in shown for m in msgs]
