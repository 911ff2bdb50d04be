"""A small interpreter of the JSON Schema keywords canonical_order_v1.schema.json uses.

Supported: ``type`` (one or a list), ``const``, ``enum``, ``properties``, ``required``,
``additionalProperties: false``, ``items``, ``minimum``, ``maximum``, ``minLength``,
``maxLength``, ``pattern``, ``$ref`` to ``#/$defs/...``; annotations (``$schema``,
``$id``, ``title``, ``description``, ``format``, ``$comment``, ``examples``, ``$defs``)
are ignored. Loading a schema with any other keyword fails, so the schema cannot grow
a rule this validator silently skips.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from posync.errors import MalformedOrder

SCHEMA_FILE = "canonical_order_v1.schema.json"

CHECKED = frozenset(
    {
        "type",
        "const",
        "enum",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "$ref",
    }
)
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "format", "$comment", "examples", "$defs"})

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _check_keywords(node: Any, where: str) -> None:
    if isinstance(node, dict):
        unknown = set(node) - CHECKED - ANNOTATIONS
        if unknown:
            raise ValueError(f"schema keyword(s) {sorted(unknown)} at {where} are not supported")
        if node.get("additionalProperties", False) is not False:
            raise ValueError(f"additionalProperties at {where} must be false")
        for key in ("properties", "$defs"):
            for name, sub in node.get(key, {}).items():
                _check_keywords(sub, f"{where}/{key}/{name}")
        if "items" in node:
            _check_keywords(node["items"], f"{where}/items")


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("posync.canonical").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    _check_keywords(loaded, "#")
    return loaded


def load_schema() -> dict[str, Any]:
    return copy.deepcopy(_schema())


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_type(value: Any, name: str) -> bool:
    if type(value) is bool:
        return name == "boolean"
    if name == "integer" and type(value) is float:
        return value.is_integer()  # JSON Schema: 1.0 is an integer
    return isinstance(value, _TYPES[name])


def _fail(path: str, problem: str) -> MalformedOrder:
    return MalformedOrder(f"{path or 'order'}: {problem}")


def _check(value: Any, node: dict[str, Any], root: dict[str, Any], path: str) -> None:
    ref = node.get("$ref")
    if ref is not None:
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        _check(value, target, root, path)
    types = node.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is_type(value, name) for name in names):
            raise _fail(path, f"not of type {' or '.join(names)}")
    if "const" in node and not _same(value, node["const"]):
        raise _fail(path, "not the expected constant")
    if "enum" in node and not any(_same(value, option) for option in node["enum"]):
        raise _fail(path, "not one of the allowed values")
    if isinstance(value, dict):
        props: dict[str, Any] = node.get("properties", {})
        for name in node.get("required", ()):
            if name not in value:
                raise _fail(f"{path}.{name}".lstrip("."), "missing")
        if node.get("additionalProperties", True) is False:
            for name in value:
                if name not in props:
                    raise _fail(f"{path}.{name}".lstrip("."), "not allowed")
        for name, sub in props.items():
            if name in value:
                _check(value[name], sub, root, f"{path}.{name}".lstrip("."))
    elif isinstance(value, list):
        items = node.get("items")
        if items is not None:
            for i, element in enumerate(value):
                _check(element, items, root, f"{path}[{i}]")
    elif isinstance(value, str):
        if len(value) < node.get("minLength", 0):
            raise _fail(path, "too short")
        if "maxLength" in node and len(value) > node["maxLength"]:
            raise _fail(path, "too long")
        if "pattern" in node and not _pattern(node["pattern"]).search(value):
            raise _fail(path, "does not match the pattern")
    elif isinstance(value, int | float) and type(value) is not bool:
        if "minimum" in node and value < node["minimum"]:
            raise _fail(path, "below the minimum")
        if "maximum" in node and value > node["maximum"]:
            raise _fail(path, "above the maximum")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    if type(a) is bool or type(b) is bool:
        return a is b
    return bool(a == b)


def validate_order(order: Any) -> None:
    root = _schema()
    _check(order, root, root, "")
