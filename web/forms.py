"""The launch form: one typed field per floating input, from its JSON Schema.

Workers publish the JSON Schema of each input's value type with their
registrations. A field's widget follows the schema: whole numbers, numbers,
text, a choice (string enums), a checkbox (booleans), and JSON for
everything else (lists, dicts, models, unions, ``Any``). Each field can also
take several values at once, as a JSON list, one stream value per item.

Parsing never raises: it returns the values and one message per bad field.
Values are checked against the schema (:mod:`web.schema`). When a reader of
the input is implemented in this process, the value is also validated and
converted with pydantic against the real annotation (so a model arrives as
the model, not as a dict).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datagraph.processor import registry
from datagraph.snapshots import ProcessorInfo

from .schema import check_value, example, resolve

__all__ = ["InputField", "Submission", "launch_fields", "parse_form", "parse_json_inputs"]

_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class InputField:
    """One floating input of the flow being launched."""

    io: str
    #: The value type as text ("int", "list[str]", "Any").
    type_text: str
    schema: dict[str, Any]
    #: "int", "float", "text", "select", "bool" or "json".
    widget: str
    #: Whether an empty field means None.
    nullable: bool
    choices: tuple[str, ...]
    #: Processors of the flow that read this input.
    readers: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"input.{self.io}"

    @property
    def many_name(self) -> str:
        return f"values.{self.io}"

    @property
    def dom_id(self) -> str:
        return f"field-{self.io}"

    @property
    def hint(self) -> str:
        return {
            "int": "A whole number",
            "float": "A number",
            "text": "Text",
            "select": "One of the choices",
            "bool": "Checked for true",
        }.get(self.widget, "JSON" + ("; text needs quotes" if not self.schema else ""))

    @property
    def placeholder(self) -> str:
        """An example value for JSON fields (from the schema), e.g. ``{"id": 0, "name": ""}``."""
        if self.widget != "json" or not self.schema:
            return ""
        return json.dumps(example(self.schema))


@dataclass
class Submission:
    """What a launch request asked for."""

    #: io -> the values to send on it (one, or several).
    values: dict[str, list[Any]] = field(default_factory=dict)
    #: io (or "" for the form as a whole) -> message.
    errors: dict[str, str] = field(default_factory=dict)
    #: What was typed, by form field name, to show it again.
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _widget(schema: Mapping[str, Any]) -> tuple[str, bool, tuple[str, ...]]:
    """(widget, nullable, choices) for a value schema."""
    root = schema
    schema = resolve(schema, root)
    nullable = False
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        rest = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
        if len(rest) == 1 and len(rest) < len(options):
            nullable, schema = True, resolve(rest[0], root)
        else:
            return "json", False, ()
    kind = schema.get("type")
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
        return "select", nullable, tuple(enum)
    if kind == "integer":
        return "int", nullable, ()
    if kind == "number":
        return "float", nullable, ()
    if kind == "string" and "enum" not in schema:
        return "text", nullable, ()
    if kind == "boolean":
        return ("select", True, ("true", "false")) if nullable else ("bool", False, ())
    return "json", nullable, ()


def launch_fields(
    floating_inputs: Sequence[str],
    specs: Sequence[Mapping[str, Any]],
    infos: Mapping[str, ProcessorInfo],
) -> list[InputField]:
    """The form's fields: the schema of each input comes from the first reader that
    registered a non-empty one."""
    fields = []
    for io in floating_inputs:
        readers = tuple(str(s["name"]) for s in specs if io in (s.get("inputs") or ()))
        schema: dict[str, Any] = {}
        type_text = "Any"
        for reader in readers:
            info = infos.get(reader)
            if info is None:
                continue
            port = next((p for p in info.inputs if p.name == io), None)
            if port is not None and (port.schema or type_text == "Any"):
                schema, type_text = dict(port.schema), port.type
                if schema:
                    break
        widget, nullable, choices = _widget(schema)
        fields.append(InputField(io, type_text, schema, widget, nullable, choices, readers))
    return fields


# -- parsing ----------------------------------------------------------------------------


def _local_type(f: InputField) -> Any:
    """The annotation of the input where a reader is implemented in this process."""
    for reader in f.readers:
        processor = registry.get(reader)
        impl = processor.implementation if processor is not None else None
        if impl is not None:
            tp = impl.input_types().get(f.io)
            if tp is not None and tp is not Any:
                return tp
    return None


def _convert(f: InputField, value: Any) -> tuple[Any, str | None]:
    """Check ``value`` against the schema, then against the local type if any."""
    problem = check_value(value, f.schema)
    if problem:
        return value, problem
    tp = _local_type(f)
    if tp is None:
        return value, None
    from pydantic import TypeAdapter, ValidationError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapter: TypeAdapter[Any] = TypeAdapter(tp)
    except Exception:  # a type pydantic cannot handle: the schema check stands
        return value, None
    try:
        return adapter.validate_python(value), None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first.get("loc", ()))
        return value, f"{'at ' + loc + ': ' if loc else ''}{first.get('msg', 'invalid value')}"


def _parse_text(f: InputField, text: str) -> tuple[Any, str | None]:
    """A typed value from what was typed into a single-value field."""
    if f.widget == "bool":
        return text.lower() in ("on", "true", "1", "yes"), None
    if text.strip() == "" and f.widget != "text":
        return None, None if f.nullable else "required"
    if f.widget == "text":
        if text == "":
            return None, None if f.nullable else "required"
        return text, None
    if f.widget == "int":
        if not _INT.fullmatch(text.strip()):
            return None, f"enter a whole number (e.g. 42), not {text.strip()[:40]!r}"
        return int(text), None
    if f.widget == "float":
        try:
            return float(text), None
        except ValueError:
            return None, f"enter a number (e.g. 3.5), not {text.strip()[:40]!r}"
    if f.widget == "select":
        if text not in f.choices:
            return None, f"choose one of {', '.join(f.choices)}"
        if f.choices == ("true", "false"):
            return text == "true", None
        return text, None
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"not valid JSON: {exc}"


def parse_form(fields: Sequence[InputField], form: Mapping[str, str]) -> Submission:
    """Values and per-field messages from a submitted launch form."""
    result = Submission()
    for f in fields:
        single = str(form.get(f.name, ""))
        many = str(form.get(f.many_name, ""))
        result.raw[f.name], result.raw[f.many_name] = single, many
        if many.strip():
            try:
                items = json.loads(many)
            except ValueError as exc:
                result.errors[f.io] = f"several values: not valid JSON: {exc}"
                continue
            _take_many(result, f, items)
            continue
        value, problem = _parse_text(f, single)
        if problem is None and not (value is None and f.nullable):
            value, problem = _convert(f, value)
        if problem:
            result.errors[f.io] = problem
        else:
            result.values[f.io] = [value]
    return result


def _take_many(result: Submission, f: InputField, items: Any) -> None:
    if not isinstance(items, list) or not items:
        result.errors[f.io] = "several values: give a non-empty JSON list, one item per value"
        return
    converted = []
    for index, item in enumerate(items):
        value, problem = _convert(f, item)
        if problem:
            result.errors[f.io] = f"value {index + 1}: {problem}"
            return
        converted.append(value)
    result.values[f.io] = converted


def parse_json_inputs(
    fields: Sequence[InputField], inputs: Mapping[str, Any], streams: Mapping[str, Any]
) -> Submission:
    """Values and per-input messages from a JSON launch request.

    ``inputs`` maps an input to its one value, ``streams`` to a list of values.
    """
    result = Submission()
    known = {f.io for f in fields}
    for name in [*inputs, *streams]:
        if name not in known:
            result.errors[name] = (
                f"the flow has no input {name!r}; its inputs are {sorted(known) or 'none'}"
            )
    for f in fields:
        if f.io in streams:
            _take_many(result, f, streams[f.io])
        elif f.io in inputs:
            value, problem = _convert(f, inputs[f.io])
            if problem:
                result.errors[f.io] = problem
            else:
                result.values[f.io] = [value]
        elif f.nullable:
            result.values[f.io] = [None]
        else:
            result.errors[f.io] = "required"
    return result
