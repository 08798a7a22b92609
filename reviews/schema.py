"""Editable fields of a gate: a JSON Schema (or a pydantic model) turned into a validator.

``ctx.review(fields=...)`` accepts a JSON Schema object or a pydantic model class (or instance,
whose values then pre-fill the form). The gate stores the JSON Schema; every decision's edits,
from the browser or the API, are validated here against it by a pydantic model built from the
schema, so both paths give the same errors. The supported subset is what a form can show:
strings (with ``enum``, ``minLength``, ``maxLength``, ``pattern``), integers and numbers (with
``minimum``/``maximum``), booleans, arrays of those, nullable variants, ``required`` and
``default``. Anything else is accepted as any JSON value.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any, Literal, Optional

import pydantic

from workflows.core import payloads
from workflows.core.jsonvalues import same_json

FieldError = dict[str, str]


def schema_of(fields: Any) -> dict[str, Any]:
    """The JSON Schema of ``fields`` (None, a schema dict, a pydantic model class or instance)."""
    if fields is None:
        return {}
    if isinstance(fields, pydantic.BaseModel):
        schema = _inline_refs(type(fields).model_json_schema())
        values = fields.model_dump(mode="json")
        for name, prop in schema.get("properties", {}).items():
            if name in values:
                prop["default"] = values[name]
                # The instance's value is a pre-fill chosen by the pipeline: it beats the
                # payload's value of the same name (a model's own default does not).
                prop[PREFILL_KEY] = True
        return check_schema(_ordered(_named(schema, type(fields))))
    if isinstance(fields, type) and issubclass(fields, pydantic.BaseModel):
        return check_schema(_ordered(_named(_inline_refs(fields.model_json_schema()), fields)))
    if isinstance(fields, dict):
        schema = payloads.to_json(fields, "fields")
        if schema.get("type", "object") != "object" or not isinstance(
            schema.get("properties"), dict
        ):
            raise ValueError(
                "fields must be a JSON Schema object with 'properties' (or a pydantic model)"
            )
        return check_schema(_ordered(_inline_refs(schema)))
    raise TypeError(
        f"fields must be a JSON Schema dict or a pydantic model, not {type(fields).__name__}"
    )


# The model a gate's schema came from (``module:QualName``): decisions are also validated by
# the model itself, which checks what the schema subset here does not (formats, multipleOf,
# its own validators), so that ``Decision.edits`` is always an instance of it.
MODEL_KEY = "x-sluice-model"
# The properties' names in the pipeline's order (a jsonb column does not keep it).
ORDER_KEY = "x-sluice-order"
# On a property whose ``default`` came from a pydantic model instance's value (``fields=
# Correction(reply=...)``): what the form starts from, before the payload's value.
PREFILL_KEY = "x-sluice-prefill"


def _named(schema: dict[str, Any], model: type[pydantic.BaseModel]) -> dict[str, Any]:
    if "<locals>" not in model.__qualname__:
        schema[MODEL_KEY] = f"{model.__module__}:{model.__qualname__}"
    return schema


def model_of(schema: dict[str, Any]) -> type[pydantic.BaseModel] | None:
    """The pydantic model named in ``schema``, if its module is loaded in this process (no
    import is made from what the database says: pipelines are loaded at start-up)."""
    name = schema.get(MODEL_KEY) if isinstance(schema, dict) else None
    if not isinstance(name, str) or ":" not in name:
        return None
    module_name, qualname = name.split(":", 1)
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, pydantic.BaseModel):
        return found
    return None


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``{"$ref": "#/$defs/X"}`` by the definition (pydantic puts enums there)."""
    defs = schema.get("$defs", {})

    def walk(node: Any, depth: int = 0) -> Any:
        if depth > 20:
            return {}
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = defs.get(ref.rsplit("/", 1)[1], {})
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**walk(target, depth + 1), **rest}
            return {k: walk(v, depth + 1) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The schema's properties, in the order the pipeline gave them (``ORDER_KEY``: a jsonb
    column keeps an object's keys in an order of its own, shortest first)."""
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        return {}
    order = schema.get(ORDER_KEY)
    if isinstance(order, list) and order:
        ranked = {k: props[k] for k in order if isinstance(k, str) and k in props}
        ranked.update({k: v for k, v in props.items() if k not in ranked})
        return ranked
    return props


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    if isinstance(props, dict):
        schema[ORDER_KEY] = list(props)
    return schema


def nullable(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Unwrap pydantic's ``anyOf: [X, {"type": "null"}]``; return (X, whether null is allowed)."""
    options = prop.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        if len(rest) == 1 and len(rest) < len(options):
            merged = {**{k: v for k, v in prop.items() if k != "anyOf"}, **rest[0]}
            return merged, True
    kind = prop.get("type")
    if isinstance(kind, list) and "null" in kind:
        others = [k for k in kind if k != "null"]
        return {**prop, "type": others[0] if len(others) == 1 else others}, True
    return prop, False


def _python_type(prop: dict[str, Any]) -> Any:
    prop, is_nullable = nullable(prop)
    kind = prop.get("type")
    enum = prop.get("enum")
    annotated: Any
    if isinstance(enum, list) and enum:
        annotated = Literal[tuple(enum)]  # type: ignore[valid-type]
    elif kind == "string":
        annotated = _constrained(
            str, prop, {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}
        )
    elif kind == "integer":
        annotated = _constrained(int, prop, _NUMERIC)
    elif kind == "number":
        annotated = _constrained(float, prop, _NUMERIC)
    elif kind == "boolean":
        annotated = bool
    elif kind == "array":
        item = prop.get("items") if isinstance(prop.get("items"), dict) else {}
        annotated = _constrained(
            list[_python_type(item) if item else Any],  # type: ignore[misc]
            prop,
            {"minItems": "min_length", "maxItems": "max_length"},
        )
    else:
        annotated = Any
    return Optional[annotated] if is_nullable else annotated  # noqa: UP045


_NUMERIC = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}


def _constrained(base: Any, prop: dict[str, Any], names: dict[str, str]) -> Any:
    from typing import Annotated

    kwargs = {ours: prop[theirs] for theirs, ours in names.items() if theirs in prop}
    return Annotated[base, pydantic.Field(**kwargs)] if kwargs else base


class SchemaProblem(ValueError):
    """A gate's fields schema that no validator can be built from (a bad ``pattern``, a
    ``minimum`` that is not a number...): ``field`` names the property at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r} of the gate's fields schema is invalid: {message}")
        self.field = field
        self.message = message


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Build the validator of ``schema`` now, so a mistake in it fails ``ctx.review`` before
    the gate is opened instead of every decision on it; raise ``SchemaProblem`` naming the
    field. Returns ``schema``."""
    for name, prop in properties(schema).items():
        prop = prop if isinstance(prop, dict) else {}
        inner = nullable(prop)[0]
        try:
            # The form's inputs take these bounds too (a number input's min, a text's
            # maxlength): they must be numbers even where pydantic would coerce "5".
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if key in inner and not _is_number(inner[key]):
                    raise ValueError(f"{key} must be a number, not {inner[key]!r}")
            for key in ("minLength", "maxLength", "minItems", "maxItems"):
                value = inner.get(key, 0)
                if not (_is_number(value) and isinstance(value, int) and value >= 0):
                    raise ValueError(f"{key} must be a whole number, not {value!r}")
            pydantic.create_model(  # type: ignore[call-overload]
                "GateField", value=(_python_type(prop), None)
            )
            if prop.get("default") is not None:
                # A default is what a decision without edits stores: it must already be a value
                # of the field's type, as its JSON (a "" for an integer would be stored as is).
                adapter = pydantic.TypeAdapter(_python_type(prop))
                try:
                    fits = (
                        adapter.dump_python(adapter.validate_python(prop["default"]), mode="json")
                        == prop["default"]
                    )
                except pydantic.ValidationError:
                    fits = False
                if not fits:
                    raise ValueError(f"its default {prop['default']!r} is not of the field's type")
        except Exception as exc:  # pydantic's SchemaError, TypeError (an unhashable enum)...
            raise SchemaProblem(str(name), _first_line(exc)) from None
    try:
        _model_for(json.dumps(schema, sort_keys=True))
    except Exception as exc:
        raise SchemaProblem("(schema)", _first_line(exc)) from None
    return schema


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    # pydantic's SchemaError nests 'Error building ... validator:' lines around the cause.
    lines = [
        line.strip().removeprefix("SchemaError:").strip()
        for line in str(exc).splitlines()
        if line.strip()
        and "Error building" not in line
        and not line.strip().startswith("SchemaError: Field")
    ]
    return "; ".join(lines)[:300] or type(exc).__name__


@lru_cache(maxsize=256)
def _model_for(schema_text: str) -> type[pydantic.BaseModel]:
    schema = json.loads(schema_text)
    required = set(schema.get("required") or [])
    fields: dict[str, Any] = {}
    for name, prop in properties(schema).items():
        prop = prop if isinstance(prop, dict) else {}
        if name in required:
            default: Any = ...
        else:
            default = prop.get("default")
        fields[name] = (_python_type(prop), default)
    return pydantic.create_model(  # type: ignore[call-overload,no-any-return]
        "GateEdits", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )


def validate_edits(
    schema: dict[str, Any], edits: Any
) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """Validate ``edits`` against the gate's schema; return (clean JSON data, errors)."""
    if not properties(schema):
        if edits in (None, {}):
            return None, []
        return None, [{"field": "edits", "message": "this gate has no editable fields"}]
    if edits is None:
        return None, []
    if not isinstance(edits, dict):
        return None, [{"field": "edits", "message": "edits must be an object of field values"}]
    errors = []
    for name, value in edits.items():
        try:
            # Deep nesting, NaN, NUL: what no JSON column stores is a mistake in the edit.
            payloads.check_size(payloads.to_json(value, str(name)), str(name))
        except (TypeError, ValueError) as exc:
            errors.append({"field": str(name), "message": str(exc)})
    if errors:
        return None, errors
    try:
        check_schema(schema)
        model = _model_for(json.dumps(schema, sort_keys=True))
    except SchemaProblem as exc:
        # A gate opened before its schema was checked when opened: it can still be decided
        # (with a clear 422 on the field) or expire, never a 500.
        message = f"this field cannot be edited: {exc.message}"
        return None, [{"field": exc.field, "message": message}]
    try:
        clean = model.model_validate(edits).model_dump(mode="json")
    except pydantic.ValidationError as exc:
        return None, _field_errors(exc)
    own = model_of(schema)
    if own is None:
        return clean, []
    # The pipeline's own model checks what the schema subset cannot. It gets the fields sent
    # and those with a default in the schema: a field left out keeps the model's own default
    # (a default_factory the schema does not show).
    shown = properties(schema)
    sent = {k: v for k, v in clean.items() if k in edits or "default" in (shown.get(k) or {})}
    try:
        # Stored as the model makes it, so that ``Decision.edits`` is built back from it.
        return own.model_validate(sent).model_dump(mode="json"), []
    except pydantic.ValidationError as exc:
        # A field of the model the form does not show is not the reviewer's to fix.
        errors = [e for e in _field_errors(exc) if e["field"] in shown or e["field"] == "edits"]
        if errors:
            return None, errors
    except Exception as exc:  # a validator of the pipeline's model that raised something else
        return None, [{"field": "edits", "message": f"{type(exc).__name__}: {exc}"[:300]}]
    return clean, []


def _field_errors(exc: pydantic.ValidationError) -> list[FieldError]:
    errors = []
    for e in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = [str(p) for p in e["loc"]]
        errors.append({"field": loc[0] if loc else "edits", "message": _message(e)})
    return errors


def _message(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "this is not one of the gate's editable fields"
    if error["type"] == "missing":
        return "this field is required"
    return msg[:1].lower() + msg[1:]


def initial_values(schema: dict[str, Any], payload: Any) -> dict[str, Any]:
    """Form values before the reviewer touches them: the value of the same name at the top level
    of the payload (the AI's answer to correct), else the schema's default. A default only beats
    the AI's value when it is a pipeline's explicit pre-fill (a pydantic model instance's value,
    ``PREFILL_KEY``) or when the AI's value is not a value of the field (an "about 5" for a
    number with a default of 3); an AI value that does not fit a field without a default is
    still shown, for the reviewer to correct."""
    values: dict[str, Any] = {}
    for name, prop in properties(schema).items():
        if not isinstance(prop, dict):
            continue
        has_default = "default" in prop
        in_payload = isinstance(payload, dict) and name in payload
        if has_default and (prop.get(PREFILL_KEY) or not in_payload):
            values[name] = prop["default"]
        elif in_payload:
            fits = not has_default or fits_field(prop, payload[name])
            values[name] = payload[name] if fits else prop["default"]
    return values


@lru_cache(maxsize=512)
def _adapter_for(prop_text: str) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(_python_type(json.loads(prop_text)))


def _adapter(prop: dict[str, Any]) -> pydantic.TypeAdapter[Any]:
    return _adapter_for(json.dumps(prop, sort_keys=True))


def fits_field(prop: Any, value: Any) -> bool:
    """Whether ``value`` is a valid value of the field ``prop`` (as a decision would send it)."""
    if not isinstance(prop, dict):
        return False
    try:
        _adapter(prop).validate_python(value)
    except Exception:  # a ValidationError, or a schema no validator can be built from
        return False
    return True


def with_shown_values(
    schema: dict[str, Any], payload: Any, edits: Any, shown: dict[str, Any] | None = None
) -> Any:
    """``edits`` (an API decision's) with, for each field it leaves out, what the gate's form
    shows for that field (``shown``, by default ``initial_values``), when that is a valid value
    of the field; a value the form could not show (an AI's "about 5" for a number) stays out,
    as before. The browser's form sends the same for a field it leaves out or that was not
    touched (``reviews.forms.EditsForm.edits``)."""
    props = properties(schema)
    if not isinstance(edits, dict) or not props:
        return edits
    out = dict(edits)
    values = initial_values(schema, payload) if shown is None else shown
    for name, value in values.items():
        prop = props.get(name)
        if name in out or not isinstance(prop, dict):
            continue
        if fits_field(prop, value):
            out[name] = value
    return out


def corrections(schema: dict[str, Any], payload: Any, edits: Any) -> list[tuple[str, Any, Any]]:
    """The fields a decision changed: ``(name, AI's value, person's value)`` for each edited
    field whose value differs from what the form showed (``initial_values``). The browser sends
    every field, changed or not, so "has edits" alone does not mean "corrected". Both values are
    compared as the decision stores them (``normal_value``: a datetime's "+00:00" is "Z", a
    decimal's 12.5 is "12.5") and as JSON (1e308 is the 1000…0 jsonb hands back)."""
    if not isinstance(edits, dict) or not edits:
        return []
    schema = schema if isinstance(schema, dict) else {}
    shown = initial_values(schema, payload)
    out = []
    for name, value in edits.items():
        before = shown.get(name)  # a field the AI left unset showed as empty (null)
        if not same_json(normal_value(schema, name, before), normal_value(schema, name, value)):
            out.append((str(name), before, value))
    return out


def normal_value(schema: dict[str, Any], name: str, value: Any) -> Any:
    """``value`` of field ``name`` as a decision would store it: validated and dumped as JSON by
    the pipeline's own model's field (when the schema names a model of this process), else by
    the schema's field; as it is when it is not a valid value of the field."""
    own = model_of(schema)
    if own is not None and name in own.model_fields:
        try:
            adapter = _model_field_adapter(own, name)
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except Exception:  # not valid for the model's field: try the schema's
            pass
    prop = properties(schema).get(name)
    if isinstance(prop, dict):
        try:
            adapter = _adapter(prop)
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except Exception:
            pass
    return value


@lru_cache(maxsize=256)
def _model_field_adapter(model: type[pydantic.BaseModel], name: str) -> pydantic.TypeAdapter[Any]:
    from typing import Annotated

    info = model.model_fields[name]
    return pydantic.TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]


def corrected_output(payload: Any, edits: Any) -> Any:
    """The AI's output as the person left it: the payload with the edits applied (an object
    payload gets the edited fields replaced; any other payload is replaced by the edits)."""
    if not isinstance(edits, dict) or not edits:
        return payload
    if isinstance(payload, dict):
        return {**payload, **edits}
    return dict(edits)
