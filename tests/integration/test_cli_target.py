"""Which stack the commands talk to, ``--help`` at every level, and the live progress line.

A "deployed" stack here is a CloudFormation stack in the embedded AWS whose outputs name
the module runtime's resources (what ``infra/stack.py`` outputs on a real deployment);
the commands find everything from its outputs alone. The local stack is reached through
``posync local up``'s state file, or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import click
import pytest
from click.testing import CliRunner, Result

from posync.connections import ConnectionRepository
from posync_local import cli_run
from posync_local.cli import cli
from posync_local.cli_progress import CLEAR_LINE, LiveProgress, bar
from posync_local.local_tick import drain
from posync_local.runtime import LocalRuntime
from posync_local.stack import REQUIRED_OUTPUTS
from tests.integration.auth_flow import connect

pytestmark = pytest.mark.integration

POSYNC = Path(sys.executable).parent / "posync"


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    if module_runtime.clover is None:
        pytest.skip("the provider sandboxes are not available")
    yield module_runtime


@pytest.fixture(scope="module")
def merchant(rt: LocalRuntime) -> str:
    """One connected, synced Clover merchant of this module's stage."""
    assert rt.clover is not None
    m = rt.clover.add_merchant(orders=15, days=10)
    connect(rt, "clover", merchant_id=m)
    rt.drain()
    rt.apply_env()
    return m


def outputs_of(rt: LocalRuntime) -> dict[str, str]:
    s = rt.settings
    assert s.sync_queue_url
    return {
        "Stage": s.stage,
        "ApiUrl": rt.api_url,
        "ExportBucket": s.bucket,
        "SyncQueueUrl": s.sync_queue_url,
        "EventBus": s.event_bus,
        "ConnectionsTable": s.connections_table,
        "OrdersTable": s.orders_table,
        "ControlTable": s.control_table,
    }


def make_stack(outputs: dict[str, str]) -> str:
    """A CloudFormation stack with these outputs (and one trivial resource) in the embedded AWS."""
    name = f"posync-cli-{secrets.token_hex(4)}"
    template = {
        "Resources": {
            "Marker": {
                "Type": "AWS::SSM::Parameter",
                "Properties": {"Name": f"/{name}/marker", "Type": "String", "Value": name},
            }
        },
        "Outputs": {k: {"Value": v} for k, v in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))
    return name


@pytest.fixture(scope="module")
def stack(rt: LocalRuntime) -> str:
    return make_stack(outputs_of(rt))


def invoke(args: list[str], env: dict[str, str | None], tmp_path: Path) -> Result:
    base: dict[str, str | None] = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "none.json")}
    return CliRunner().invoke(cli, args, env={**base, **env}, prog_name="posync")


# --- a deployed stack, by its outputs ------------------------------------------------------------


def test_a_deployed_stack_is_found_by_its_outputs(
    rt: LocalRuntime, merchant: str, stack: str, tmp_path: Path
) -> None:
    # Given a deployed stack, and an environment that names another stage
    env = {"POSYNC_STAGE": "elsewhere", "POSYNC_SYNC_QUEUE_URL": None}
    # When the operator lists connections with --stack, and with POSYNC_STACK
    by_option = invoke(["connections", "list", "--stack", stack, "--json"], env, tmp_path)
    by_env = invoke(["connections", "list", "--json"], {**env, "POSYNC_STACK": stack}, tmp_path)
    # Then both read the stack's own tables
    for result in (by_option, by_env):
        assert result.exit_code == 0, result.output
        assert merchant in {v["merchant_id"] for v in json.loads(result.stdout)}
    # And the command left the process environment as it found it
    assert os.environ.get("POSYNC_STAGE") == rt.stage
    assert "POSYNC_EXPORT_BUCKET" not in os.environ


def test_exports_of_a_deployed_stack(rt: LocalRuntime, merchant: str, stack: str, tmp_path: Path) -> None:
    listed = invoke(["exports", "list", "--stack", stack, "--merchant", merchant, "--json"], {}, tmp_path)
    assert listed.exit_code == 0, listed.output
    runs = json.loads(listed.stdout)
    assert runs and all(r["merchant_id"] == merchant for r in runs)
    read = invoke(["exports", "read", "--stack", stack, "--merchant", merchant], {}, tmp_path)
    assert read.exit_code == 0, read.output
    assert len(read.stdout.splitlines()) == sum(r["records"] for r in runs) == 15


