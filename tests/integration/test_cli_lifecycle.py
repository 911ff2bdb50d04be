"""``posync connections add clover M --token-stdin`` (the quick start) and ``posync reconcile``,
in-process against the local stack (embedded AWS, the Clover sandbox, the real worker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from posync.connections import ConnectionRepository
from posync.domain import ConnectionStatus
from posync.tokens import SecretsManagerTokenStore
from posync_local.cli import cli
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime
from posync_local.sandbox import CloverSandbox
from tests.integration.auth_flow import connect, secret_exists

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    if module_runtime.clover is None:
        pytest.skip("the provider sandboxes are not available")
    yield module_runtime


@pytest.fixture
def run(tmp_path: Path) -> Any:
    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        base = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")}
        return CliRunner().invoke(cli, list(args), env={**base, **(env or {})}, input=input)

    return invoke


def clover(rt: LocalRuntime) -> CloverSandbox:
    assert rt.clover is not None
    return rt.clover


def test_a_sandbox_merchant_api_token_connects_syncs_and_is_never_refreshed(
    rt: LocalRuntime, run: Any, captured_logs: LogCapture
) -> None:
    # Given a sandbox merchant and a merchant API token from its dashboard
    sb = clover(rt)
    mark = captured_logs.mark()
    merchant = sb.add_merchant(orders=25, days=10)
    token = sb.issue_merchant_api_token(merchant)
    # When the operator connects it with the token on stdin
    result = run("connections", "add", "clover", merchant, "--token-stdin", input=token + "\n")
    # Then it is connected, the token is stored as a merchant API token, and never printed
    assert result.exit_code == 0, result.output
    assert token not in result.output
    rt.apply_env()
    stored = SecretsManagerTokenStore(rt.settings).read("clover", merchant)
    assert stored.merchant_api_token and stored.refresh_token is None
    # And the queued backfill reads every order with it, with no refresh attempted
    refreshes = sb.stats.snapshot().get("refreshes", {})
    rt.drain()
    conn = ConnectionRepository(rt.settings).get("clover", merchant)
    assert conn.status is ConnectionStatus.ACTIVE
    assert conn.last_run["status"] == "completed" and conn.last_run["counts"]["exported"] == 25
    assert sb.stats.snapshot().get("refreshes", {}) == refreshes
    # When the token is revoked in the dashboard, the next sync stops: needs_reauth, saying why
    sb.revoke(merchant)
    sb.modify_orders(merchant, 1)
    run("sync", "clover", merchant)
    rt.drain()
    conn = ConnectionRepository(rt.settings).get("clover", merchant)
    assert conn.status is ConnectionStatus.NEEDS_REAUTH
    item = boto3.client("dynamodb").get_item(
        TableName=rt.settings.connections_table, Key={"connection_id": {"S": f"clover#{merchant}"}}
    )["Item"]
    assert "refused the merchant API token" in item["status_reason"]["S"]
    assert captured_logs.find([token], since=mark) == []


def test_outside_the_sandbox_region_the_token_is_refused_with_clovers_reason(
    rt: LocalRuntime, run: Any
) -> None:
    sb = clover(rt)
    merchant = sb.add_merchant(orders=1, days=1)
    token = sb.issue_merchant_api_token(merchant)
    result = run(
        "connections",
        "add",
        "clover",
        merchant,
        "--token-stdin",
        input=token,
        env={"POSYNC_PROVIDER_REGION": "us"},
    )
    assert result.exit_code == 1
    assert "production requires OAuth" in result.output
    assert token not in result.output
    rt.apply_env()
    assert not secret_exists(rt.settings, "clover", merchant)


def test_a_refused_token_stores_nothing(rt: LocalRuntime, run: Any) -> None:
    merchant = clover(rt).add_merchant(orders=1, days=1)
    result = run("connections", "add", "clover", merchant, "--token-stdin", input="not-a-real-token-0000\n")
    assert result.exit_code == 1
    assert "refused the token" in result.output and "not-a-real-token" not in result.output
    rt.apply_env()
    assert not secret_exists(rt.settings, "clover", merchant)


def test_posync_reconcile_wait_exports_the_silent_refund_and_counts_it(rt: LocalRuntime, run: Any) -> None:
    # Given a synced merchant, one of whose orders gets a refund that leaves modifiedTime alone
    sb = clover(rt)
    merchant = sb.add_merchant(orders=20, days=3)
    token = sb.issue_merchant_api_token(merchant)
    assert run("connections", "add", "clover", merchant, "--token-stdin", input=token).exit_code == 0
    rt.drain()
    paid = next(o["id"] for o in sb.orders(merchant) if o.get("paymentState") == "PAID")
    sb.knobs.refund_moves_modified = False
    sb.refund_later(merchant, paid, 50)
    # When the operator reconciles the last 7 days and waits
    result = run("reconcile", "clover", merchant, "--days", "7", "--wait", "--json")
    # Then one correction (silent) was exported, and the rest were left alone
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    assert out["queued"]["kind"] == "reconcile"
    assert out["result"]["corrections"]["corrections"] == 1
    assert out["result"]["corrections"]["silent"] == 1
    assert out["result"]["exported"] == 1


def test_a_poynt_reconcile_rereads_through_the_same_engine_and_exports_nothing_unchanged(
    rt: LocalRuntime, run: Any
) -> None:
    # Given a synced Poynt merchant whose orders did not change
    assert rt.poynt is not None
    merchant = rt.poynt.add_merchant(orders=15, days=3)
    assert connect(rt, "poynt", merchant_id=merchant).callback.status_code in (200, 302)
    rt.drain()
    # When the operator reconciles it
    result = run("reconcile", "poynt", merchant, "--days", "7", "--wait", "--json")
    # Then every order was re-read (If-Modified-Since windows) and none exported again
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    assert out["result"]["orders"] == 15
    assert out["result"]["corrections"]["corrections"] == 0 and out["result"]["exported"] == 0
