"""``posync sync``: input is checked before anything is sent (clear message, non-zero exit)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from posync.errors import InvalidInput
from posync_local.cli_sync import parse_since, sync_command

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["square", "ABCDEFGHJK123"], "'square' is not one of"),
        (["clover", "abc"], "not a valid clover merchant id"),
        (["poynt", "ABCDEFGHJK123"], "not a valid poynt merchant id"),
        (["clover", "ABCDEFGHJK123", "--since", "soon"], "--since must be a date"),
        (["clover", "ABCDEFGHJK123", "--since", "2999-01-01"], "future"),
    ],
)
def test_bad_input_is_a_clear_error_and_a_non_zero_exit(args: list[str], message: str) -> None:
    # Given bad input / When the command runs (no AWS is reachable from unit tests)
    result = CliRunner().invoke(sync_command, args)
    # Then it stops before any AWS call, with the reason
    assert result.exit_code == 2
    assert message in result.output
