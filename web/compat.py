"""Whether values one processor produces can be read by another: JSON Schema against JSON Schema.

Every registration carries each port's value type as JSON Schema (pydantic's
``TypeAdapter``; ``{}`` for ``Any`` or a type pydantic cannot describe), so an
edge the designer draws can be checked without importing anyone's code.
:func:`incompatibility` answers "can every value the producer's schema allows
be accepted by the consumer's schema?" and, when not, says where and why.

The rule is deliberately forgiving where the schemas say too little, and
follows Python rather than JSON where the two differ:

- an empty schema (``Any``, unknown) on either side matches everything;
- ``bool`` is accepted where ``int`` or ``float`` is, ``int`` where ``float``
  is (Python's numeric tower); ``float`` into ``int`` and ``str`` into ``int``
  are not;
- strings compare their ``format`` too (``datetime``, ``bytes``, ``UUID`` are
  not ``str`` in Python);
- a union produced must be accepted branch by branch (``int | None`` into
  ``int`` is flagged: None may arrive); a union read accepts what any branch does;
- ``enum``/``const`` (``Literal``) values must all be accepted; an open type
  into a closed set is flagged;
- lists, tuples and sets compare their items; dicts their values; models
  their fields (a field the reader requires must be produced; fields both
  have must match; extra fields are refused only where the reader forbids
  them). A free-form dict into a model is accepted when its values can be,
  since its keys are unknown until run time;
- ``$ref`` is followed within each schema's own ``$defs`` (recursive models
  end the comparison at the second visit of the same pair); keywords not
  understood here (numeric bounds, patterns, ``allOf`` of several parts)
  are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Incompatibility", "describe_schema", "incompatibility"]

#: String formats whose values are ``str`` at run time (pydantic's ``EmailStr`` and friends).
_STR_FORMATS = frozenset({"email", "idn-email"})

_SCALAR_NAMES = {
    "integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "None",
    "array": "list", "object": "dict",
}
#: Types a value of the key's JSON type is also an instance of, in Python.
_WIDENS_TO = {
    "boolean": {"boolean", "integer", "number"},
    "integer": {"integer", "number"},
    "number": {"number"},
    "string": {"string"},
    "null": {"null"},
    "array": {"array"},
    "object": {"object"},
}
#: Schemas nested deeper than this are not looked into (a guard, not a limit met in practice).
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Incompatibility:
    """Why a produced schema cannot be read as another: ``where`` (``""`` for the
    value itself, else a path such as ``.customer`` or ``[]``) and ``reason``."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


