"""``posync probe clover``: the register's checks against the sandbox, under every profile.

The probe must tell the profiles apart: under the documented one every checkable row holds;
under each other one exactly the row of the reading it changes differs. And the command
reads the stage's real connection (as ``posync sync`` finds it), read-only, in a dozen calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from posync.domain import Connection
from posync.probe import Finding
from posync.providers.clover import probe as clover_probe
from posync.ratelimit import RequestLimiter, TokenLimiter
from posync.transport import Transport
from posync_local.cli import cli
from posync_local.cli_common import Failure
from posync_local.cli_probe import probe, probe_module
from posync_local.runtime import LocalRuntime
from posync_local.sandbox import CloverSandbox
from tests.integration.auth_flow import connect
from tests.integration.test_sync_pipeline import StaticTokens, clover_token
from tests.sandbox.conftest import no_limits

# The whole probe's GETs: about a dozen for the expansion rows (one list per expansion) and
# eight for the deletion, refund and sweep rows (posync/providers/clover/probe_lifecycle.py).
PROBE_GETS = 20

pytestmark = pytest.mark.integration

# The row each non-default profile must make differ (and no other).
REVEALS = {
    "documented": set(),
    "href-unexpanded": {"CLV-EXPAND-1"},
    "card-inline": {"CLV-EXPAND-4"},
    "tender-inline": {"CLV-EXPAND-3"},
    "service-charge-line-basis": {"CLV-SC-3"},
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[CloverSandbox]:
    sb = CloverSandbox(port=0, knobs=no_limits(), seed=9).start()
    try:
        yield sb
    finally:
        sb.stop()


def run_probe(sb: CloverSandbox, merchant: str) -> tuple[dict[str, Finding], int]:
    conn = Connection(provider="clover", merchant_id=merchant)
    transport = Transport(
        conn, sb.url, StaticTokens(clover_token(sb, merchant)), RequestLimiter(TokenLimiter(None, 1))
    )
    findings = probe(probe_module("clover"), transport, merchant)
    return {f.row: f for f in findings}, transport.stats.requests


def test_the_probe_reports_which_profile_the_sandbox_runs(
    sandbox: CloverSandbox, clover_profile: str
) -> None:
    # Given the sandbox serving one reading of Clover, and a merchant with recent orders
    sandbox.profile = clover_profile
    merchant = sandbox.add_merchant(orders=400, days=30)
    before = sandbox.stats.snapshot()["requests"]
    # When the probe runs
    findings, requests = run_probe(sandbox, merchant)
    # Then there is a finding per register row it checks, in order
    assert list(findings) == [c.row for c in clover_probe.CHECKS]
    # And exactly the profile's rows differ; the others hold (or cannot be checked: no data)
    differs = {row for row, f in findings.items() if f.verdict == "differs"}
    assert differs == REVEALS[clover_profile], {r: findings[r].detail for r in differs}
    for row in ("CLV-LIST-1", "CLV-EXPAND-2", "CLV-EXPAND-5", "CLV-SC-1", "CLV-TAX-1"):
        assert findings[row].verdict == "holds", findings[row]
    assert findings["CLV-429-1"].verdict == "not checkable"
    # And it only read, in some twenty requests
    after = sandbox.stats.snapshot()["requests"]
    assert all(name.startswith("GET ") or name.startswith("POST /oauth") for name in after)
    assert requests <= PROBE_GETS
    assert sum(after.values()) - sum(before.values()) <= PROBE_GETS + 2  # + the token exchange


def test_a_provider_without_a_probe_is_a_clear_failure() -> None:
    with pytest.raises(Failure, match="no contract probe for nosuch"):
        probe_module("nosuch")


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    if module_runtime.clover is None:
        pytest.skip("the Clover sandbox is not available")
    yield module_runtime


def test_posync_probe_reads_the_stages_connection(rt: LocalRuntime, tmp_path: Path) -> None:
    # Given a merchant connected to the local stack through the real consent flow
    assert rt.clover is not None
    merchant = rt.clover.add_merchant(orders=300, days=30)
    assert connect(rt, "clover", merchant_id=merchant).callback.status_code in (200, 302)
    rt.apply_env()
    # When the operator probes it
    env = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")}
    result = CliRunner().invoke(cli, ["probe", "clover", merchant, "--json"], env=env, prog_name="posync")
    # Then every row is reported and, the sandbox running as documented, none differs
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["merchant_id"] == merchant
    assert [f["row"] for f in report["findings"]] == [c.row for c in clover_probe.CHECKS]
    assert {f["verdict"] for f in report["findings"]} <= {"holds", "not checkable"}
    assert 0 < report["requests"] <= PROBE_GETS
    # And the plain output says the same, one row a line, and the token never shows
    plain = CliRunner().invoke(cli, ["probe", "clover", merchant], env=env, prog_name="posync")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.splitlines()[0].startswith("CLV-LIST-1")
    assert "hold" in plain.stdout.splitlines()[-1]
    for token in rt.clover.tokens.issued():
        assert token not in plain.output and token not in result.output
