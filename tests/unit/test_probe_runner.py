"""The probe runner: one finding per row, in order; a failing check never hides the others."""

from __future__ import annotations

from typing import Any

import pytest

from posync.probe import Check, Finding, run_checks


def _holds(ctx: Any) -> Finding:
    return Finding("X-1", "holds", f"saw {ctx}")


def _boom(ctx: Any) -> Finding:
    raise RuntimeError("secret-looking text must not leak")


def test_findings_in_order_and_a_raising_check_is_not_checkable() -> None:
    # Given one check that holds and one that raises
    checks = [Check("X-1", "first", _holds), Check("X-2", "second", _boom)]
    # When they run
    found = run_checks(checks, "ctx")
    # Then both rows are reported, the failure by its class only
    assert [f.row for f in found] == ["X-1", "X-2"]
    assert found[0].verdict == "holds"
    assert found[1] == Finding("X-2", "not checkable", "the check failed: RuntimeError")
    assert found[1].to_json() == {
        "row": "X-2",
        "verdict": "not checkable",
        "detail": "the check failed: RuntimeError",
    }


def test_a_finding_for_another_row_is_a_bug() -> None:
    with pytest.raises(ValueError, match="X-9"):
        run_checks([Check("X-9", "mislabelled", _holds)], None)
