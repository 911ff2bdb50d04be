"""Which posync stack a command talks to: a deployed one (by its CloudFormation outputs) or the local one.

:func:`resolve_target` decides, in this order:

1. ``--stack NAME`` (or ``POSYNC_STACK``): the deployed stack ``NAME``. ``DescribeStacks``
   gives its outputs (``Stage``, ``ApiUrl``, ``ExportBucket``, ``SyncQueueUrl``,
   ``EventBus``, ``ConnectionsTable``, ``OrdersTable``, ``ControlTable``; see
   ``infra/stack.py``) and its ARN the region and account. The tables and the bus must be
   the names ``posync.resources`` derives from the stage: a stack built by another version
   of posync is refused rather than half-understood.
2. A running ``posync local up``: its state file (``$POSYNC_LOCAL_STATE`` or
   ``./.posync-local.json``, see :mod:`posync_local.runtime`).
3. ``AWS_ENDPOINT_URL`` set: the local stack that endpoint serves (the embedded AWS or
   LocalStack), stage from ``--stage`` / ``POSYNC_STAGE``.
4. Otherwise the deployed stack ``posync-dev`` with the default AWS session.

The result is a :class:`Target`: the ``posync.config.Settings`` the command works with and
the environment to apply for posync's boto3 clients and handlers (``target.activated()``
applies it and puts the previous values back afterwards). No secret is read here.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from posync.aws import client
from posync.config import ConfigError, Settings
from posync.errors import PosyncError
from posync.resources import STAGE_PATTERN

DEFAULT_STACK = "posync-dev"
STACK_ENV = "POSYNC_STACK"
# CloudFormation's own rule for stack names.
STACK_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
REQUIRED_OUTPUTS = (
    "Stage",
    "ApiUrl",
    "ExportBucket",
    "SyncQueueUrl",
    "EventBus",
    "ConnectionsTable",
    "OrdersTable",
    "ControlTable",
)
# Stacks in these states have no usable resources (yet, or any more).
UNUSABLE_STATUSES = frozenset(
    {
        "CREATE_IN_PROGRESS",
        "CREATE_FAILED",
        "ROLLBACK_IN_PROGRESS",
        "ROLLBACK_FAILED",
        "ROLLBACK_COMPLETE",
        "DELETE_IN_PROGRESS",
        "DELETE_FAILED",
        "DELETE_COMPLETE",
        "REVIEW_IN_PROGRESS",
    }
)

LOCAL = "local"
DEPLOYED = "deployed"


class TargetError(PosyncError):
    """The target cannot be used (unreachable AWS, a stack that is not posync's...)."""


class StackNotFound(TargetError):
    """No stack of that name in this account and region."""


class TargetConflict(TargetError):
    """The options contradict each other or the stack (a bad stack name, another stage)."""


@dataclass(frozen=True)
class Target:
    """A resolved stack: settings, the environment to apply, and where it came from."""

    kind: str  # LOCAL | DEPLOYED
    name: str  # the stack name, the state file, or the AWS endpoint
    settings: Settings
    env: Mapping[str, str | None] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.kind == LOCAL

    @property
    def description(self) -> str:
        if self.kind == DEPLOYED:
            return f"stack {self.name} ({self.settings.aws_region})"
        return f"the local stack ({self.name}, stage {self.settings.stage})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "stage": self.settings.stage,
            "region": self.settings.aws_region,
        }

    @contextlib.contextmanager
    def activated(self) -> Iterator[Target]:
        """Apply :attr:`env` to this process (boto3 clients follow), and put it back on exit."""
        from posync_local.runtime import apply_env

        previous = apply_env(dict(self.env))
        try:
            yield self
        finally:
            apply_env(previous)


def _settings(env: Mapping[str, str | None]) -> Settings:
    merged = dict(os.environ)
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    try:
        return Settings.from_env(merged)
    except ConfigError as exc:
        raise TargetError(str(exc)) from exc


def _check_stage(stage: str | None) -> None:
    if stage is not None and not STAGE_PATTERN.fullmatch(stage):
        raise TargetConflict(f"--stage must match {STAGE_PATTERN.pattern}, got {stage[:40]!r}")


