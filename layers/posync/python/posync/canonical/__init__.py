"""Canonical order v1: one shape for Clover and Poynt orders (docs/canonical-order-v1.md).

    from posync.canonical import normalize, SCHEMA_VERSION, schema, validate
    order = normalize("clover", merchant_id, raw)   # MalformedOrder(reason) if raw is malformed
    validate(order)                                 # MalformedOrder if it breaks the JSON Schema

``normalize`` is the hot path (every order of every sync): plain dict building in
integer arithmetic, no schema validation, no copies of the raw order. The JSON Schema
(draft 2020-12, ``canonical_order_v1.schema.json`` in this package) is loaded only
when ``schema()`` or ``validate()`` is first called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from posync.errors import MalformedOrder, UnknownProvider
from posync.tombstones import clover_deleted_ms, tombstone

__all__ = ["SCHEMA_MINOR", "SCHEMA_VERSION", "normalize", "schema", "validate"]

SCHEMA_VERSION = 1
SCHEMA_MINOR = 1  # v1.1: ``schema_minor`` and ``discrepancies`` (docs/canonical-order-v1.md)


def _normalizers() -> dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]]:
    """The providers' normalizers, imported on first use: the provider packages import
    ``posync.canonical.fields``, so this package must not import them while it loads."""
    global _NORMALIZERS  # noqa: PLW0603 (filled once per process)
    if not _NORMALIZERS:
        from posync.providers.clover.normalizer import normalize_clover
        from posync.providers.poynt.canonical import normalize_poynt

        _NORMALIZERS = {"clover": normalize_clover, "poynt": normalize_poynt}
    return _NORMALIZERS


_NORMALIZERS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {}


def normalize(provider: str, merchant_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    """One provider order (as the API returns it, nested lists merged) -> a canonical order v1.

    A Clover order with ``deletedTimestamp`` becomes its tombstone (``posync.tombstones``).

    Raises ``MalformedOrder(reason)`` (the reason names the field, never its value) when
    the order cannot be normalized, and ``UnknownProvider`` for a provider posync lacks.
    """
    normalizer = _normalizers().get(provider)
    if normalizer is None:
        raise UnknownProvider(f"unknown provider: {str(provider)[:32]!r}")
    if type(raw) is not dict:
        raise MalformedOrder("order: not an object")
    if type(merchant_id) is not str or not merchant_id:
        raise MalformedOrder("merchant_id: not a string")
    try:
        order = normalizer(merchant_id, raw)
    except MalformedOrder:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
        # A shape no field check anticipated: still a quarantined order, never a crashed run.
        raise MalformedOrder(f"order: unexpected shape ({type(exc).__name__})") from None
    deleted_ms = clover_deleted_ms(raw) if provider == "clover" else None
    if deleted_ms is not None:  # Clover shows a deleted order (CLV-DEL-1): its tombstone (v1.1)
        return tombstone(order, deleted_ms)
    return order


def schema() -> dict[str, Any]:
    """The canonical order v1 JSON Schema (draft 2020-12), a fresh copy on every call."""
    from posync.canonical.validation import load_schema

    return load_schema()


def validate(order: Any) -> None:
    """Raise ``MalformedOrder("<path>: <problem>")`` unless ``order`` satisfies the schema.

    A small hand-written interpreter of the schema's keywords (jsonschema is not in
    the Lambda layer); the tests check it agrees with jsonschema.
    """
    from posync.canonical.validation import validate_order

    validate_order(order)