class _Side:
    """One schema with its root, to follow ``$ref`` within it."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.defs: Mapping[str, Any] = root.get("$defs") or root.get("definitions") or {}

    def deref(self, schema: Any) -> tuple[Mapping[str, Any], str | None]:
        """``schema`` with references followed (and the last reference's name)."""
        ref_name = None
        for _ in range(_MAX_DEPTH):
            if schema is True or not isinstance(schema, Mapping):
                return {}, ref_name
            ref = schema.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                ref_name = ref.rsplit("/", 1)[-1]
                target = self.defs.get(ref_name)
                if target is None:
                    return {}, ref_name  # a reference this schema does not define: unknown
                schema = target
                continue
            parts = schema.get("allOf")
            if isinstance(parts, list) and len(parts) == 1:
                schema = parts[0]
                continue
            return schema, ref_name
        return {}, ref_name


def _branches(schema: Mapping[str, Any]) -> list[Any] | None:
    for keyword in ("anyOf", "oneOf"):
        value = schema.get(keyword)
        if isinstance(value, list) and value:
            return value
    types = schema.get("type")
    if isinstance(types, list) and len(types) > 1:
        rest = {k: v for k, v in schema.items() if k != "type"}
        return [{**rest, "type": t} for t in types]
    return None


def _type(schema: Mapping[str, Any]) -> str | None:
    value = schema.get("type")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else None


def _choices(schema: Mapping[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    values = schema.get("enum")
    return list(values) if isinstance(values, list) else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def describe_schema(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> str:
    """A short Python-like name for a schema: ``int``, ``list[str]``, ``Order``, ``Any``."""
    return _describe(_Side(root if root is not None else schema), schema, 0)


def _describe(side: _Side, raw: Any, depth: int) -> str:
    schema, ref_name = side.deref(raw)
    if depth > 4:
        return "…"
    branches = _branches(schema)
    if branches is not None:
        return " | ".join(_describe(side, b, depth + 1) for b in branches)
    choices = _choices(schema)
    if choices is not None:
        return "Literal[" + ", ".join(repr(c) for c in choices) + "]"
    kind = _type(schema)
    title = schema.get("title") if isinstance(schema.get("title"), str) else None
    if kind == "object" and (ref_name or (title and "properties" in schema)):
        return str(ref_name or title)
    if kind == "string" and isinstance(schema.get("format"), str):
        return f"str ({schema['format']})"
    if kind == "array":
        if isinstance(schema.get("prefixItems"), list):
            return "tuple[" + ", ".join(_describe(side, i, depth + 1) for i in schema["prefixItems"]) + "]"
        return f"list[{_describe(side, schema.get('items', {}), depth + 1)}]"
    if kind == "object" and schema.get("additionalProperties") not in (None, True):
        return f"dict[str, {_describe(side, schema['additionalProperties'], depth + 1)}]"
    return _SCALAR_NAMES.get(kind or "", "Any")


def incompatibility(produced: Mapping[str, Any], accepted: Mapping[str, Any]) -> Incompatibility | None:
    """None when every value ``produced`` allows is one ``accepted`` takes; else why not.

    Both are JSON Schemas as registrations carry them (each its own root, with
    its own ``$defs``).
    """
    checker = _Checker(_Side(produced), _Side(accepted))
    return checker.check(produced, accepted, "", 0)


class _Checker:
    def __init__(self, producer: _Side, consumer: _Side) -> None:
        self.p, self.c = producer, consumer
        self.visiting: set[tuple[str, str]] = set()

    def name(self, side: _Side, schema: Any) -> str:
        return _describe(side, schema, 0)

    def check(self, p_raw: Any, c_raw: Any, where: str, depth: int) -> Incompatibility | None:
        if depth > _MAX_DEPTH:
            return None
        p, p_ref = self.p.deref(p_raw)
        c, c_ref = self.c.deref(c_raw)
        if not p or not c:
            return None  # Any or unknown on either side
        if p_ref and c_ref:
            pair = (p_ref, c_ref)
            if pair in self.visiting:
                return None  # recursive models: this pair is already being compared
            self.visiting.add(pair)
            try:
                return self._check(p, c, where, depth)
            finally:
                self.visiting.discard(pair)
        return self._check(p, c, where, depth)

    def _check(
        self, p: Mapping[str, Any], c: Mapping[str, Any], where: str, depth: int
    ) -> Incompatibility | None:
        p_branches = _branches(p)
        if p_branches is not None:
            for branch in p_branches:
                problem = self.check(branch, c, where, depth + 1)
                if problem is not None:
                    return problem
            return None
        c_branches = _branches(c)
        if c_branches is not None:
            problems = [self.check(p, branch, where, depth + 1) for branch in c_branches]
            if any(problem is None for problem in problems):
                return None
            return Incompatibility(
                where, f"{self.name(self.p, p)} is none of {self.name(self.c, c)}"
            )
        p_choices = _choices(p)
        if p_choices is not None:
            for value in p_choices:
                problem = self._value(value, c, where)
                if problem is not None:
                    return problem
            return None
        c_choices = _choices(c)
        p_type, c_type = _type(p), _type(c)
        if p_type is None or c_type is None:
            return None  # no type stated: nothing to compare
        if c_type not in _WIDENS_TO.get(p_type, {p_type}):
            return Incompatibility(
                where, f"{self.name(self.p, p)} is not accepted as {self.name(self.c, c)}"
            )
        if c_choices is not None:
            return Incompatibility(
                where,
                f"{self.name(self.p, p)} may be other values than {self.name(self.c, c)} allows",
            )
        if p_type == "string":
            return self._string(p, c, where)
        if p_type == "array":
            return self._array(p, c, where, depth)
        if p_type == "object":
            return self._object(p, c, where, depth)
        return None

    def _value(self, value: Any, c: Mapping[str, Any], where: str) -> Incompatibility | None:
        """Whether the one value ``value`` (an enum member) is accepted by ``c``."""
        c_branches = _branches(c)
        if c_branches is not None:
            for branch in c_branches:
                resolved, _ = self.c.deref(branch)
                if not resolved or self._value(value, resolved, where) is None:
                    return None
            return Incompatibility(where, f"{value!r} is none of {self.name(self.c, c)}")
        c_choices = _choices(c)
        if c_choices is not None:
            if value in c_choices and type(value) in {type(v) for v in c_choices}:
                return None
            return Incompatibility(where, f"{value!r} is not one of {self.name(self.c, c)}")
        c_type = _type(c)
        if c_type is None or c_type in _WIDENS_TO.get(_json_type(value), set()):
            return None
        return Incompatibility(where, f"{value!r} is not accepted as {self.name(self.c, c)}")

    def _string(self, p: Mapping[str, Any], c: Mapping[str, Any], where: str) -> Incompatibility | None:
        p_format, c_format = p.get("format"), c.get("format")
        if p_format == c_format or (c_format is None and p_format in _STR_FORMATS):
            return None
        return Incompatibility(
            where, f"{self.name(self.p, p)} is not accepted as {self.name(self.c, c)}"
        )

    def _array(
        self, p: Mapping[str, Any], c: Mapping[str, Any], where: str, depth: int
    ) -> Incompatibility | None:
        p_items = _item_schemas(p)
        c_items = _item_schemas(c)
        c_fixed = isinstance(c.get("prefixItems"), list)
        p_fixed = isinstance(p.get("prefixItems"), list)
        if c_fixed and p_fixed and len(p_items) != len(c_items):
            return Incompatibility(
                where, f"{self.name(self.p, p)} has {len(p_items)} items where "
                f"{self.name(self.c, c)} has {len(c_items)}"
            )
        for index, p_item in enumerate(p_items):
            c_item = c_items[min(index, len(c_items) - 1)] if c_items else {}
            for c_one in c_items if (c_fixed and not p_fixed) else [c_item]:
                problem = self.check(p_item, c_one, f"{where}[]", depth + 1)
                if problem is not None:
                    return problem
        return None

    def _object(
        self, p: Mapping[str, Any], c: Mapping[str, Any], where: str, depth: int
    ) -> Incompatibility | None:
        p_props = _props(p)
        c_props = _props(c)
        p_extra = p.get("additionalProperties", True if not p_props else None)
        c_extra = c.get("additionalProperties", True)
        if not p_props:
            # A dict: its keys are unknown until run time; its values must fit wherever they may land.
            value_schema = {} if p_extra in (None, True) else p_extra
            targets = [*c_props.items(), *([("*", c_extra)] if c_extra not in (None, True, False) else [])]
            for key, c_value in targets:
                field = f"{where}.{key}" if key != "*" else f"{where}[]"
                problem = self.check(value_schema, c_value, field, depth + 1)
                if problem is not None:
                    return problem
            return None
        required = c.get("required") or []
        for key in required:
            if key not in p_props:
                return Incompatibility(
                    where, f"{self.name(self.c, c)} requires field {key!r}, which "
                    f"{self.name(self.p, p)} does not have"
                )
        for key, p_value in p_props.items():
            if key in c_props:
                problem = self.check(p_value, c_props[key], f"{where}.{key}", depth + 1)
            elif c_extra is False:
                return Incompatibility(
                    where, f"{self.name(self.c, c)} forbids field {key!r}, which {self.name(self.p, p)} has"
                )
            elif c_extra in (None, True):
                problem = None
            else:
                problem = self.check(p_value, c_extra, f"{where}.{key}", depth + 1)
            if problem is not None:
                return problem
        return None


def _item_schemas(schema: Mapping[str, Any]) -> list[Any]:
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):
        return list(prefix)
    items = schema.get("items")
    return [items] if isinstance(items, Mapping) else [{}]


def _props(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    return dict(props) if isinstance(props, Mapping) else {}
