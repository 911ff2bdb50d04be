"""``posync exports list/read`` against the local stack: manifests, the change log, ``--latest``.

Two Clover runs of one merchant (the second after 4 of its orders changed) and one Poynt
run give a change log with two versions of 4 orders. The ground truth is the sandbox.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from posync.exports import order_key
from posync.sources import ms_to_iso
from posync_local.cli import cli
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import connect

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class World:
    rt: LocalRuntime
    clover: str  # 12 orders, 4 of them changed between its two runs
    poynt: str  # 8 orders, one run
    changed: frozenset[str]
    between: str  # an RFC 3339 time after the first runs and before the changes


def _connected(rt: LocalRuntime, provider: str, orders: int) -> str:
    sb = rt.clover if provider == "clover" else rt.poynt
    assert sb is not None
    merchant = sb.add_merchant(orders=orders, days=15)
    assert connect(rt, provider, merchant_id=merchant).callback.status_code in (200, 302)
    return merchant


@pytest.fixture(scope="module")
def world(module_runtime: LocalRuntime) -> Iterator[World]:
    rt = module_runtime
    if rt.clover is None or rt.poynt is None:
        pytest.skip("the provider sandboxes are not available")
    clover = _connected(rt, "clover", 12)
    poynt = _connected(rt, "poynt", 8)
    rt.drain()
    time.sleep(0.01)
    between = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    changed = frozenset(rt.clover.modify_orders(clover, 4))
    rt.apply_env()
    result = CliRunner().invoke(cli, ["sync", "clover", clover, "--wait"], env={"POSYNC_STACK": None})
    assert result.exit_code == 0, result.output
    yield World(rt, clover, poynt, changed, between)


@pytest.fixture
def run(tmp_path: Path) -> Any:
    def invoke(*args: str) -> Result:
        env = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")}
        return CliRunner().invoke(cli, list(args), env=env, prog_name="posync")

    return invoke


def lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def doc(result: Result) -> Any:
    """The one JSON document a ``--json`` command printed."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def truth(world: World) -> dict[str, str]:
    """order id -> modified_at of the sandbox's current versions of the Clover merchant."""
    sb = world.rt.clover
    assert sb is not None
    return {str(o["id"]): ms_to_iso(int(o["modifiedTime"])) for o in sb.orders(world.clover)}


def test_list_shows_each_run_with_files_records_and_cursor_range(world: World, run: Any) -> None:
    # When the consumer lists the runs of the Clover merchant
    runs = doc(run("exports", "list", "--merchant", world.clover, "--json"))
    # Then there are two, in order, and their records add up to every version exported
    assert [r["merchant_id"] for r in runs] == [world.clover, world.clover]
    first, second = runs
    assert (first["records"], second["records"]) == (12, 4)
    assert first["finished_at"] <= second["finished_at"]
    assert first["files"] >= 1 and second["files"] >= 1
    assert first["cursor_from"] is None  # the first run started from nothing...
    assert second["cursor_from"] == first["cursor_to"]  # ...the second where the first ended
    day = f"{second['run_id'][:4]}-{second['run_id'][4:6]}-{second['run_id'][6:8]}"  # the run's start date
    partition = f"exports/manifests/v1/provider=clover/merchant_id={world.clover}/dt={day}"
    assert second["manifest_key"] == f"{partition}/{second['run_id']}.json"
    # And --day lists that merchant-day's partition only
    same_day = doc(
        run("exports", "list", "--provider", "clover", "--merchant", world.clover, "--day", day, "--json")
    )
    assert [r["run_id"] for r in same_day] == [
        r["run_id"] for r in runs if r["run_id"][:8] == day.replace("-", "")
    ]
    other = doc(
        run(
            "exports",
            "list",
            "--provider",
            "clover",
            "--merchant",
            world.clover,
            "--day",
            "2001-01-01",
            "--json",
        )
    )
    assert other == []
    # And the table says the same
    table = run("exports", "list", "--merchant", world.clover)
    assert table.exit_code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "ID", "PROVIDER"]
    assert [r.split()[0] for r in rows] == [first["run_id"], second["run_id"]]
    assert [r.split()[4] for r in rows] == ["12", "4"]


def test_list_filters_by_provider_and_by_finish_time(world: World, run: Any) -> None:
    poynt_runs = doc(run("exports", "list", "--provider", "poynt", "--json"))
    assert {r["provider"] for r in poynt_runs} == {"poynt"}
    assert world.poynt in {r["merchant_id"] for r in poynt_runs}
    later = doc(run("exports", "list", "--merchant", world.clover, "--since", world.between, "--json"))
    assert [r["records"] for r in later] == [4]


