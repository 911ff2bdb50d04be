"""Field readers shared by the normalizers: money, times, ids, currencies, nested lists.

Every reader takes the value and the field's path, returns the canonical value, and
raises ``MalformedOrder("<path>: <problem>")`` otherwise. Reasons name the field,
never its value (values can be personal data). All money is integer minor units;
the only arithmetic is integer arithmetic with round-half-away-from-zero.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from posync.errors import MalformedOrder

# Largest absolute amount accepted (minor units). Far above any order, and exact in
# every JSON reader (2**53 is where doubles stop being exact).
MONEY_LIMIT = 10**15
# Epoch milliseconds of 10000-01-01T00:00:00Z: RFC 3339 has four-digit years.
_MS_LIMIT = 253_402_300_800_000
_ID_MAX = 128
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_CACHE = 4096  # days whose date part epoch_ms keeps (a dict of short strings)
_DAYS: dict[int, str] = {}

# Card brands as posync names them; anything else is kept upper-cased (at most 32 chars).
_BRANDS: dict[str, str] = {
    "VISA": "VISA",
    "MC": "MASTERCARD",
    "MASTERCARD": "MASTERCARD",
    "MASTER_CARD": "MASTERCARD",
    "AMEX": "AMEX",
    "AMERICAN_EXPRESS": "AMEX",
    "DISCOVER": "DISCOVER",
    "JCB": "JCB",
    "DINERS": "DINERS",
    "DINERS_CLUB": "DINERS",
    "UNIONPAY": "UNIONPAY",
    "CHINA_UNION_PAY": "UNIONPAY",
    "UNION_PAY": "UNIONPAY",
    "INTERAC": "INTERAC",
    "MAESTRO": "MAESTRO",
    "EBT": "EBT",
}


def malformed(path: str, problem: str) -> MalformedOrder:
    return MalformedOrder(f"{path}: {problem}")


def nested(prefix: str, exc: MalformedOrder) -> MalformedOrder:
    """Re-anchor a reason raised with a relative path (``price: ...``) under ``prefix``."""
    reason = exc.reason
    return MalformedOrder(prefix + reason if reason[:1] in ("[", ":") else f"{prefix}.{reason}")


def rdiv(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half away from zero (``denominator > 0``)."""
    q = (abs(numerator) * 2 + denominator) // (denominator * 2)
    return q if numerator >= 0 else -q


def money(value: Any, path: str) -> int:
    if type(value) is int and -MONEY_LIMIT <= value <= MONEY_LIMIT:
        return value
    if value is None:
        raise malformed(path, "missing")
    raise malformed(path, "not an integer amount of minor units")


def opt_money(obj: dict[str, Any], key: str, path: str) -> int:
    """An optional amount: absent or null is 0."""
    value = obj.get(key)
    if value is None:
        return 0
    return money(value, path)


def opt_int(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if type(value) is int and -MONEY_LIMIT <= value <= MONEY_LIMIT:
        return value
    raise malformed(path, "not an integer")


def number(value: Any, path: str) -> float:
    """A finite JSON number (int or float, not a boolean) as a float."""
    if (type(value) is int and -MONEY_LIMIT <= value <= MONEY_LIMIT) or (
        type(value) is float and math.isfinite(value) and -MONEY_LIMIT <= value <= MONEY_LIMIT
    ):
        return float(value)
    raise malformed(path, "not a number")


def req_id(value: Any, path: str) -> str:
    """A required identifier: a non-empty string (or an integer, as Poynt item ids are)."""
    if type(value) is str:
        if 0 < len(value) <= _ID_MAX:
            return value
        raise malformed(path, "empty or too long" if value else "empty")
    if type(value) is int:
        return str(value)
    if value is None:
        raise malformed(path, "missing")
    raise malformed(path, "not a string id")


def opt_id(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    return req_id(value, path)


def opt_str(value: Any, path: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise malformed(path, "not a string")


def ref_id(value: Any, path: str) -> str | None:
    """The id of a reference object such as Clover's ``{"id": ...}`` (absent: None)."""
    if value is None:
        return None
    if type(value) is not dict:
        raise malformed(path, "not an object")
    return opt_id(value.get("id"), f"{path}.id")


def obj(value: Any, path: str) -> dict[str, Any]:
    """An optional nested object: absent or null is an empty object."""
    if value is None:
        return {}
    if type(value) is dict:
        return value
    raise malformed(path, "not an object")


def currency(value: Any, path: str) -> str:
    """ISO 4217 alphabetic code: three ASCII letters (upper-cased)."""
    if type(value) is str and len(value) == 3 and value.isascii() and value.isalpha():
        return value.upper()
    if value is None:
        raise malformed(path, "missing")
    raise malformed(path, "not an ISO 4217 currency code")


def epoch_ms(value: Any, path: str) -> str:
    """Epoch milliseconds (Clover) -> RFC 3339 UTC with milliseconds.

    Each order has several times and a page's orders share a few days, so the date part is
    kept per day number (at most ``_DAY_CACHE`` days, then started afresh); the time of day
    is integer arithmetic. This is the normalizers' hottest reader.
    """
    if type(value) is not int or not 0 <= value < _MS_LIMIT:
        if value is None:
            raise malformed(path, "missing")
        raise malformed(path, "not a time in epoch milliseconds")
    seconds, ms = divmod(value, 1000)
    day, second = divmod(seconds, 86_400)
    prefix = _DAYS.get(day)
    if prefix is None:
        if len(_DAYS) >= _DAY_CACHE:
            _DAYS.clear()
        d = date.fromordinal(_EPOCH_ORDINAL + day)
        prefix = _DAYS[day] = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"


def iso_time(value: Any, path: str) -> str:
    """An ISO 8601 / RFC 3339 time (Poynt) -> RFC 3339 UTC with milliseconds.

    A time without an offset is taken as UTC; sub-millisecond digits are truncated.
    """
    if type(value) is not str or not 10 <= len(value) <= 40:
        if value is None:
            raise malformed(path, "missing")
        raise malformed(path, "not an ISO 8601 time")
    if (
        len(value) == 24
        and value[23] == "Z"
        and value[19] == "."
        and value[10] == "T"
        and value[4] == value[7] == "-"
        and value[13] == value[16] == ":"
    ):
        # Already canonical in shape; fromisoformat still checks every field's range.
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise malformed(path, "not an ISO 8601 time") from None
        return value
    try:
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC)
    except (ValueError, OverflowError):
        raise malformed(path, "not an ISO 8601 time") from None
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def elements(value: Any, path: str) -> list[Any] | None:
    """A nested list: Clover's ``{"elements": [...]}`` or a plain list.

    None when the list was not expanded (absent, null, or ``{"href": ...}`` only).
    """
    if value is None:
        return None
    if type(value) is list:
        return value
    if type(value) is dict:
        items = value.get("elements")
        if items is None:
            return None
        if type(items) is list:
            return items
        raise malformed(f"{path}.elements", "not a list")
    raise malformed(path, "not a list")


def item(value: Any, path: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise malformed(path, "not an object")


def card_brand(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise malformed(path, "not a string")
    key = value.upper()
    return _BRANDS.get(key) or key[:32]


def refund_state(paid: int, refunded: int, total: int) -> str | None:
    """``refunded`` / ``partially_refunded`` from amounts, or None when nothing was refunded."""
    if refunded <= 0:
        return None
    basis = paid if paid > 0 else total
    return "refunded" if refunded >= basis else "partially_refunded"