@pytest.mark.parametrize(
    ("stack_name", "code", "message"),
    [
        ("posync-nosuchstack", 3, "no stack named posync-nosuchstack"),
        ("bad_name!", 2, "not a CloudFormation stack name"),
    ],
)
def test_a_stack_that_is_not_there(
    rt: LocalRuntime, tmp_path: Path, stack_name: str, code: int, message: str
) -> None:
    result = invoke(["connections", "list", "--stack", stack_name], {}, tmp_path)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_a_stack_that_is_not_posync_or_from_another_version(rt: LocalRuntime, tmp_path: Path) -> None:
    # Given a stack without posync's outputs, and one whose table names posync would not derive
    outputs = outputs_of(rt)
    foreign = make_stack({"Website": "https://example.com"})
    drifted = make_stack({**outputs, "ConnectionsTable": "someone-elses-table"})
    # Then neither is used, each with its reason on one line
    r1 = invoke(["connections", "list", "--stack", foreign], {}, tmp_path)
    r2 = invoke(["connections", "list", "--stack", drifted], {}, tmp_path)
    assert r1.exit_code == 1
    assert f"stack {foreign} is not a posync stack (no output {', '.join(REQUIRED_OUTPUTS)})" in r1.stderr
    assert r2.exit_code == 1
    assert "built by another posync version: ConnectionsTable is someone-elses-table" in r2.stderr
    # And a --stage that contradicts the stack is a usage error
    r3 = invoke(["connections", "list", "--stack", make_stack(outputs), "--stage", "other"], {}, tmp_path)
    assert r3.exit_code == 2
    assert "--stage other does not match stack" in r3.stderr


