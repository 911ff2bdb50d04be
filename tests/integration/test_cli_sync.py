"""``posync sync`` and ``posync backfill`` against the local stack: queueing, ``--wait`` and progress.

With ``--wait`` the command drains the sync queue in this process through the real worker
handler; stderr is not a terminal under ``CliRunner``, so progress must come as plain lines.
The ground truth is the sandbox's own orders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from posync.connections import ConnectionRepository
from posync.domain import Connection, ConnectionStatus
from posync.sources import iso_to_ms
from posync.tokens import SecretsManagerTokenStore
from posync_local.cli import cli
from posync_local.runtime import LocalRuntime
from posync_local.sandbox import CloverSandbox, PoyntSandbox
from tests.integration.auth_flow import connect, queued_syncs

pytestmark = pytest.mark.integration

PLAIN_LINE = re.compile(
    r"^(clover|poynt) \S+: [\d,]+ orders? \([\d,.]+/s\), [\d,]+ pages? \([\d,.]+/s\)"
    r"(, (\d+)% of the window)?, [\d.]+ s$"
)
DONE_LINE = re.compile(
    r"^Done: ([\d,]+) orders?, ([\d,]+) pages? in [\d.]+ s \((manual|backfill) run (\S+) completed\)\.$"
)


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    if module_runtime.clover is None or module_runtime.poynt is None:
        pytest.skip("the provider sandboxes are not available")
    yield module_runtime


@pytest.fixture
def run(tmp_path: Path) -> Any:
    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        base = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")}
        return CliRunner().invoke(cli, list(args), env={**base, **(env or {})}, prog_name="posync")

    return invoke


def sandbox(rt: LocalRuntime, provider: str) -> CloverSandbox | PoyntSandbox:
    sb = rt.clover if provider == "clover" else rt.poynt
    assert sb is not None
    return sb


def synced(rt: LocalRuntime, provider: str, orders: int = 40, days: int = 30) -> str:
    """A merchant that connected (consent over HTTP) and whose first backfill ran."""
    merchant = sandbox(rt, provider).add_merchant(orders=orders, days=days)
    result = connect(rt, provider, merchant_id=merchant)
    assert result.callback.status_code in (200, 302), result.callback.text
    rt.drain()
    return merchant


def conn(rt: LocalRuntime, provider: str, merchant: str) -> Connection:
    rt.apply_env()
    return ConnectionRepository(rt.settings).get(provider, merchant)


def modified_ms(provider: str, raw: dict[str, Any]) -> int:
    return int(raw["modifiedTime"]) if provider == "clover" else iso_to_ms(str(raw["updatedAt"]))


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_sync_wait_runs_it_here_with_plain_progress_lines_and_a_final_count(
    rt: LocalRuntime, run: Any, provider: str
) -> None:
    # Given a synced merchant whose orders then change and grow, and small pages (several of them)
    sb = sandbox(rt, provider)
    merchant = synced(rt, provider)
    changed = set(sb.modify_orders(merchant, 6)) | set(sb.create_orders(merchant, 4))
    # When the operator syncs it and waits (stderr is not a terminal here)
    result = run(
        "sync",
        provider,
        merchant,
        "--wait",
        "--progress-interval",
        "0",
        env={"POSYNC_SYNC_PAGE_LIMIT": "3"},
    )
    # Then it ran to completion in this process
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith(f"Queued a manual sync of {provider} merchant {merchant} (since its cursor)")
    done = DONE_LINE.match(out[-1])
    assert done, out[-1]
    c = conn(rt, provider, merchant)
    assert c.last_run["status"] == "completed"
    assert done.group(4) == c.last_run["run_id"]
    # the final numbers are the run's own
    assert int(done.group(1).replace(",", "")) == c.last_run["counts"]["fetched"]
    assert int(done.group(2).replace(",", "")) == c.last_run["counts"]["pages"]
    assert c.last_run["counts"]["exported"] == len(changed)
    assert c.last_run["counts"]["pages"] >= 4  # 10 changes, 3 per page
    # And the progress was plain lines, one per page, never a carriage return or an escape
    err = result.stderr
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) == c.last_run["counts"]["pages"]
    parsed = [PLAIN_LINE.match(line) for line in lines]
    assert all(parsed), lines
    windows = [int(m.group(3)) for m in parsed if m and m.group(3)]
    assert windows == sorted(windows) and windows[-1] == 100


def test_sync_wait_json_is_one_object_with_the_request_and_the_result(rt: LocalRuntime, run: Any) -> None:
    # Given a synced merchant with 5 new orders
    merchant = synced(rt, "clover", orders=20)
    sandbox(rt, "clover").create_orders(merchant, 5)
    # When the operator asks for JSON
    result = run("sync", "clover", merchant, "--wait", "--json")
    # Then stdout is exactly one JSON object: what was queued and how it ended
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["queued"]["kind"] == "manual"
    assert doc["queued"]["merchant_id"] == merchant
    assert doc["result"]["status"] == "completed"
    assert doc["result"]["exported"] == 5
    assert doc["result"]["manifest"].startswith("exports/manifests/v1/")
    assert doc["result"]["elapsed_s"] > 0


def test_sync_since_rereads_from_that_date(rt: LocalRuntime, run: Any) -> None:
    # Given a synced merchant
    merchant = synced(rt, "poynt", orders=30, days=30)
    since = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%d")
    # When the operator syncs since a date (without waiting), then the queue is drained
    queued = run("sync", "poynt", merchant, "--since", since, "--json")
    assert queued.exit_code == 0, queued.output
    doc = json.loads(queued.stdout)
    assert doc["queued"]["since"] == f"{since}T00:00:00.000Z"
    assert "local stack" in doc["target"]
    rt.drain()
    # Then the run re-read exactly the orders modified since that date
    want = sum(
        1
        for o in sandbox(rt, "poynt").orders(merchant)
        if modified_ms("poynt", o) >= iso_to_ms(f"{since}T00:00:00Z")
    )
    c = conn(rt, "poynt", merchant)
    assert c.last_run["kind"] == "manual"
    assert c.last_run["counts"]["fetched"] == want > 0


def test_sync_without_wait_tells_how_the_local_stack_runs_it(rt: LocalRuntime, run: Any) -> None:
    merchant = synced(rt, "clover", orders=5)
    result = run("sync", "clover", merchant)
    assert result.exit_code == 0, result.output
    assert "posync local tick" in result.stdout and "--wait" in result.stdout
    messages = [m for m in queued_syncs(rt.settings) if m["merchant_id"] == merchant]
    assert [m["kind"] for m in messages] == ["manual"]


def test_backfill_days_rereads_the_last_n_days(rt: LocalRuntime, run: Any) -> None:
    # Given a synced merchant with 60 days of orders
    merchant = synced(rt, "clover", orders=40, days=60)
    # When the operator backfills the last 20 days and waits
    result = run("backfill", "clover", merchant, "--days", "20", "--wait", "--json")
    # Then a backfill run read exactly the orders of those 20 days
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["queued"]["kind"] == "backfill"
    since_ms = iso_to_ms(doc["queued"]["since"])
    assert abs(since_ms / 1000 - (datetime.now(UTC) - timedelta(days=20)).timestamp()) < 120
    want = sum(1 for o in sandbox(rt, "clover").orders(merchant) if modified_ms("clover", o) >= since_ms)
    assert doc["result"]["status"] == "completed"
    assert doc["result"]["kind"] == "backfill"
    assert doc["result"]["orders"] == want > 0
    assert conn(rt, "clover", merchant).last_run["counts"]["fetched"] == want


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["sync", "clover", "NOSUCHMERCH01"], 3, "no clover connection for merchant NOSUCHMERCH01"),
        (["backfill", "clover", "NOSUCHMERCH01", "--wait"], 3, "no clover connection for merchant"),
        (["sync", "square", "NOSUCHMERCH01"], 2, "'square' is not one of"),
        (["sync", "clover", "nosuchmerch01"], 2, "not a valid clover merchant id (13 upper-case"),
        (["sync", "poynt", "NOSUCHMERCH01"], 2, "not a valid poynt merchant id (a lower-case UUID"),
        (["sync", "clover", "NOSUCHMERCH01", "--since", "last week"], 2, "YYYY-MM-DD"),
        (["sync", "clover", "NOSUCHMERCH01", "--since", "2026-02-30"], 2, "RFC 3339"),
        (["sync", "clover", "NOSUCHMERCH01", "--since", "2999-01-01"], 2, "in the future"),
        (["backfill", "clover", "NOSUCHMERCH01", "--days", "0"], 2, "--days"),
    ],
)
def test_bad_input_and_unknown_merchants(
    rt: LocalRuntime, run: Any, args: list[str], code: int, message: str
) -> None:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_a_revoked_connection_is_not_synced(rt: LocalRuntime, run: Any) -> None:
    # Given a merchant whose connection was revoked
    merchant = synced(rt, "clover", orders=5)
    ConnectionRepository(rt.settings).set_status(
        f"clover#{merchant}", ConnectionStatus.REVOKED, "uninstalled"
    )
    # When the operator tries to sync it
    result = run("sync", "clover", merchant, "--wait")
    # Then nothing is queued, and the reason is one line on stderr
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: the connection is revoked: the merchant must connect again first"
    assert [m for m in queued_syncs(rt.settings) if m["merchant_id"] == merchant] == []


def test_no_token_reaches_the_output(rt: LocalRuntime, run: Any) -> None:
    merchant = synced(rt, "poynt", orders=5)
    outputs = [
        run("sync", "poynt", merchant, "--wait", "--json").output,
        run("connections", "show", "poynt", merchant, "--json").output,
        run("connections", "list", "--json").output,
    ]
    tokens = SecretsManagerTokenStore(rt.settings).read("poynt", merchant)
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret
        assert all(secret not in text for text in outputs)
