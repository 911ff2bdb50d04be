"""The Poynt probe's verdicts against a Poynt that breaks what posync relies on (fake transport)."""

from __future__ import annotations

import json
from typing import Any

from posync.probe import run_checks
from posync.providers.poynt.probe import CHECKS, PoyntProbe
from posync.sources import ms_to_iso
from posync.transport import Reply

BIZ = "0b9f1c2e-1111-4222-8333-444455556666"
T0 = 1_790_000_000_000


def order(i: int, *, net: int = 100) -> dict[str, Any]:
    return {
        "id": f"o{i}",
        "createdAt": ms_to_iso(T0 + i * 60_000),
        "updatedAt": ms_to_iso(T0 + i * 60_000 + 30_000),
        "amounts": {"subTotal": 100, "discountTotal": 0, "taxTotal": 0, "feeTotal": 0, "netTotal": net},
        "items": [{"id": 1}],
    }


class CarelessPoynt:
    """Ignores If-Modified-Since, caps pages at 5 rows without a link, one netTotal is off."""

    def __init__(self) -> None:
        self.orders = [order(i, net=101 if i == 3 else 100) for i in range(12)]

    def get(
        self, path: str, params: Any = None, *, deadline: Any, headers: Any = None, parse: bool = True
    ) -> Reply:
        if path == f"/businesses/{BIZ}":
            return Reply(200, {"id": BIZ}, {})
        body = {"orders": self.orders[:5], "count": len(self.orders)}
        return Reply(200, json.dumps(body).encode() if not parse else body, {})


def test_a_poynt_that_breaks_the_rows_posync_relies_on_is_reported_as_differs() -> None:
    # Given a Poynt that ignores If-Modified-Since, truncates pages and miscounts a total
    ctx = PoyntProbe(CarelessPoynt(), BIZ)  # type: ignore[arg-type]
    # When the probe runs
    findings = {f.row: f for f in run_checks(CHECKS, ctx)}
    # Then exactly those rows differ, each saying what was seen
    differs = {row for row, f in findings.items() if f.verdict == "differs"}
    assert differs == {"PNT-LIST-IMS", "PNT-LIST-304", "PNT-LIST-LIMIT", "PNT-NET-TOTAL"}
    assert "5 rows of 12" in findings["PNT-LIST-LIMIT"].detail
    assert "1 of 5" in findings["PNT-NET-TOTAL"].detail