def local_target(
    *, stage: str | None = None, state_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Target | None:
    """The local stack: ``posync local up``'s state file, else ``AWS_ENDPOINT_URL``; None if neither."""
    from posync_local.runtime import load_state

    _check_stage(stage)
    e = os.environ if environ is None else environ
    state = load_state(state_file)
    override: dict[str, str | None] = {"POSYNC_STAGE": stage} if stage else {}
    if state is not None:
        env = {**state.env, **override}
        return Target(LOCAL, str(state.path), _settings(env), env)
    endpoint = e.get("AWS_ENDPOINT_URL")
    if endpoint:
        return Target(LOCAL, endpoint, _settings(override), override)
    return None


def _describe(name: str) -> dict[str, Any]:
    try:
        stacks = client("cloudformation").describe_stacks(StackName=name).get("Stacks", [])
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "ValidationError":  # the name is well formed (checked above): no such stack
            raise StackNotFound(
                f"no stack named {name} in this account and region "
                "(pass --stack or set POSYNC_STACK; or start `posync local up`)"
            ) from exc
        raise TargetError(f"cannot read stack {name}: {code or type(exc).__name__}") from exc
    except BotoCoreError as exc:
        raise TargetError(
            f"cannot reach AWS to find stack {name}: {exc} (configure AWS credentials, "
            "or start `posync local up` for the local stack)"
        ) from exc
    if not stacks:
        raise StackNotFound(f"no stack named {name} in this account and region")
    stack: dict[str, Any] = stacks[0]
    return stack


def deployed_target(name: str, *, stage: str | None = None) -> Target:
    """The deployed stack ``name``, from its CloudFormation outputs (the ambient AWS session)."""
    if not STACK_NAME_PATTERN.fullmatch(name):
        raise TargetConflict(f"not a CloudFormation stack name: {name[:60]!r}")
    _check_stage(stage)
    stack = _describe(name)
    status = str(stack.get("StackStatus", ""))
    if status in UNUSABLE_STATUSES:
        raise TargetError(f"stack {name} is {status}: nothing to talk to")
    outputs = {str(o["OutputKey"]): str(o.get("OutputValue", "")) for o in stack.get("Outputs", [])}
    missing = [k for k in REQUIRED_OUTPUTS if not outputs.get(k)]
    if missing:
        raise TargetError(f"stack {name} is not a posync stack (no output {', '.join(missing)})")
    if stage is not None and stage != outputs["Stage"]:
        raise TargetConflict(
            f"--stage {stage} does not match stack {name}, whose stage is {outputs['Stage']}"
        )
    arn = str(stack.get("StackId", ""))
    parts = arn.split(":")
    region = parts[3] if len(parts) > 4 and parts[3] else None
    account = parts[4] if len(parts) > 4 and parts[4] else None
    env: dict[str, str | None] = {
        "POSYNC_STAGE": outputs["Stage"],
        "POSYNC_EXPORT_BUCKET": outputs["ExportBucket"],
        "POSYNC_SYNC_QUEUE_URL": outputs["SyncQueueUrl"],
        "POSYNC_PUBLIC_BASE_URL": outputs["ApiUrl"],
    }
    if region:
        env["AWS_REGION"] = region
        env["AWS_DEFAULT_REGION"] = region
    if account:
        env["POSYNC_ACCOUNT_ID"] = account
    settings = _settings(env)
    expected = {
        "ConnectionsTable": settings.connections_table,
        "OrdersTable": settings.orders_table,
        "ControlTable": settings.control_table,
        "EventBus": settings.event_bus,
    }
    drift = [f"{k} is {outputs[k]}, expected {v}" for k, v in expected.items() if outputs[k] != v]
    if drift:
        raise TargetError(f"stack {name} was built by another posync version: {'; '.join(drift)}")
    return Target(DEPLOYED, name, settings, env, outputs)


def resolve_target(
    stack: str | None = None,
    *,
    stage: str | None = None,
    state_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """The stack a command talks to (see the module docstring for the order)."""
    e = os.environ if environ is None else environ
    name = stack or e.get(STACK_ENV) or None
    if name:
        return deployed_target(name, stage=stage)
    local = local_target(stage=stage, state_file=state_file, environ=e)
    if local is not None:
        return local
    return deployed_target(DEFAULT_STACK, stage=stage)
