"""The provider contract probe: read-only checks of ``docs/provider-contracts.md`` rows.

Each provider package (``posync.providers.<name>.probe``) exposes ``CHECKS``, a sequence of
:class:`Check`; ``posync probe PROVIDER MERCHANT_ID`` runs them in order against a real
connection and prints one :class:`Finding` per register row. A check only reads (GETs and
``HEAD``-like list calls with small limits), spends a handful of requests, and never puts a
token, secret or personal field in its ``detail``.

Verdicts: ``holds`` (the provider behaved as the row says posync assumes), ``differs`` (it did
not: ``detail`` says what was seen, and posync's reading of that row must be revisited),
``not checkable`` (the account has no data that can show it, or the behaviour cannot be seen
from outside: ``detail`` says why). A check that raises is reported as ``not checkable`` with
the error's class, so one failing row never hides the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["holds", "differs", "not checkable"]
VERDICTS: tuple[Verdict, ...] = ("holds", "differs", "not checkable")


@dataclass(frozen=True)
class Finding:
    """What one check found for one register row (``row`` is the row's id, e.g. ``CLV-EXPAND-1``)."""

    row: str
    verdict: Verdict
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One register row's read-only check: ``run(ctx)`` returns the finding for ``row``."""

    row: str
    summary: str
    run: Callable[[Any], Finding]


def run_checks(checks: Sequence[Check], ctx: Any) -> list[Finding]:
    """Every check in order; an exception becomes that row's ``not checkable`` finding."""
    findings: list[Finding] = []
    for check in checks:
        try:
            finding = check.run(ctx)
        except Exception as exc:  # noqa: BLE001 - one row's failure must not hide the others
            finding = Finding(check.row, "not checkable", f"the check failed: {type(exc).__name__}")
        if finding.row != check.row or finding.verdict not in VERDICTS:
            raise ValueError(
                f"check {check.row} returned a finding for {finding.row!r} ({finding.verdict!r})"
            )
        findings.append(finding)
    return findings
