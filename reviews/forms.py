"""Forms of the gate page: the decision (outcome + comment) and the gate's editable fields.

``EditsForm`` is built from the gate's JSON Schema so each editable value gets a real input
(a select for an enum, a number input with its bounds, a checkbox, a text area for long text).
It converts what the browser sends into JSON values; ``reviews.services.decide_gate`` then
validates them against the schema, the same check an API decision gets, and its errors are put
back on the fields here.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from django import forms
from django.forms.fields import InvalidJSONInput, JSONString

from reviews.models import Gate
from reviews.schema import fits_field, nullable, properties, with_shown_values
from workflows.core.jsonvalues import same_json

EDITS_PREFIX = "edit"
LONG_TEXT = 160


class DecisionForm(forms.Form):
    outcome = forms.ChoiceField(choices=())
    comment = forms.CharField(
        required=False,
        max_length=5000,
        widget=forms.Textarea(
            # dir=auto: a comment typed in Hebrew or Arabic reads right to left as it is typed.
            attrs={
                "rows": 3,
                "placeholder": "Why? (optional, kept in the audit trail)",
                "dir": "auto",
            }
        ),
    )

    def __init__(self, gate: Gate, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["outcome"].choices = [(c, c) for c in gate.choices]  # type: ignore[attr-defined]


def plain_newlines(text: str) -> str:
    """``text`` with its line breaks as ``\\n``: browsers send a text area's lines with ``\\r\\n``
    (and a lone ``\\r`` is a line break to them too)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


class CharField(forms.CharField):
    """Django's, with line breaks as ``\\n`` (a reply sent on by e-mail or compared with the
    AI's text must not gain ``\\r``s), and not stripped: text is kept as typed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str):
            value = plain_newlines(value)
        return super().to_python(value)


class LinesField(CharField):
    """A list of strings edited as one line each. Lines are kept as typed (not stripped); an
    empty line is no item."""

    widget = forms.Textarea(attrs={"rows": 4})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text:
            return []
        return [line for line in str(text).split("\n") if line != ""]

    def run_validators(self, value: Any) -> None:
        # CharField's NUL check looks at str(list), where a NUL shows as "\\x00": check the lines.
        for line in value if isinstance(value, list) else [value]:
            super().run_validators(line)


class NumberText(forms.NumberInput):
    """A number typed as text (``inputmode`` brings up a numeric keyboard), checked by the
    server. A number input would not do: Chromium sends "" for what it cannot read ("1e309"),
    which cleared the AI's value, and reads "1,5" as 15 in an English locale."""

    input_type = "text"

    def __init__(self, attrs: dict[str, Any] | None = None, *, mode: str = "decimal") -> None:
        super().__init__(attrs)
        self.mode = mode

    def get_context(self, name: str, value: Any, attrs: Any) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        # min/max/step mean nothing on a text input; the field's validators check them.
        widget_attrs = context["widget"]["attrs"]
        for key in ("min", "max", "step"):
            widget_attrs.pop(key, None)
        widget_attrs.setdefault("inputmode", self.mode)
        widget_attrs.setdefault("autocomplete", "off")
        return context


