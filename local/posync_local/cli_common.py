"""What the operator commands share: exit codes, the target options, errors on one line, tables.

Exit codes (every command): 0 ok; 1 an operational failure (AWS unreachable or refusing, a
sync that failed or timed out); 2 bad input or usage (click's own code: a bad provider,
a malformed merchant id, a bad date); 3 not found (no such connection or stack).
Errors go to stderr as one ``Error: ...`` line: never a stack trace (``POSYNC_DEBUG=1``
shows it), never a secret.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, ParamSpec, TypeVar

import click
from botocore.exceptions import BotoCoreError, ClientError

from posync.config import PROVIDERS
from posync.domain import MERCHANT_ID_PATTERNS, check_merchant_id
from posync.errors import ConnectionNotFound, InvalidInput, PosyncError, UnknownProvider
from posync_local.stack import StackNotFound, Target, TargetConflict, resolve_target

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

MERCHANT_ID_FORMATS = {
    "clover": "13 upper-case letters and digits, e.g. ABCDEFGHJK123",
    "poynt": "a lower-case UUID, e.g. 0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
}

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

P = ParamSpec("P")
R = TypeVar("R")


class NotFound(click.ClickException):
    """Exit 3: the connection (or stack) asked for does not exist."""

    exit_code = EXIT_NOT_FOUND


class Failure(click.ClickException):
    """Exit 1: the command could not do its job."""

    exit_code = EXIT_FAILURE


PROVIDER_ARG = click.argument("provider", type=click.Choice(PROVIDERS, case_sensitive=False))


def merchant_id_for(provider: str, merchant_id: str, param: str = "MERCHANT_ID") -> str:
    """``merchant_id`` if it is one of ``provider``'s (else a usage error, exit 2, with the format)."""
    try:
        return check_merchant_id(provider, merchant_id)
    except (InvalidInput, UnknownProvider) as exc:
        fmt = MERCHANT_ID_FORMATS.get(provider, "")
        raise click.BadParameter(f"{exc} ({fmt})" if fmt else str(exc), param_hint=param) from exc


def merchant_filter(provider: str | None, merchant_id: str | None) -> str | None:
    """A ``--merchant`` filter: a valid id of ``provider``, or of any provider when none is given."""
    if merchant_id is None:
        return None
    if provider is not None:
        return merchant_id_for(provider, merchant_id, "--merchant")
    if not any(p.fullmatch(merchant_id) for p in MERCHANT_ID_PATTERNS.values()):
        raise click.BadParameter(
            "not a Clover merchant id nor a Poynt business id "
            f"({MERCHANT_ID_FORMATS['clover']}; or {MERCHANT_ID_FORMATS['poynt']})",
            param_hint="--merchant",
        )
    return merchant_id


def parse_since(value: str, now: datetime | None = None) -> str:
    """``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 time -> RFC 3339 UTC; not in the future."""
    now = now or datetime.now(UTC)
    text = value.strip()
    try:
        if len(text) == 10:
            when = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise InvalidInput("--since needs a time zone (e.g. 2026-11-01T00:00:00Z) or a plain date")
    except ValueError as exc:
        raise InvalidInput(
            f"--since must be a date (YYYY-MM-DD) or an RFC 3339 time, got {value[:40]!r}"
        ) from exc
    when = when.astimezone(UTC)
    if when > now:
        raise InvalidInput("--since is in the future")
    if when < EARLIEST:
        raise InvalidInput("--since is before 2000-01-01")
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def target_options(fn: Callable[P, R]) -> Callable[P, R]:
    """``--stack`` and ``--stage``: the options every command that talks to a stack takes."""
    fn = click.option(
        "--stage",
        default=None,
        help="Stage of the local stack (default: the running local stack's, or POSYNC_STAGE).",
    )(fn)
    fn = click.option(
        "--stack",
        envvar="POSYNC_STACK",
        default=None,
        metavar="NAME",
        help="Deployed stack to talk to (env POSYNC_STACK). Without it: the running local stack "
        "(`posync local up`, or AWS_ENDPOINT_URL), else the deployed stack posync-dev.",
    )(fn)
    return fn


def open_target(stack: str | None, stage: str | None) -> Target:
    """Resolve the target and apply its environment until the command ends."""
    target = resolve_target(stack, stage=stage)
    ctx = click.get_current_context()
    return ctx.with_resource(target.activated())


def _debug() -> bool:
    return os.environ.get("POSYNC_DEBUG", "") not in ("", "0", "false", "no")


def _aws_message(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "")) or "error"
    message = str(err.get("Message", ""))[:200]
    operation = getattr(exc, "operation_name", "") or "a call"
    return f"AWS refused {operation}: {code}" + (f" ({message})" if message else "")


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn what a command may raise into one line on stderr and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (StackNotFound, ConnectionNotFound) as exc:
            raise NotFound(str(exc)) from exc
        except TargetConflict as exc:
            raise click.UsageError(str(exc)) from exc
        except (InvalidInput, UnknownProvider) as exc:
            raise click.UsageError(str(exc)) from exc
        except PosyncError as exc:
            raise Failure(str(exc)) from exc
        except ClientError as exc:
            raise Failure(_aws_message(exc)) from exc
        except BotoCoreError as exc:
            raise Failure(f"cannot reach AWS: {exc}") from exc
        except Exception as exc:
            if _debug():
                raise
            raise Failure(f"unexpected {type(exc).__name__} (POSYNC_DEBUG=1 shows the details)") from exc

    return wrapper


# --- output -------------------------------------------------------------------------------------


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, sort_keys=True, default=str))


def iso_seconds(value: str | int | float | None) -> str | None:
    """An RFC 3339 time (or Unix seconds) as ``YYYY-MM-DDTHH:MM:SSZ``; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = str(value)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shorten(text: str | None, width: int) -> str:
    if not text:
        return "-"
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[str | None]]) -> str:
    """A plain, left-aligned table (two spaces between columns, ``-`` for empty cells)."""
    cells = [[c if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(str(c)))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)
