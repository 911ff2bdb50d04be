"""``posync connections list/show/disconnect`` against the local stack (embedded AWS + sandboxes).

Merchants connect through the real consent flow (our /connect and callback handlers, the
sandbox's consent page); the commands run in-process with click's ``CliRunner`` on the root
``posync`` group, in the module runtime's environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from posync.connections import ConnectionRepository
from posync.domain import ConnectionStatus
from posync_local.cli import cli
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import bus_events, bus_listener, connect, secret_exists

pytestmark = pytest.mark.integration

_slots = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    if module_runtime.clover is None or module_runtime.poynt is None:
        pytest.skip("the provider sandboxes are not available")
    yield module_runtime


@pytest.fixture
def run(tmp_path: Path) -> Any:
    """``posync ARGS`` in-process against the module's local stack (no deployed stack, no state file)."""

    def invoke(*args: str, input: str | None = None) -> Result:
        env = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")}
        return CliRunner().invoke(cli, list(args), env=env, input=input)

    return invoke


def later() -> datetime:
    """A schedule time in a slot of its own (ticks in one slot are deduplicated, as on AWS)."""
    return datetime.now(UTC) + timedelta(days=1, hours=next(_slots))


def connected(rt: LocalRuntime, provider: str, orders: int = 30, ref: str | None = None) -> str:
    sb = rt.clover if provider == "clover" else rt.poynt
    assert sb is not None
    merchant = sb.add_merchant(orders=orders, days=20)
    result = connect(rt, provider, merchant_id=merchant, ref=ref)
    assert result.callback.status_code in (200, 302), result.callback.text
    rt.apply_env()
    return merchant


def test_list_shows_every_connection_with_its_sync_state(rt: LocalRuntime, run: Any) -> None:
    # Given a synced Clover merchant (with a ref) and a Poynt merchant that never synced
    clover = connected(rt, "clover", ref="shop-42")
    rt.drain()
    poynt = connected(rt, "poynt")
    # When the operator lists the connections
    result = run("connections", "list")
    # Then both are in the table, with status, ref, last sync and cursor for the synced one
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "PROVIDER",
        "MERCHANT",
        "ID",
        "STATUS",
        "REF",
        "CONNECTED",
        "AT",
        "LAST",
        "SYNC",
        "CURSOR",
        "LAST",
        "ERROR",
    ]
    row = next(line for line in lines if clover in line).split()
    assert row[:4] == ["clover", clover, "active", "shop-42"]
    assert row[5].endswith("Z") and row[6].endswith("Z")  # last sync, cursor
    prow = next(line for line in lines if poynt in line).split()
    assert prow[:4] == ["poynt", poynt, "active", "-"]
    assert prow[5:7] == ["-", "-"]  # never synced: no last sync, no cursor yet


def test_list_json_parses_and_filters_by_status(rt: LocalRuntime, run: Any) -> None:
    # Given one revoked connection among active ones
    merchant = connected(rt, "clover")
    ConnectionRepository(rt.settings).set_status(f"clover#{merchant}", ConnectionStatus.REVOKED, "test")
    # When the operator asks for revoked connections as JSON
    result = run("connections", "list", "--status", "revoked", "--json")
    # Then the output is a JSON array of exactly the revoked ones, with no token anywhere
    assert result.exit_code == 0, result.output
    views = json.loads(result.stdout)
    assert [v["merchant_id"] for v in views] == [merchant]
    assert views[0]["status"] == "revoked"
    assert not any("token" in key and "expires" not in key for key in views[0])
    everyone = json.loads(run("connections", "list", "--json").stdout)
    assert {v["status"] for v in everyone} >= {"active", "revoked"}
    assert merchant in {v["merchant_id"] for v in everyone}


def test_list_rejects_an_unknown_status(run: Any) -> None:
    result = run("connections", "list", "--status", "sleeping")
    assert result.exit_code == 2
    assert "'sleeping' is not one of" in result.stderr


