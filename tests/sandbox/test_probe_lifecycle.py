"""The deletion/refund/token probe checks against the Clover sandbox, under every profile: each
reports the reading the sandbox runs in."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import requests

from posync.probe import run_checks
from posync.providers.clover.probe_lifecycle import CHECKS
from posync_local.sandbox import CloverSandbox
from posync_local.sandbox.clover import LIFECYCLE_PROFILES


class Ctx:
    def __init__(self, sb: CloverSandbox, merchant_id: str, token: str) -> None:
        self.sb, self.merchant_id, self._token = sb, merchant_id, token
        self.token_kind, self.provider_region = "merchant_api_token", "sandbox"
        self.calls = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def get(self, path: str, params: Sequence[tuple[str, str]] | None = None) -> tuple[int, Any]:
        self.calls += 1
        r = requests.get(
            f"{self.sb.url}{path}",
            params=list(params or []),
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=10,
        )
        return r.status_code, r.json() if r.content else {}


@pytest.fixture
def sandbox() -> Iterator[CloverSandbox]:
    sb = CloverSandbox(port=0, seed=5).start()
    try:
        yield sb
    finally:
        sb.stop()


EXPECTED = {  # profile -> (CLV-DEL-1, CLV-DEL-2 detail, CLV-DEL-3 detail)
    "gone": ("not checkable", None, None),
    "listed-stale": ("holds", "show it: listed-stale", "200 with deletedTimestamp"),
    "listed-moved": ("holds", "show it: listed-moved", "200 with deletedTimestamp"),
    "filtered": ("holds", "omit it", "200 with deletedTimestamp"),
}


@pytest.mark.parametrize("profile", sorted(LIFECYCLE_PROFILES))
def test_the_probe_reports_the_deletion_reading_of_each_profile(sandbox: CloverSandbox, profile: str) -> None:
    # Given a merchant (reached with a merchant API token) with one order deleted under the profile
    m = sandbox.add_merchant(orders=12, days=3)
    ctx = Ctx(sandbox, m, sandbox.issue_merchant_api_token(m))
    for name, value in LIFECYCLE_PROFILES[profile].items():
        setattr(sandbox.knobs, name, value)
    sandbox.delete_orders(m, [sandbox.order_ids(m)[0]])
    # When the lifecycle checks run
    found = {f.row: f for f in run_checks(CHECKS, ctx)}
    # Then each row names what the sandbox does, within a handful of requests
    assert list(found) == [c.row for c in CHECKS]
    del1, del2, del3 = EXPECTED[profile]
    assert found["CLV-DEL-1"].verdict == del1
    assert found["CLV-DEL-5"].verdict == "holds"
    if del2 is None:
        assert found["CLV-DEL-2"].verdict == found["CLV-DEL-3"].verdict == "not checkable"
    else:
        assert found["CLV-DEL-2"].verdict == "holds" and del2 in found["CLV-DEL-2"].detail
        assert found["CLV-DEL-3"].verdict == "holds" and str(del3) in found["CLV-DEL-3"].detail
    assert found["CLV-RECON-1"].verdict == "holds"
    assert found["CLV-TOKEN-1"].verdict == "holds"
    assert found["CLV-DEL-4"].verdict == found["CLV-TOKEN-2"].verdict == "not checkable"
    assert ctx.calls <= 12
    assert all(ctx._token not in f.detail for f in found.values())
