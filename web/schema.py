"""Checking values against JSON Schema, the subset pydantic writes.

Types, ``$ref`` into ``$defs``, ``anyOf`` / ``oneOf`` / ``allOf``, ``enum``,
``const``, properties (``required``, ``additionalProperties``), items and
``prefixItems``, numeric bounds, string lengths and patterns. Anything else
in a schema is accepted as is: the processor's own annotation, where it is
known, has the last word (``web.forms``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["check_value", "example", "resolve"]


def resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        schema = _lookup(str(schema["$ref"]), root)
        seen += 1
    return schema


def _lookup(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def example(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A small value that fits ``schema``, to show what to type."""
    root = schema if root is None else root
    schema = resolve(schema, root)
    if depth > 3:
        return None
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or () if isinstance(o, Mapping) and o.get("type") != "null"]
        if options:
            return example(options[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        properties = _mapping(schema.get("properties"))
        return {k: example(v, root, depth + 1) for k, v in list(properties.items())[:8]}
    if kind == "array":
        items = schema.get("items")
        return [example(items, root, depth + 1)] if isinstance(items, Mapping) and items else []
    return {"integer": 0, "number": 0.0, "string": "", "boolean": False}.get(str(kind))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}
_NAMES = {
    "integer": "a whole number", "number": "a number", "string": "a string",
    "boolean": "true or false", "array": "a list", "object": "an object", "null": "null",
}


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return _NAMES[name]
    return type(value).__name__


def check_value(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None,
                path: str = "") -> str | None:
    """Why ``value`` does not match ``schema``, or None."""
    root = schema if root is None else root
    schema = resolve(schema, root)
    where = f"at {path}: " if path else ""
    if "const" in schema and value != schema["const"]:
        return f"{where}must be {json.dumps(schema['const'])}"
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"{where}must be one of {', '.join(json.dumps(e) for e in enum)}"
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            problems = [check_value(value, o, root, path) for o in options if isinstance(o, Mapping)]
            if all(problems):
                return problems[0] if len(problems) == 1 else f"{where}matches none of the allowed types"
    for option in schema.get("allOf") or ():
        if isinstance(option, Mapping) and (problem := check_value(value, option, root, path)):
            return problem
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind) if isinstance(kind, list) else []
    if kinds and not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
        expected = " or ".join(_NAMES.get(k, k) for k in kinds)
        return f"{where}expected {expected}, got {_json_type(value)}"
    if _TYPES["number"](value):
        return _check_number(value, schema, where)
    if isinstance(value, str):
        return _check_string(value, schema, where)
    if isinstance(value, list):
        return _check_list(value, schema, root, path, where)
    if isinstance(value, dict):
        return _check_object(value, schema, root, path, where)
    return None


def _check_number(value: float, schema: Mapping[str, Any], where: str) -> str | None:
    bounds: tuple[tuple[str, Callable[[float], bool], str], ...] = (
        ("minimum", lambda b: value >= b, "at least"),
        ("maximum", lambda b: value <= b, "at most"),
        ("exclusiveMinimum", lambda b: value > b, "more than"),
        ("exclusiveMaximum", lambda b: value < b, "less than"),
    )
    for key, ok, words in bounds:
        bound = schema.get(key)
        if isinstance(bound, int | float) and not ok(bound):
            return f"{where}must be {words} {bound}"
    return None


def _check_string(value: str, schema: Mapping[str, Any], where: str) -> str | None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        return f"{where}must be at least {low} characters long"
    if isinstance(high, int) and len(value) > high:
        return f"{where}must be at most {high} characters long"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, value) is None:
                return f"{where}must match the pattern {pattern}"
        except re.error:
            return None
    return None


def _check_list(value: list[Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: str,
                where: str) -> str | None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        return f"{where}needs at least {low} item{'s' if low != 1 else ''}"
    if isinstance(high, int) and len(value) > high:
        return f"{where}takes at most {high} item{'s' if high != 1 else ''}"
    raw_prefix = schema.get("prefixItems")
    prefix: list[Any] = raw_prefix if isinstance(raw_prefix, list) else []
    items = schema.get("items")
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else items
        if isinstance(sub, Mapping):
            problem = check_value(item, sub, root, f"{path}[{index}]")
            if problem:
                return problem
    return None


def _check_object(value: dict[Any, Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: str,
                  where: str) -> str | None:
    properties = _mapping(schema.get("properties"))
    for name in schema.get("required") or ():
        if name not in value:
            return f"{where}missing required field {json.dumps(name)}"
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub_path = f"{path}.{key}" if path else str(key)
        if key in properties:
            problem = check_value(item, properties[key], root, sub_path)
        elif extra is False:
            problem = f"{where}unexpected field {json.dumps(key)}"
        elif isinstance(extra, Mapping):
            problem = check_value(item, extra, root, sub_path)
        else:
            problem = None
        if problem:
            return problem
    return None
