"""RFC 3339 UTC times with milliseconds, the one spelling posync writes (``2026-11-23T18:15:00.123Z``).

Light on purpose (stdlib only): the normalizers, the tombstones and the handlers import it at
cold start. Canonical orders, cursors, manifests and connection records all use these.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from posync.errors import InvalidInput

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_iso(ms: int) -> str:
    """Epoch ms -> RFC 3339 UTC with milliseconds."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def iso_ms(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC, truncated to the millisecond."""
    t = datetime.fromtimestamp(ts, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def iso_to_ms(value: str) -> int:
    """RFC 3339 / ISO 8601 (``Z`` or an offset; naive means UTC) -> epoch ms. InvalidInput if not."""
    if not isinstance(value, str):
        raise InvalidInput("time is not a string")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput("time is not ISO 8601") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)