def test_read_streams_the_change_log_from_manifests(world: World, run: Any) -> None:
    # When the consumer reads the Clover merchant's exports
    orders = lines(run("exports", "read", "--provider", "clover", "--merchant", world.clover))
    # Then every version is there once: the 4 changed orders twice, the others once
    assert {o["merchant_id"] for o in orders} == {world.clover}
    assert all(o["schema_version"] == 1 for o in orders)
    counts = Counter(o["order_id"] for o in orders)
    assert len(orders) == 16
    assert {oid for oid, n in counts.items() if n == 2} == world.changed
    assert len({(o["order_id"], o["modified_at"]) for o in orders}) == 16


def test_read_latest_folds_to_the_newest_version_of_each_order(world: World, run: Any) -> None:
    orders = lines(run("exports", "read", "--merchant", world.clover, "--latest"))
    assert {o["order_id"]: o["modified_at"] for o in orders} == truth(world)
    assert len(orders) == 12


def test_read_since_and_limit(world: World, run: Any) -> None:
    # Only the versions modified after the first runs: the 4 changes
    since = lines(run("exports", "read", "--merchant", world.clover, "--since", world.between))
    assert {o["order_id"] for o in since} == world.changed and len(since) == 4
    # --limit stops early
    assert len(lines(run("exports", "read", "--limit", "3"))) == 3


def test_read_never_shows_files_without_a_manifest(world: World, run: Any) -> None:
    # Given a part of a run that never finished (no manifest lists it)
    rt = world.rt
    ghost = {"order_id": "GHOSTORDER001", "merchant_id": world.clover, "provider": "clover"}
    key = order_key("clover", world.clover, "2026-01-01", "20260101T000000Z-unfinished", 1)
    boto3.client("s3").put_object(
        Bucket=rt.settings.bucket, Key=key, Body=gzip.compress(json.dumps(ghost).encode() + b"\n")
    )
    # When the consumer reads everything
    result = run("exports", "read")
    # Then the unfinished run's order is not there
    assert result.exit_code == 0, result.output
    assert "GHOSTORDER001" not in result.stdout
    assert world.poynt in result.stdout and world.clover in result.stdout


def test_a_file_that_does_not_match_its_manifest_is_refused(world: World, run: Any) -> None:
    # Given the Poynt merchant's manifested file replaced behind the manifest's back
    rt = world.rt
    manifest = doc(run("exports", "list", "--merchant", world.poynt, "--json"))[0]
    s3 = boto3.client("s3")
    stored = json.loads(s3.get_object(Bucket=rt.settings.bucket, Key=manifest["manifest_key"])["Body"].read())
    part = stored["files"][0]["key"]
    original = s3.get_object(Bucket=rt.settings.bucket, Key=part)["Body"].read()
    s3.put_object(Bucket=rt.settings.bucket, Key=part, Body=gzip.compress(b'{"order_id":"X"}\n'))
    try:
        # When the consumer reads it
        result = run("exports", "read", "--merchant", world.poynt)
        # Then the command stops with one line saying which file, exit 1
        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: {part} does not match its manifest")
        assert len(result.stderr.splitlines()) == 1
    finally:
        s3.put_object(Bucket=rt.settings.bucket, Key=part, Body=original)
    assert len(lines(run("exports", "read", "--merchant", world.poynt))) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exports", "read", "--since", "01/11/2026"], "YYYY-MM-DD"),
        (["exports", "list", "--since", "2026-11-31"], "YYYY-MM-DD"),
        (
            ["exports", "list", "--provider", "clover", "--merchant", "ABCDEFGHIJKLM", "--day", "2026-02-30"],
            "YYYY-MM-DD",
        ),
        (["exports", "list", "--merchant", "ABCDEFGHIJKLM", "--day", "2026-02-03"], "--provider"),
        (
            ["exports", "read", "--merchant", "not-a-merchant"],
            "not a Clover merchant id nor a Poynt business id",
        ),
        (
            ["exports", "list", "--provider", "clover", "--merchant", "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"],
            "not a valid clover merchant id",
        ),
        (["exports", "read", "--provider", "square"], "'square' is not one of"),
        (["exports", "read", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_is_a_usage_error(world: World, run: Any, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""