class NullBooleanSelect(forms.Select):
    """Yes / No / blank for a nullable boolean: a checkbox cannot say "none" (an AI's null
    came back as false)."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs, choices=(("", "—"), ("true", "Yes"), ("false", "No")))

    def format_value(self, value: Any) -> list[str]:
        if value is True or value == "true":
            return ["true"]
        if value is False or value == "false":
            return ["false"]
        return [""]


MAX_JSON_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def storable_problem(value: Any, depth: int = 0) -> str:
    """Why a JSON value cannot be stored in a gate's edits (PostgreSQL's jsonb refuses NUL and
    lone surrogates; deep nesting is a denial of service), or ''."""
    if depth > MAX_JSON_DEPTH:
        return f"Nested deeper than {MAX_JSON_DEPTH} levels."
    if isinstance(value, str):
        if "\x00" in value:
            return "Remove the NUL character (\\u0000): it cannot be stored."
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "Not valid Unicode (a lone surrogate)."
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "Numbers must be finite (not NaN or Infinity)."
    items: list[Any] = []
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    for item in items:
        problem = storable_problem(item, depth + 1)
        if problem:
            return problem
    return ""


def _exact_number(text: str) -> float | Decimal:
    """A JSON number with a fraction or exponent: a float when that is exactly the number
    typed, else a Decimal (stored as its text), so ``12345678901234567890.12`` keeps its
    digits."""
    number = float(text)
    try:
        exact = Decimal(text)
    except InvalidOperation:
        return number
    if math.isfinite(number) and Decimal(repr(number)) == exact:
        return number
    return exact


def accepts_decimal_text(prop: dict[str, Any]) -> bool:
    """Whether a field takes a number as its text too (pydantic's ``Decimal``: ``anyOf: [number,
    string]``): a number typed for it keeps all its digits."""
    options = prop.get("anyOf")
    if not isinstance(options, list):
        return False
    kinds = {o.get("type") for o in options if isinstance(o, dict)}
    return "number" in kinds and "string" in kinds


class JSONValueField(forms.JSONField):
    """Strict JSON: no NaN/Infinity, NUL, lone surrogates or deep nesting (Django's own
    JSONField accepts the first three and fails with RecursionError on the last). With
    ``decimals``, a fractional number a float cannot hold exactly is kept as a ``Decimal``."""

    widget = forms.Textarea(attrs={"rows": 4, "class": "mono"})

    def __init__(self, *, decimals: bool = False, **kwargs: Any) -> None:
        self.decimals = decimals
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        if not isinstance(value, str):
            return super().to_python(value)
        try:
            parsed = json.loads(
                value,
                parse_constant=_no_constant,
                parse_float=_exact_number if self.decimals else float,
            )
        except (ValueError, RecursionError):
            raise forms.ValidationError(
                self.error_messages["invalid"], code="invalid", params={"value": value[:100]}
            ) from None
        problem = storable_problem(parsed)
        if problem:
            raise forms.ValidationError(problem, code="invalid")
        return JSONString(parsed) if isinstance(parsed, str) else parsed

    def bound_data(self, data: Any, initial: Any) -> Any:
        # A posted value is shown again as the text it was (a refused one, deep nesting, or
        # a number with more digits than a float holds), never re-encoded.
        if self.disabled or data is None:
            return super().bound_data(data, initial)
        return InvalidJSONInput(data)


def _choice_label(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _loads(text: Any) -> Any:
    """A posted option's JSON text as its value."""
    if not isinstance(text, str):
        raise forms.ValidationError("Select a valid choice.", code="invalid_choice")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        raise forms.ValidationError("Select a valid choice.", code="invalid_choice") from None


