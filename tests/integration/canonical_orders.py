"""Canonical order rows for the storage and export tests (a merchant of their own, one order)."""

from __future__ import annotations

import secrets
from typing import Any


def merchant() -> str:
    """A fresh Clover-shaped merchant id: each test gets a merchant of its own."""
    return secrets.token_hex(7)[:13].upper()


def order(mid: str, oid: str, modified_at: str, **extra: Any) -> dict[str, Any]:
    """A paid Clover order in the canonical schema; ``extra`` adds or replaces fields."""
    return {
        "schema_version": 1,
        "provider": "clover",
        "merchant_id": mid,
        "order_id": oid,
        "state": "paid",
        "modified_at": modified_at,
        "totals": {"total": 1999},
        **extra,
    }
