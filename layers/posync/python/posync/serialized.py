"""Canonical orders as storage and the exports write them: compact JSON text, serialized once.

Kept apart from ``posync.canonical`` (the normalizers) so that storage and the exports
import it without them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class Serialized(Mapping[str, Any]):
    """A canonical order serialized once, as storage and the exports write it.

    A sync normalizes each order in its fetch thread and then holds it until its page is
    written: as one JSON text (and the two fields storage keys on) it is one object instead
    of a tree of some hundred small ones, which left between short-lived ones fragmented
    the allocator. ``make bench``: a 100,000-order backfill's peak RSS 104 -> 89 MiB, and
    storage and the exports no longer serialize it twice.

    It is a read-only mapping of the order's fields; any field but ``order_id`` and
    ``modified_at`` parses the text (read it whole with :meth:`to_dict`).
    """

    __slots__ = ("modified_at", "order_id", "text")

    def __init__(self, order_id: str, modified_at: str, text: str) -> None:
        self.order_id = order_id
        self.modified_at = modified_at
        self.text = text

    @classmethod
    def of(cls, order: Mapping[str, Any]) -> Serialized:
        """Serialize a canonical order (``to_json``); raises KeyError without its id or time."""
        return cls(str(order["order_id"]), str(order["modified_at"]), to_json(order))

    def to_dict(self) -> dict[str, Any]:
        order: dict[str, Any] = _codec()[1](self.text)
        return order

    def __getitem__(self, key: str) -> Any:
        if key == "order_id":
            return self.order_id
        if key == "modified_at":
            return self.modified_at
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __repr__(self) -> str:
        return f"<Serialized order {self.order_id!r} at {self.modified_at}>"


def to_json(order: Mapping[str, Any]) -> str:
    """A canonical order's JSON text, as storage and the exports write it (compact, UTF-8 as is).

    The text of ``json.dumps(order, separators=(",", ":"), ensure_ascii=False)``, encoded by
    msgspec (some 10x faster). The two spell every string, integer and key alike, and a
    float alike when ``1e-4 <= |x| < 1e16`` (or 0); outside that range Python writes
    ``1e-05`` and ``1e+16``, msgspec ``0.00001`` and ``1e16``. Such a float shows in
    msgspec's text as ``0.0000`` or a digit before ``e``: any text where that appears (in a
    value, or by chance in a string) is written by ``json.dumps`` instead, so the text
    never changes (tests/unit/test_serialized_json.py). Canonical
    floats are finite (``canonical.fields.number``): msgspec would write NaN as ``null``.
    """
    if type(order) is Serialized:
        return order.text
    encode, _, failed = _codec()
    try:
        text: bytes | None = encode(order)
    except (TypeError, ValueError, failed):  # a key not a string, a lone surrogate
        text = None
    if text is None or _spelled_apart(text):
        return json.dumps(order, separators=(",", ":"), ensure_ascii=False)
    return text.decode()


@functools.cache
def _codec() -> tuple[Callable[[Any], bytes], Callable[[str], Any], type[Exception]]:
    """msgspec's encoder and decoder, imported on first use (its import takes some 30 ms:
    the handlers that only read stored orders, and ``posync.canonical``, stay light)."""
    import msgspec

    return msgspec.json.Encoder().encode, msgspec.json.Decoder().decode, msgspec.EncodeError


_EXPONENT = re.compile(rb"e[-0-9]")  # a literal first: the fastest search re makes here


def _spelled_apart(text: bytes) -> bool:
    """Might ``text`` hold a float that msgspec spells unlike Python: ``0.0000...`` or a digit
    before an exponent (``1e-7``, ``1e16``)? About 2 us for a 1.3 KB order (its encoding
    takes 1.5, ``json.dumps`` 14)."""
    if b"0.0000" in text:
        return True
    return any(text[m.start() - 1 : m.start()].isdigit() for m in _EXPONENT.finditer(text))
