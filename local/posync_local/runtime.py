"""The local runtime: posync's whole stack in one process, without AWS or Docker.

``LocalRuntime`` starts the embedded AWS (moto's server), provisions the stage
from ``posync.resources`` (what the CDK stack is built from), optionally starts the
Clover and Poynt sandboxes and points the provider hosts at them, and serves the
HTTP front that turns requests into API Gateway events for the real handlers.
``tick()`` fires the schedule (dispatcher) and drains the sync queue into the
worker; ``drain()`` only drains.

    with LocalRuntime(sandbox=True) as rt:          # ports 0: free ports
        requests.get(f"{rt.api_url}/health")
        rt.tick()

Configuration reaches the code the way it does on Lambda: through environment
variables (``rt.env()``), applied to ``os.environ`` by ``rt.apply_env()`` (``start``
does it) followed by ``posync.aws.reset_clients()``. Several runtimes can live in
one process on distinct ports; give them distinct stages (moto's state is per
process) and call ``apply_env()`` on the one you talk to - or ``derive(stage)`` a
runtime that shares this one's AWS and sandboxes.

``posync local up`` writes a state file (endpoints only, never a secret) that
``posync local tick`` and the other CLI commands read with
:func:`activate_local_stack` to reach the running stack from another process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import posync.aws
from posync.config import Settings
from posync_local.local_aws import (
    EmbeddedAws,
    ProvisionedResources,
    aws_env,
    clear_data,
    describe_local,
    provision,
)
from posync_local.local_aws import store_app_credentials as _store_app_credentials
from posync_local.local_front import LocalFront
from posync_local.local_functions import FunctionHost, Handler
from posync_local.local_tick import TickReport, drain, tick

if TYPE_CHECKING:
    from posync_local.sandbox import CloverSandbox, PoyntSandbox

log = logging.getLogger(__name__)

__all__ = [
    "LocalRuntime",
    "LocalState",
    "ProvisionedResources",
    "TickReport",
    "activate_local_stack",
    "apply_env",
    "describe_local",
    "drain",
    "load_state",
    "provision",
    "state_path",
    "store_app_credentials",
    "tick",
]

LOCAL_ACCOUNT_ID = "000000000000"
STATE_FILE_NAME = ".posync-local.json"
STATE_VERSION = 1


def store_app_credentials(settings: Settings, provider: str, creds: Mapping[str, Any]) -> None:
    """Put one provider's app credentials JSON to ``settings.app_secret_name(provider)``.

    clover ``{"client_id", "client_secret"}``; poynt ``{"app_id", "private_key_pem"}``.
    """
    _store_app_credentials(settings, provider, {k: str(v) for k, v in creds.items()})


def apply_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for ``None``, unset) environment variables; returns their previous values.

    Resets posync's cached boto3 clients when an ``AWS_*`` variable changed (the others
    do not reach boto3, and building clients again costs a fraction of a second each).
    """
    previous: dict[str, str | None] = {}
    changed = False
    for key, value in values.items():
        old = os.environ.get(key)
        previous[key] = old
        if old == value:
            continue
        changed = changed or key.startswith("AWS_")
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if changed:
        posync.aws.reset_clients()
    return previous


def _load_sandbox_classes() -> tuple[type[CloverSandbox], type[PoyntSandbox]]:
    # Imported when needed: `posync local tick` and the other CLI commands never load them.
    module = importlib.import_module("posync_local.sandbox")
    return module.CloverSandbox, module.PoyntSandbox


