"""``--since`` of ``posync sync`` and ``posync exports``: dates and RFC 3339 times, checked before use.

The commands' own handling of bad input (exit 2, the reason on stderr) is tested against the
local stack in ``tests/integration/test_cli_sync.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from posync.errors import InvalidInput
from posync_local.cli_common import parse_since

NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01", "2026-11-01T00:00:00.000Z"),
        ("2026-11-01T12:30:00Z", "2026-11-01T12:30:00.000Z"),
        ("2026-11-01T12:30:00.250+02:00", "2026-11-01T10:30:00.250Z"),
    ],
)
def test_since_accepts_dates_and_rfc3339(value: str, expected: str) -> None:
    assert parse_since(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("yesterday", "RFC 3339"),
        ("2026-13-01", "RFC 3339"),
        ("2026-11-01T12:30:00", "time zone"),
        ("2027-01-01", "future"),
        ("1999-12-31", "before 2000"),
    ],
)
def test_since_rejects_nonsense(value: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_since(value, NOW)
