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
from typing import Any

from django import forms
from django.forms.fields import InvalidJSONInput

from reviews.models import Gate
from reviews.schema import initial_values, nullable, properties
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


class LinesField(forms.CharField):
    """A list of strings edited as one line each."""

    widget = forms.Textarea(attrs={"rows": 4})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        return [line.strip() for line in str(text).splitlines() if line.strip()]

    def has_changed(self, initial: Any, data: Any) -> bool:
        shown = [str(v) for v in initial] if isinstance(initial, list | tuple) else []
        return bool(self.to_python(data) != shown)

    def run_validators(self, value: Any) -> None:
        # CharField's NUL check looks at str(list), where a NUL shows as "\\x00": check the lines.
        for line in value if isinstance(value, list) else [value]:
            super().run_validators(line)


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


class JSONValueField(forms.JSONField):
    """Strict JSON: no NaN/Infinity, NUL, lone surrogates or deep nesting (Django's own
    JSONField accepts the first three and fails with RecursionError on the last)."""

    widget = forms.Textarea(attrs={"rows": 4, "class": "mono"})

    def to_python(self, value: Any) -> Any:
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        if isinstance(value, str):
            try:
                parsed = json.loads(value, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                raise forms.ValidationError(
                    self.error_messages["invalid"], code="invalid", params={"value": value[:100]}
                ) from None
            problem = storable_problem(parsed)
            if problem:
                raise forms.ValidationError(problem, code="invalid")
        return super().to_python(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Re-displaying a refused value parses it again: keep deep nesting as the text it was.
        try:
            return super().bound_data(data, initial)
        except RecursionError:
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

    def has_changed(self, initial: Any, data: Any) -> bool:
        if data in self.empty_values:
            return initial not in (None, "")
        try:
            return not same_json(_loads(data), initial)
        except forms.ValidationError:
            return True


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

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            chosen = [_loads(x) for x in data or []]
        except forms.ValidationError:
            return True
        # What the form showed: the initial list's items (a single value checked alone).
        if isinstance(initial, list | tuple):
            shown = list(initial)
        else:
            shown = [] if initial in (None, "") else [initial]
        return not same_json(chosen, shown)


class EditsForm(forms.Form):
    """One input per property of the gate's schema."""

    def __init__(self, gate: Gate, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", EDITS_PREFIX)
        kwargs.setdefault("label_suffix", "")
        kwargs.setdefault("initial", initial_values(gate.fields_schema or {}, gate.payload))
        super().__init__(*args, **kwargs)
        schema = gate.fields_schema or {}
        required = set(schema.get("required") or [])
        self.nullable: set[str] = set()
        for name, prop in properties(schema).items():
            prop = prop if isinstance(prop, dict) else {}
            self.fields[name] = field_for(prop, name in required)
            if nullable(prop)[1]:
                self.nullable.add(name)
            if isinstance(self.fields[name], JSONChoiceField) and name not in self.initial:
                # No value to show: the blank choice, not a null one ("(none)").
                self.initial[name] = ""

    def edits(self) -> dict[str, Any]:
        """The cleaned values as JSON data.

        A field left blank whose schema allows null is null; any other blank field (a number,
        a choice, JSON) is left out, as an API decision that omits it: "not edited", so the
        schema's default applies instead of a null the field does not accept.
        """
        out: dict[str, Any] = {}
        for name, field in self.fields.items():
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
        return out


def field_for(prop: dict[str, Any], required: bool) -> forms.Field:
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
        if all(isinstance(v, str) for v in enum):
            choices = [(v, v) for v in enum]
            if not common["required"]:
                choices = [("", "—"), *choices]
            return forms.ChoiceField(choices=choices, **common)
        # Mixed types (``["low", "high", null]``, ``[1, 2, 3]``): each option's value is the
        # choice's JSON text, so "1" and 1 stay apart and text is never parsed as JSON.
        choices = [(json.dumps(v), _choice_label(v)) for v in enum]
        if not common["required"]:
            choices = [("", "—"), *choices]
        return JSONChoiceField(choices=choices, **common)
    if kind == "boolean":
        return forms.BooleanField(
            required=False, help_text=common["help_text"], label=label or None
        )
    if kind == "integer":
        return forms.IntegerField(
            # A fractional bound (minimum 0.5) is valid JSON Schema and compares fine.
            min_value=_number(prop, "minimum"),  # type: ignore[arg-type]
            max_value=_number(prop, "maximum"),  # type: ignore[arg-type]
            **common,
        )
    if kind == "number":
        return forms.FloatField(
            min_value=_number(prop, "minimum"),
            max_value=_number(prop, "maximum"),
            widget=forms.NumberInput(attrs={"step": "any"}),
            **common,
        )
    if kind == "string":
        default = prop.get("default")
        long = (
            prop.get("format") == "textarea"
            or (_length(prop, "maxLength") or 0) > LONG_TEXT
            or (isinstance(default, str) and len(default) > 60)
        )
        # dir=auto: the AI's text (and the reviewer's correction) may be right to left.
        widget: forms.Widget = (
            forms.Textarea(attrs={"rows": 3, "dir": "auto"})
            if long
            else forms.TextInput(attrs={"dir": "auto"})
        )
        return forms.CharField(
            min_length=_length(prop, "minLength"),
            max_length=_length(prop, "maxLength"),
            strip=True,
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
    return JSONValueField(**common)


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
