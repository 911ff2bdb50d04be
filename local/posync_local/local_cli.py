"""``posync local up`` and ``posync local tick``: the local stack from the command line."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from posync.config import ConfigError, Settings
from posync_local.local_functions import FunctionHost
from posync_local.local_tick import TickReport, drain, tick
from posync_local.runtime import LocalRuntime, activate_local_stack, state_path


def _echo(line: str = "") -> None:
    click.echo(line)
    sys.stdout.flush()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to stderr; the functions' Powertools logger ("posync") already writes JSON to stdout.

    Powertools adds a filter to root handlers that drops every logger whose name contains its
    service name, "posync_local.*" included: this handler keeps those and skips only "posync".
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "posync" or record.name.startswith("posync."))


def _log_to_stderr(level: int) -> None:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group("local")
def local_group() -> None:
    """Run posync on this machine: embedded AWS, provider sandboxes, the HTTP API."""


@local_group.command("up")
@click.option("--api-port", default=8080, show_default=True, help="HTTP API port (0: a free port).")
@click.option("--aws-port", default=4566, show_default=True, help="Embedded AWS port (0: a free port).")
@click.option(
    "--sandbox/--no-sandbox",
    default=True,
    show_default=True,
    help="Start the Clover and Poynt sandboxes and point posync at them.",
)
@click.option("--stage", default="dev", show_default=True, help="Stage name (resource names derive from it).")
@click.option(
    "--merchants",
    default=1,
    show_default=True,
    type=click.IntRange(0, 100),
    help="With --sandbox: synthetic merchants to create in each sandbox.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the endpoints for other commands "
    "(default: $POSYNC_LOCAL_STATE or ./.posync-local.json).",
)
def up(
    *, api_port: int, aws_port: int, sandbox: bool, stage: str, merchants: int, state_file: Path | None
) -> None:
    """Start the local stack and serve until Ctrl-C."""
    _log_to_stderr(logging.INFO)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runtime = LocalRuntime(
        api_port=api_port, aws_port=aws_port, sandbox=sandbox, stage=stage, sandbox_merchants=merchants
    )
    try:
        runtime.start()
    except (RuntimeError, OSError, ConfigError, ImportError) as exc:
        raise click.ClickException(f"could not start the local stack: {exc}") from exc
    path = runtime.write_state(state_file or state_path())
    try:
        _echo(f"posync local stack is up (stage {stage})")
        _echo(f"  API:             {runtime.api_url}")
        _echo(f"  AWS endpoint:    {runtime.aws_endpoint or 'default AWS endpoints'}")
        if runtime.clover is not None:
            _echo(
                f"  Clover sandbox:  {runtime.clover.url}  merchants: {', '.join(runtime.clover.merchants)}"
            )
        if runtime.poynt is not None:
            _echo(f"  Poynt sandbox:   {runtime.poynt.url}  merchants: {', '.join(runtime.poynt.merchants)}")
        _echo(f"  Connect Clover:  {runtime.connect_url('clover')}")
        _echo(f"  Connect Poynt:   {runtime.connect_url('poynt')}")
        _echo(f"  Health:          {runtime.api_url}/health")
        _echo(f"  State file:      {path}")
        _echo("Run `posync local tick` to fire the schedule. Ctrl-C stops.")
        while not stop.wait(0.5):
            pass
        _echo("stopping")
    finally:
        runtime.stop()
        if path.exists():
            path.unlink()
    _echo("stopped")


def _function_logs_to_stderr() -> None:
    import posync.observability  # noqa: F401 - creates the Powertools logger and its stdout handler

    for name in ("posync", ""):
        for h in logging.getLogger(name or None).handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (
                sys.stdout,
                sys.__stdout__,
            ):
                h.setStream(sys.stderr)


def _format_report(report: TickReport) -> str:
    return (
        f"dispatcher: {json.dumps(report.dispatcher, default=str)}\n"
        f"worker: {report.messages} message(s) in {report.batches} batch(es): "
        f"{report.succeeded} done, {report.failures} failed; {report.rounds} round(s), "
        f"{report.elapsed_s:.2f} s; stopped: {report.stopped_by}; dead-letter queue: {report.dead_lettered}"
    )


@local_group.command("tick")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--drain-only", is_flag=True, help="Only drain the sync queue (no dispatcher call).")
@click.option("--max-seconds", default=300.0, show_default=True, help="Stop draining after this long.")
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The state file `posync local up` wrote.",
)
def tick_command(*, as_json: bool, drain_only: bool, max_seconds: float, state_file: Path | None) -> None:
    """Fire the schedule once against the running local stack and drain the sync queue."""
    _log_to_stderr(logging.WARNING)
    state = activate_local_stack(state_file)
    if state is None:
        raise click.ClickException("no local stack is running here (start one with `posync local up`)")
    # The functions log (and print metrics) to stdout, as on Lambda: here stdout is the report's.
    with contextlib.redirect_stdout(sys.stderr):
        _function_logs_to_stderr()
        settings = Settings.from_env()
        host = FunctionHost(stage=settings.stage, region=settings.aws_region)
        if drain_only:
            report = drain(settings, host.invoke, max_seconds=max_seconds)
        else:
            report = tick(settings, host.invoke, max_seconds=max_seconds)
    if as_json:
        _echo(json.dumps(report.to_dict(), default=str, sort_keys=True))
    else:
        _echo(_format_report(report))