class JSONChoiceField(forms.TypedChoiceField):
    """One of an enum of JSON values of mixed types; the options' values are JSON text. Blank
    ("—") is "", a chosen null is None."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(coerce=_loads, empty_value="", **kwargs)

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Posted JSON text, parsed, so that prepare_value shows both it and an initial value
        # (a Python value) the same way.
        try:
            return _loads(data) if data not in self.empty_values else data
        except forms.ValidationError:
            return InvalidJSONInput(data)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput) or value == "":
            return value
        return json.dumps(value)


class JSONMultipleChoiceField(forms.TypedMultipleChoiceField):
    """Several of an enum of non-text JSON values (``[1, 2, 3]``); options' values are JSON."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(coerce=_loads, empty_value=[], **kwargs)

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return [_loads(x) for x in data or []]
        except forms.ValidationError:
            return [InvalidJSONInput(x) for x in data or []]

    def prepare_value(self, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        return [x if isinstance(x, InvalidJSONInput) else json.dumps(x) for x in value]


_NO_VALUE = object()


class EditsForm(forms.Form):
    """One input per property of the gate's schema.

    The form starts from what the gate shows (``reviews.services.form_values``: the AI's
    values, the schema's defaults, on a four-eyes gate the latest approval's edits). A field the
    reviewer did not touch (its posted text is what the page showed, or it was not posted at
    all) sends exactly that value, as an API decision that leaves the field out does
    (``with_shown_values``): the form never rewrites a value nobody changed (trimmed text,
    ``\\r\\n``, a float's digits, a null turned into false or "").
    """

    def __init__(self, gate: Gate, *args: Any, shown: Any = None, **kwargs: Any) -> None:
        from reviews import services

        start = shown if shown is not None else services.form_values(gate)
        # The values the form shows: what an untouched field sends.
        self.shown: dict[str, Any] = dict(start.values)
        # Whose corrections the fields start from (a four-eyes gate's earlier approval), if any.
        self.edited_by: str = start.edited_by if start.corrected else ""
        kwargs.setdefault("prefix", EDITS_PREFIX)
        kwargs.setdefault("label_suffix", "")
        kwargs.setdefault("initial", dict(self.shown))
        super().__init__(*args, **kwargs)
        self.schema = gate.fields_schema or {}
        required = set(self.schema.get("required") or [])
        self.nullable: set[str] = set()
        for name, prop in properties(self.schema).items():
            prop = prop if isinstance(prop, dict) else {}
            value = self.initial.get(name, _NO_VALUE)
            field = field_for(prop, name in required, shown=value)
            # Who changed this field's value in an earlier approval (the form shows theirs).
            field.edited_by = start.edited_by if name in start.corrected else ""  # type: ignore[attr-defined]
            self.fields[name] = field
            if nullable(prop)[1]:
                self.nullable.add(name)
            if (
                isinstance(field, forms.ChoiceField)
                and not isinstance(field, forms.MultipleChoiceField)
                and not _among_choices(field, value)
            ):
                # No value to show (or one that is no choice): the blank choice, so that the
                # browser does not send the first choice as if the reviewer had picked it.
                self.initial[name] = ""

    def untouched(self, name: str) -> bool:
        """Whether the reviewer left field ``name`` as the page showed it: not posted at all
        (taken off the page), or posted as the text the page rendered for it (line breaks
        aside; a multiple choice in any order)."""
        field = self.fields[name]
        widget = field.widget
        key = self.add_prefix(name)
        if widget.value_omitted_from_data(self.data, self.files, key):
            return True
        posted = widget.value_from_datadict(self.data, self.files, key)
        initial = self.get_initial_for_field(field, name)
        if isinstance(field, forms.BooleanField) and not isinstance(field, forms.NullBooleanField):
            checked = widget.check_test(initial) if hasattr(widget, "check_test") else initial
            return bool(posted) == bool(checked)
        rendered = widget.format_value(field.prepare_value(initial))
        return _texts(posted) == _texts(rendered)

    @cached_property
    def changed_data(self) -> list[str]:  # type: ignore[override]
        return [name for name in self.fields if not self.untouched(name)]

    def edits(self) -> dict[str, Any]:
        """The cleaned values as JSON data.

        An untouched field is the value the page showed (``self.shown``), when that is a valid
        value of the field, else left out, exactly as in an API decision that leaves it out. A
        changed field left blank whose schema allows null is null; any other blank field (a
        number, a choice, JSON) is left out too: "not edited", the shown value stays.
        """
        out: dict[str, Any] = {}
        props = properties(self.schema)
        for name, field in self.fields.items():
            prop = props.get(name)
            if self.untouched(name):
                if (
                    isinstance(field, forms.BooleanField)
                    and not isinstance(field, forms.NullBooleanField)
                    and not fits_field(prop, self.shown.get(name, _NO_VALUE))
                ):
                    # A checkbox always shows a state: unticked is false.
                    out[name] = bool(self.cleaned_data.get(name))
                continue
            value = self.cleaned_data.get(name)
            if isinstance(field, JSONChoiceField):
                blank = value == ""  # a chosen null is a value here, not a blank
            else:
                blank = value is None or (value == "" and isinstance(field, forms.ChoiceField))
            if blank:
                if name in self.nullable:
                    out[name] = None
                continue
            out[name] = value
        return with_shown_values(self.schema, None, out, shown=self.shown)  # type: ignore[no-any-return]

    def edited_fields(self) -> list[dict[str, Any]]:
        """Each field the reviewer changed, as a page that could not take the decision gives it
        back, read-only: ``label``, ``text`` (as typed; a choice's label, "ticked"), and for a
        typed text its ``name`` (reviews.js puts it back into the form if the form returns)."""
        out = []
        for name in self.changed_data:
            field = self.fields[name]
            key = self.add_prefix(name)
            posted = field.widget.value_from_datadict(self.data, self.files, key)
            typed = ""
            if isinstance(field, forms.BooleanField) and not isinstance(
                field, forms.NullBooleanField
            ):
                text = "ticked" if posted else "not ticked"
            elif isinstance(posted, list | tuple):
                labels = _choice_labels(field)
                text = ", ".join(labels.get(str(p), str(p)) for p in posted) or "(none)"
            elif isinstance(field.widget, forms.Select):
                text = _choice_labels(field).get(str(posted), str(posted or ""))
            else:
                text = plain_newlines(str(posted or ""))
                typed = key
            out.append({"label": str(self[name].label), "text": text, "name": typed})
        return out


def _texts(value: Any) -> list[str]:
    """A widget's value (rendered, or posted) as comparable texts."""
    if value is None:
        return [""]
    if isinstance(value, list | tuple):
        return sorted(plain_newlines(str(v)) if v is not None else "" for v in value)
    return [plain_newlines(str(value))]


def _choice_labels(field: forms.Field) -> dict[str, str]:
    """A choice's label by its posted value, for a field with choices (else none)."""
    choices: Any = getattr(field.widget, "choices", None) or []
    return {str(k): str(v) for k, v in choices}


def _among_choices(field: forms.ChoiceField, value: Any) -> bool:
    if value is _NO_VALUE:
        return False
    keys = [k for k in _choice_labels(field) if k != ""]
    if isinstance(field, JSONChoiceField):
        return any(same_json(_loads(k), value) for k in keys)
    return value in keys


def field_for(prop: dict[str, Any], required: bool, shown: Any = _NO_VALUE) -> forms.Field:
    """The form field of a schema property; ``shown``: the value the form starts from, if any
    (a required choice without one gets a blank choice; a text with line breaks a text area)."""
    prop, is_nullable = nullable(prop)
    label = str(prop.get("title") or "")
    common: dict[str, Any] = {
        "required": required and not is_nullable,
        "help_text": str(prop.get("description") or ""),
    }
    if label:
        common["label"] = label
    kind = prop.get("type")
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        # A required choice with no value to start from gets a blank too: approving needs a
        # choice, and the browser would send the first one as if the reviewer had picked it.
        blank_first = not common["required"] or not any(
            shown is not _NO_VALUE and same_json(v, shown) for v in enum
        )
        if all(isinstance(v, str) for v in enum):
            choices = [(v, v) for v in enum]
            if blank_first:
                choices = [("", "—"), *choices]
            return forms.ChoiceField(choices=choices, **common)
        # Mixed types (``["low", "high", null]``, ``[1, 2, 3]``): each option's value is the
        # choice's JSON text, so "1" and 1 stay apart and text is never parsed as JSON.
        choices = [(json.dumps(v), _choice_label(v)) for v in enum]
        if blank_first:
            choices = [("", "—"), *choices]
        return JSONChoiceField(choices=choices, **common)
    if kind == "boolean":
        if is_nullable:
            return forms.NullBooleanField(
                required=False,
                widget=NullBooleanSelect,
                help_text=common["help_text"],
                label=label or None,
            )
        return forms.BooleanField(
            required=False, help_text=common["help_text"], label=label or None
        )
    if kind == "integer":
        minimum = _number(prop, "minimum")
        return forms.IntegerField(
            # A fractional bound (minimum 0.5) is valid JSON Schema and compares fine.
            min_value=minimum,  # type: ignore[arg-type]
            max_value=_number(prop, "maximum"),  # type: ignore[arg-type]
            widget=NumberText(mode="numeric" if minimum is not None and minimum >= 0 else "text"),
            **common,
        )
    if kind == "number":
        return forms.FloatField(
            min_value=_number(prop, "minimum"),
            max_value=_number(prop, "maximum"),
            widget=NumberText(),
            **common,
        )
    if kind == "string":
        default = prop.get("default")
        long = (
            prop.get("format") == "textarea"
            or (_length(prop, "maxLength") or 0) > LONG_TEXT
            or (isinstance(default, str) and len(default) > 60)
            # A text input drops line breaks: text that has some is shown in a text area.
            or (isinstance(shown, str) and (len(shown) > 60 or "\n" in shown or "\r" in shown))
        )
        # dir=auto: the AI's text (and the reviewer's correction) may be right to left.
        widget: forms.Widget = (
            forms.Textarea(attrs={"rows": 3, "dir": "auto"})
            if long
            else forms.TextInput(attrs={"dir": "auto"})
        )
        return CharField(
            min_length=_length(prop, "minLength"),
            max_length=_length(prop, "maxLength"),
            widget=widget,
            empty_value=None if is_nullable else "",
            **common,
        )
    if kind == "array":
        items = prop.get("items")
        item, _ = nullable(items if isinstance(items, dict) else {})
        if isinstance(item.get("enum"), list):
            if all(isinstance(v, str) for v in item["enum"]):
                return forms.MultipleChoiceField(
                    choices=[(v, v) for v in item["enum"]],
                    widget=forms.CheckboxSelectMultiple,
                    **common,
                )
            return JSONMultipleChoiceField(
                choices=[(json.dumps(v), _choice_label(v)) for v in item["enum"]],
                widget=forms.CheckboxSelectMultiple,
                **common,
            )
        if item.get("type", "string") == "string":
            return LinesField(**common)
    return JSONValueField(decimals=accepts_decimal_text(prop), **common)


# A gate opened before its schema was checked may hold a bound that is not a number: the
# input then goes without it (the decision's own validation says what is wrong), rather than
# a validator comparing a number with text.
def _number(prop: dict[str, Any], key: str) -> int | float | None:
    value = prop.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _length(prop: dict[str, Any], key: str) -> int | None:
    value = prop.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class PreferencesForm(forms.ModelForm):
    """A reviewer's notification preferences (reviews.notifications). The chat URL must pass
    the webhooks' address guard (http(s), no credentials, no loopback or private address);
    delivery checks it again, resolved, before every message."""

    events = forms.MultipleChoiceField(
        choices=(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Tell me when",
    )

    class Meta:
        from reviews.models import NotificationPreference

        model = NotificationPreference
        fields = [
            "email_enabled",
            "chat_enabled",
            "chat_webhook_url",
            "mode",
            "digest_minutes",
            "events",
        ]
        labels = {
            "email_enabled": "E-mail",
            "chat_enabled": "Chat webhook",
            "chat_webhook_url": "Chat webhook URL",
            "mode": "Delivery",
            "digest_minutes": "Digest interval (minutes)",
        }
        help_texts = {
            "chat_webhook_url": "A Slack-compatible incoming webhook (https://hooks.slack.com/…).",
            "digest_minutes": "Digests go out at the end of each interval, aligned on the UTC "
            "clock (60: on the hour, UTC; 1440: at midnight UTC).",
        }
        widgets = {"mode": forms.RadioSelect}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from reviews.models import NotifyEvent

        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["events"].choices = NotifyEvent.choices  # type: ignore[attr-defined]
        self.fields["digest_minutes"].min_value = 1  # type: ignore[attr-defined]
        self.fields["digest_minutes"].max_value = 24 * 60  # type: ignore[attr-defined]
        self.fields["digest_minutes"].widget.attrs.update({"min": 1, "max": 24 * 60})
        from django.core.validators import MaxValueValidator, MinValueValidator

        self.fields["digest_minutes"].validators += [
            MinValueValidator(1),
            MaxValueValidator(24 * 60),
        ]

    def clean_chat_webhook_url(self) -> str:
        from workflows.webhooks import CallbackUrlError, check_callback_url

        url = (self.cleaned_data.get("chat_webhook_url") or "").strip()
        if url:
            try:
                check_callback_url(url)
            except CallbackUrlError as exc:
                message = str(exc).replace("callback_url", "the URL")
                raise forms.ValidationError(message[:1].upper() + message[1:] + ".") from None
        return url

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        # Only when the URL was left empty: a URL refused above already says what is wrong.
        if (
            data.get("chat_enabled")
            and not data.get("chat_webhook_url")
            and "chat_webhook_url" not in self.errors
        ):
            self.add_error("chat_webhook_url", "Give the webhook URL to turn chat on.")
        return data