def test_show_tells_status_cursor_runs_and_expiry(rt: LocalRuntime, run: Any) -> None:
    # Given a synced merchant
    merchant = connected(rt, "poynt", orders=25)
    rt.drain()
    # When the operator shows it, as text and as JSON
    text = run("connections", "show", "poynt", merchant)
    as_json = run("connections", "show", "poynt", merchant, "--json")
    # Then the text names the state, and the JSON carries the run's counts and the expiry times
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"poynt merchant {merchant}\n")
    assert "status:" in text.stdout and "active" in text.stdout
    assert "last sync:" in text.stdout and "completed" in text.stdout
    view = json.loads(as_json.stdout)
    assert view["status"] == "active"
    assert view["last_sync"]["status"] == "completed"
    assert view["last_sync"]["counts"]["fetched"] == 25
    assert view["run_in_progress"] is None
    assert view["cursor_position"].endswith("Z")
    assert view["access_expires_at"].endswith("Z")
    assert "access_token" not in as_json.stdout and "refresh_token" not in as_json.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["connections", "show", "clover", "NOSUCHMERCH01"],
            3,
            "no clover connection for merchant NOSUCHMERCH01",
        ),
        (
            ["connections", "show", "poynt", "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"],
            3,
            "no poynt connection for merchant 0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
        ),
        (["connections", "show", "clover", "abc"], 2, "not a valid clover merchant id"),
        (["connections", "show", "poynt", "NOSUCHMERCH01"], 2, "not a valid poynt merchant id"),
        (["connections", "show", "square", "NOSUCHMERCH01"], 2, "'square' is not one of"),
        (["connections", "disconnect", "clover", "NOSUCHMERCH01", "--yes"], 3, "no clover connection"),
        (["connections", "disconnect", "clover", "bad id", "--yes"], 2, "not a valid clover merchant id"),
    ],
)
def test_bad_input_and_unknown_merchants_exit_with_their_codes(
    rt: LocalRuntime, run: Any, args: list[str], code: int, message: str
) -> None:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_disconnect_asks_first_and_aborts_without_a_yes(rt: LocalRuntime, run: Any) -> None:
    merchant = connected(rt, "clover")
    result = run("connections", "disconnect", "clover", merchant, input="n\n")
    assert result.exit_code == 1
    assert "Disconnect clover merchant" in result.stderr
    assert ConnectionRepository(rt.settings).get("clover", merchant).status is ConnectionStatus.ACTIVE


def test_disconnect_revokes_deletes_the_secret_and_the_next_tick_skips_it(rt: LocalRuntime, run: Any) -> None:
    # Given a synced Clover merchant, and a listener on the stage's bus
    sb = rt.clover
    assert sb is not None
    merchant = connected(rt, "clover", orders=20)
    rt.tick(at=later())
    before = ConnectionRepository(rt.settings).get("clover", merchant)
    assert before.last_run["status"] == "completed"
    listener = bus_listener(rt.settings, "ConnectionRevoked", f"cli-revoked-{rt.stage}")
    # When the operator disconnects it (confirming at the prompt)
    result = run("connections", "disconnect", "clover", merchant, input="y\n")
    # Then it is revoked, its secret is scheduled for deletion and the bus heard of it
    assert result.exit_code == 0, result.output
    assert f"Disconnected clover merchant {merchant}" in result.stdout
    after = ConnectionRepository(rt.settings).get("clover", merchant)
    assert after.status is ConnectionStatus.REVOKED
    shown = json.loads(run("connections", "show", "clover", merchant, "--json").stdout)
    assert "disconnected by an operator" in shown["status_reason"]
    assert secret_exists(rt.settings, "clover", merchant)  # recoverable for 7 days...
    described = boto3.client("secretsmanager").describe_secret(
        SecretId=rt.settings.connection_secret_name("clover", merchant)
    )
    assert described.get("DeletedDate") is not None  # ...but scheduled for deletion
    events = [e for e in bus_events(listener) if e["detail"]["merchant_id"] == merchant]
    assert events and events[0]["detail"]["reason"] == "disconnected by an operator"
    # When new orders arrive and the schedule fires
    sb.create_orders(merchant, 5)
    report = rt.tick(at=later())
    # Then nothing is queued for it and nothing is read: its last run is the one before
    assert report.failures == 0
    still = ConnectionRepository(rt.settings).get("clover", merchant)
    assert still.last_run["run_id"] == before.last_run["run_id"]
    assert still.cursor == before.cursor
    # And disconnecting again is harmless, and says what it was
    again = run("connections", "disconnect", "clover", merchant, "--yes", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["previous_status"] == "revoked"