def test_sync_wait_on_a_deployed_stack_follows_the_worker(
    rt: LocalRuntime, merchant: str, stack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployed stack whose worker (here: a thread draining the queue) picks the sync up
    monkeypatch.setattr(cli_run, "POLL_INTERVAL_S", 0.2)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # the "Lambda" prints to this process's stdout
    assert rt.clover is not None
    rt.clover.create_orders(merchant, 3)
    settings = rt.settings
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            if drain(settings, rt.functions.invoke).messages:
                return
            time.sleep(0.1)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        # When the operator syncs with --wait against the deployed stack
        result = invoke(["sync", "clover", merchant, "--stack", stack, "--wait", "--json"], {}, tmp_path)
    finally:
        stop.set()
        thread.join(30)
    # Then the command saw the run complete, with its counts
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["target"] == f"stack {stack} (us-east-1)"
    assert doc["result"]["status"] == "completed"
    assert doc["result"]["exported"] == 3
    last = ConnectionRepository(settings).get("clover", merchant).last_run
    assert doc["result"]["run_id"] == last["run_id"]
    assert "Waiting for the worker" in result.stderr


def test_sync_wait_on_a_deployed_stack_gives_up_after_its_timeout(
    rt: LocalRuntime, merchant: str, stack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_run, "POLL_INTERVAL_S", 0.2)
    started = time.monotonic()
    result = invoke(["sync", "clover", merchant, "--stack", stack, "--wait", "--timeout", "1"], {}, tmp_path)
    assert result.exit_code == 1, result.output
    assert time.monotonic() - started < 10
    assert result.stdout.splitlines()[-1].startswith("Not done (timeout: not finished after 1 s")
    rt.drain()  # the queued sync still runs


# --- the local stack ---------------------------------------------------------------------------


def test_the_running_local_stack_is_found_by_its_state_file(
    rt: LocalRuntime, merchant: str, tmp_path: Path
) -> None:
    # Given `posync local up`'s state file (this process plays the running stack) and no endpoint
    state = rt.write_state(tmp_path / "state.json")
    env = {"POSYNC_LOCAL_STATE": str(state), "AWS_ENDPOINT_URL": None, "POSYNC_STAGE": "elsewhere"}
    # When a command runs without --stack
    result = invoke(["connections", "show", "clover", merchant, "--json"], env, tmp_path)
    # Then it talks to that stack
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["merchant_id"] == merchant
    # And a state file whose process is gone is ignored: AWS_ENDPOINT_URL and POSYNC_STAGE rule,
    # here a stage that has no tables (one line of error, exit 1)
    data = json.loads(state.read_text())
    data["pid"] = 2**22 + 12345
    state.write_text(json.dumps(data))
    gone = invoke(["connections", "list"], {**env, "AWS_ENDPOINT_URL": rt.aws_endpoint}, tmp_path)
    assert gone.exit_code == 1, gone.output
    assert gone.stderr.startswith("Error: AWS refused Query: ResourceNotFoundException")
    assert len(gone.stderr.splitlines()) == 1


# --- help ----------------------------------------------------------------------------------------


def test_help_in_a_real_process() -> None:
    proc = subprocess.run([str(POSYNC), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("connections", "sync", "backfill", "exports", "local", "app-credentials"):
        assert f"  {command} " in proc.stdout
    assert proc.stderr == ""


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


@pytest.mark.parametrize(
    "path", [p for p in _commands(cli) if p[0] in ("connections", "sync", "backfill", "exports")]
)
def test_help_reads_well_at_every_level(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="posync")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: posync {' '.join(path)}")
    # a summary line of its own, and the options a script needs
    assert len(result.stdout.splitlines()[2].strip()) > 10
    group = cli
    for name in path[:-1]:
        sub = group.commands[name]
        assert isinstance(sub, click.Group)
        group = sub
    short = group.commands[path[-1]].get_short_help_str(limit=80)
    assert not short.endswith("...")
    if not isinstance(group.commands[path[-1]], click.Group):
        assert "--stack NAME" in result.stdout


# --- the live line on a terminal -----------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _wait_for_frame(term: io.StringIO, text: str, timeout_s: float = 10.0) -> None:
    """Until the redraw thread has drawn a frame showing ``text`` (a loaded machine runs it late)."""
    end = time.monotonic() + timeout_s
    while text not in term.getvalue() and time.monotonic() < end:
        time.sleep(0.01)


def test_on_a_terminal_progress_is_one_redrawn_line_with_a_bar_and_rates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a progress line on a terminal of 120 columns (an earlier test in this process may have
    # left COLUMNS=80 behind), redrawn every 10 ms
    monkeypatch.setenv("COLUMNS", "120")
    term = FakeTerminal()
    ticks = itertools.count()  # the rate's clock: a tenth of a second a reading, however loaded the machine
    progress = LiveProgress("clover ABCDEFGHJK123", term, refresh_s=0.01, clock=lambda: next(ticks) / 10)
    # When pages arrive
    with progress:
        progress.add(250, 1, 0.25)
        _wait_for_frame(term, "250 orders")
        progress.add(250, 1, 0.5)
        _wait_for_frame(term, "500 orders")
    # Then the line was redrawn in place with the bar, the counts and the rates, and cleared at the end
    text = term.getvalue()
    frames = [f for f in text.split(CLEAR_LINE) if f]
    assert "\n" not in text
    assert len(frames) >= 3
    last = frames[-1]
    assert last.startswith("clover ABCDEFGHJK123 [" + "=" * 11 + ">" + " " * 12 + "]  50%")
    assert "500 orders" in last and "2 pages" in last and "/s" in last
    assert text.endswith(CLEAR_LINE)


def test_the_bar_bounces_while_the_window_is_unknown() -> None:
    assert bar(None, 0.0) != bar(None, 0.7)
    assert "<=>" in bar(None, 0.3)
    assert bar(1.0, 0) == "[" + "=" * 24 + "]"
    assert bar(0.0, 0) == "[" + " " * 24 + "]"


def test_off_a_terminal_progress_is_plain_lines_at_most_once_per_interval() -> None:
    out = io.StringIO()
    clock = iter([0.0, 0.0, 0.1, 0.2, 0.3, 1.5, 1.6, 1.7, 1.8, 1.9])
    progress = LiveProgress("poynt x", out, interval_s=1.0, clock=lambda: next(clock))
    progress.start()
    progress.add(10, 1)  # t=0.1: the first page is always shown
    progress.add(10, 1)  # t=0.3: too soon
    progress.add(10, 1)  # t=1.5: a second later
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("poynt x: 10 orders (") and ", 1 page (" in lines[0]
    assert lines[1].startswith("poynt x: 30 orders (") and ", 3 pages (" in lines[1]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