class LocalRuntime:
    """Embedded AWS + provisioned stage + (optional) provider sandboxes + HTTP front.

    ``api_port``/``aws_port`` 0 pick free ports. ``handlers`` replaces functions by
    name (tests of this machinery only). ``env`` adds or overrides variables of the
    functions' environment (e.g. ``{"POSYNC_BACKFILL_DAYS": "30"}``). With ``sandbox``,
    ``sandbox_seed`` seeds both sandboxes and ``sandbox_merchants`` adds that many
    merchants to each (tests usually add their own).
    """

    def __init__(
        self,
        api_port: int = 0,
        aws_port: int = 0,
        sandbox: bool = True,
        stage: str = "dev",
        *,
        provider_region: str = "sandbox",
        functions_dir: Path | None = None,
        handlers: Mapping[str, Handler] | None = None,
        env: Mapping[str, str] | None = None,
        sandbox_seed: int = 7,
        sandbox_merchants: int = 0,
        aws: EmbeddedAws | None = None,
        clover: CloverSandbox | None = None,
        poynt: PoyntSandbox | None = None,
    ) -> None:
        self.api_port = api_port
        self.aws_port = aws_port
        self.sandbox = sandbox
        self.stage = stage
        self.provider_region = provider_region
        self.extra_env = dict(env or {})
        self._owns_aws = aws is None
        self._aws = aws if aws is not None else EmbeddedAws(aws_port)
        self._owns_sandboxes = clover is None and poynt is None
        self.sandbox_seed = sandbox_seed
        self.sandbox_merchants = sandbox_merchants
        self.clover: CloverSandbox | None = clover
        self.poynt: PoyntSandbox | None = poynt
        self.functions = FunctionHost(
            functions_dir, stage=stage, account_id=LOCAL_ACCOUNT_ID, overrides=handlers
        )
        self.front: LocalFront | None = None
        self.provisioned: ProvisionedResources | None = None
        self._settings: Settings | None = None
        self._env_before: dict[str, str | None] | None = None
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> LocalRuntime:
        if self._started:
            return self
        started = time.monotonic()
        try:
            self._aws.start()
            if self.sandbox and self._owns_sandboxes:
                clover_cls, poynt_cls = _load_sandbox_classes()
                self.clover = clover_cls(port=0, seed=self.sandbox_seed).start()
                self.poynt = poynt_cls(port=0, seed=self.sandbox_seed).start()
                for _ in range(self.sandbox_merchants):
                    self.clover.add_merchant()
                    self.poynt.add_merchant()
            # The front binds now (its URL is part of the functions' environment) and serves last.
            self.front = LocalFront(self.functions, self.api_port, account_id=LOCAL_ACCOUNT_ID)
            self.apply_env()
            self.provisioned = provision(self.settings)
            self._settings = None
            self.apply_env()  # now with the sync queue's URL
            if self.sandbox:
                self.store_sandbox_credentials()
            errors = self.functions.preload()
            if errors:
                log.warning("functions that failed to load (their routes answer 500): %s", sorted(errors))
            self.front.start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        log.info(
            "local runtime (stage %s) up in %.1f s at %s",
            self.stage,
            time.monotonic() - started,
            self.api_url,
        )
        return self

    def stop(self) -> None:
        """Stop what this runtime started (not shared AWS or sandboxes) and restore the environment."""
        if self.front is not None:
            with contextlib.suppress(Exception):
                self.front.stop()
        if self._owns_sandboxes:
            for sb in (self.clover, self.poynt):
                if sb is not None:
                    with contextlib.suppress(Exception):
                        sb.stop()
        if self._owns_aws:
            self._aws.stop()
        self.restore_env()
        self._started = False

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def derive(
        self,
        stage: str,
        *,
        env: Mapping[str, str] | None = None,
        handlers: Mapping[str, Handler] | None = None,
    ) -> LocalRuntime:
        """A runtime for another stage sharing this one's AWS and sandboxes (its own front and tables).

        Not started: call ``start()``; its ``stop()`` leaves the shared servers running.
        """
        if not self._started:
            raise RuntimeError("start() first")
        return LocalRuntime(
            api_port=0,
            sandbox=self.sandbox,
            stage=stage,
            provider_region=self.provider_region,
            functions_dir=self.functions.functions_dir,
            sandbox_seed=self.sandbox_seed,
            env={**self.extra_env, **(env or {})},
            handlers=handlers,
            aws=self._aws,
            clover=self.clover,
            poynt=self.poynt,
        )

    # --- endpoints and configuration --------------------------------------------------------

    @property
    def api_url(self) -> str:
        if self.front is None:
            raise RuntimeError("start() first")
        return self.front.url

    @property
    def aws_endpoint(self) -> str | None:
        return self._aws.endpoint

    @property
    def external_aws(self) -> bool:
        return self._aws.external

    def connect_url(self, provider: str) -> str:
        return f"{self.api_url}/connect/{provider}"

    def env(self) -> dict[str, str | None]:
        """The functions' environment (what the CDK stack sets on each Lambda, pointed at local things)."""
        env: dict[str, str | None] = dict(self._aws.env())
        env.update(
            {
                "POSYNC_STAGE": self.stage,
                "POSYNC_ACCOUNT_ID": LOCAL_ACCOUNT_ID,
                "POSYNC_PROVIDER_REGION": self.provider_region,
                "POSYNC_PUBLIC_BASE_URL": self.api_url,
                "POSYNC_SYNC_QUEUE_URL": self.provisioned.sync_queue_url if self.provisioned else None,
                "POWERTOOLS_SERVICE_NAME": "posync",
                "POWERTOOLS_METRICS_NAMESPACE": "posync",
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
        )
        if self.clover is not None:
            url = str(self.clover.url)
            env.update(
                {
                    "POSYNC_CLOVER_OAUTH_BASE": url,
                    "POSYNC_CLOVER_API_BASE": url,
                    "POSYNC_CLOVER_AUTHORIZE_BASE": url,
                }
            )
        if self.poynt is not None:
            url = str(self.poynt.url)
            env.update(
                {
                    "POSYNC_POYNT_OAUTH_BASE": url,
                    "POSYNC_POYNT_API_BASE": url,
                    "POSYNC_POYNT_BILLING_BASE": url,
                }
            )
        env.update(self.extra_env)
        return env

    def apply_env(self) -> None:
        """Make this runtime's environment the process's (and reset posync's boto3 clients)."""
        previous = apply_env(self.env())
        if self._env_before is None:
            self._env_before = previous
        self._settings = None

    def restore_env(self) -> None:
        """Put back the variables as they were before the first ``apply_env``."""
        if self._env_before is not None:
            apply_env(self._env_before)
            self._env_before = None

    @property
    def settings(self) -> Settings:
        """``Settings`` from this runtime's environment (what the handlers see at cold start)."""
        if self._settings is None:
            env = dict(os.environ)
            for k, v in self.env().items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
            self._settings = Settings.from_env(env)
        return self._settings

    # --- data and credentials ---------------------------------------------------------------

    def store_app_credentials(self, provider: str, creds: Mapping[str, Any]) -> None:
        self.apply_env()
        store_app_credentials(self.settings, provider, creds)

    def store_sandbox_credentials(self) -> None:
        """The sandboxes' default apps become the stage's app credentials (with their webhook secrets)."""
        if self.clover is not None:
            self.store_app_credentials("clover", self.clover.app_credentials)
        if self.poynt is not None:
            self.store_app_credentials("poynt", self.poynt.app_credentials)

    def describe(self) -> dict[str, Any]:
        self.apply_env()
        return describe_local(self.settings)

    def reset_data(self) -> None:
        """Empty the stage's tables, queues, bucket and connection secrets (configuration stays)."""
        self.apply_env()
        clear_data(self.settings)

    # --- running functions ------------------------------------------------------------------

    def invoke(self, function_name: str, event: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        """Invoke a function the way Lambda would (exceptions propagate)."""
        return self.functions.invoke(function_name, event, timeout_s=timeout_s)

    def tick(self, *, at: datetime | None = None, **drain_options: Any) -> TickReport:
        """Fire the schedule once and drain the sync queue (see ``posync_local.local_tick``)."""
        self.apply_env()
        drain_options.setdefault("idle_checks", 3 if self.external_aws else 1)
        return tick(self.settings, self.functions.invoke, at=at, **drain_options)

    def drain(self, **drain_options: Any) -> TickReport:
        """Drain the sync queue into the worker until it is idle."""
        self.apply_env()
        # LocalStack's and AWS's queue counters are approximate: idle must be seen more than once.
        drain_options.setdefault("idle_checks", 3 if self.external_aws else 1)
        return drain(self.settings, self.functions.invoke, **drain_options)

    # --- state file -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What ``posync local up`` writes for other processes: endpoints, never a secret."""
        public = {
            k: v
            for k, v in self.env().items()
            if v is not None and k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        }
        return {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "stage": self.stage,
            "api_url": self.api_url,
            "aws_endpoint": self.aws_endpoint,
            "external_aws": self.external_aws,
            "clover_url": str(self.clover.url) if self.clover is not None else None,
            "poynt_url": str(self.poynt.url) if self.poynt is not None else None,
            "connect_urls": {p: self.connect_url(p) for p in ("clover", "poynt")},
            "env": public,
        }

    def write_state(self, path: Path | None = None) -> Path:
        target = path or state_path()
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)
        return target


# --- reaching a running stack from another process ------------------------------------------


@dataclass(frozen=True)
class LocalState:
    path: Path
    data: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.data["stage"])

    @property
    def api_url(self) -> str:
        return str(self.data["api_url"])

    @property
    def env(self) -> dict[str, str | None]:
        """The running stack's environment, with moto's dummy credentials unless the AWS is external."""
        env: dict[str, str | None] = {str(k): str(v) for k, v in self.data.get("env", {}).items()}
        endpoint = self.data.get("aws_endpoint")
        if endpoint and not self.data.get("external_aws"):
            env.update(aws_env(str(endpoint), env.get("AWS_REGION") or "us-east-1"))
        return env


def state_path() -> Path:
    """``$POSYNC_LOCAL_STATE`` or ``./.posync-local.json``."""
    return Path(os.environ.get("POSYNC_LOCAL_STATE") or STATE_FILE_NAME)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_state(path: Path | None = None) -> LocalState | None:
    """The state file of a running ``posync local up``, or None (absent, unreadable or its process gone)."""
    target = path or state_path()
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return None
    return LocalState(target, data)


def activate_local_stack(path: Path | None = None) -> LocalState | None:
    """If ``posync local up`` is running, point this process at it (env + boto3 clients) and say so.

    CLI commands call this first; without a running stack they use the ambient AWS configuration.
    """
    state = load_state(path)
    if state is not None:
        apply_env(state.env)
    return state
