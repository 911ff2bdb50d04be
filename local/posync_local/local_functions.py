"""Running the Lambda handlers in-process: loading ``functions/<name>/handler.py`` and a Lambda context.

Each handler module is loaded once per :class:`FunctionHost`, by file path, under a
module name unique to that host, so two local runtimes in one process each get
their own "container" (and their own cold-start settings). A handler folder holds
one ``handler.py`` that imports only ``posync`` and third-party packages (what the
two Lambda layers provide).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from posync.resources import FUNCTIONS, FunctionSpec

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

_host_ids = itertools.count(1)


def default_functions_dir() -> Path:
    """``functions/`` at the repository root (``POSYNC_FUNCTIONS_DIR`` overrides)."""
    override = os.environ.get("POSYNC_FUNCTIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "functions"


class FunctionNotFound(LookupError):
    """No such function in ``posync.resources.FUNCTIONS``, or its handler.py does not exist (yet)."""


@dataclass
class LocalLambdaContext:
    """What Lambda passes as ``context``: the attributes Powertools and the handlers read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_s: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self._deadline:
            self._deadline = time.monotonic() + self.timeout_s
        if not self.log_group_name:
            self.log_group_name = f"/aws/lambda/{self.function_name}"
        if not self.log_stream_name:
            self.log_stream_name = f"local/[$LATEST]{uuid.uuid4().hex}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_spec(name: str) -> FunctionSpec:
    for spec in FUNCTIONS:
        if spec.name == name:
            return spec
    raise FunctionNotFound(f"no function {name!r} in posync.resources.FUNCTIONS")


class FunctionHost:
    """Loads each function's handler once and invokes it the way Lambda would.

    ``overrides`` maps a function name to a callable used instead of its handler.py
    (tests of the local machinery itself use this; everything else runs the real code).
    """

    def __init__(
        self,
        functions_dir: Path | None = None,
        *,
        stage: str = "dev",
        account_id: str = "000000000000",
        region: str = "us-east-1",
        overrides: Mapping[str, Handler] | None = None,
    ) -> None:
        self.functions_dir = functions_dir or default_functions_dir()
        self.stage = stage
        self.account_id = account_id
        self.region = region
        self._id = next(_host_ids)
        self._overrides: dict[str, Handler] = dict(overrides or {})
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def override(self, name: str, handler: Handler | None) -> None:
        """Use ``handler`` for ``name`` from now on (``None``: back to the real handler.py)."""
        function_spec(name)
        with self._lock:
            if handler is None:
                self._overrides.pop(name, None)
            else:
                self._overrides[name] = handler

    def handler_path(self, name: str) -> Path:
        return self.functions_dir / name / "handler.py"

    def available(self, name: str) -> bool:
        return name in self._overrides or self.handler_path(name).is_file()

    def preload(self, names: list[str] | None = None) -> dict[str, str]:
        """Import the handlers now (their cold start). Returns ``{name: error}`` for those that failed."""
        errors: dict[str, str] = {}
        for spec in FUNCTIONS:
            if names is not None and spec.name not in names:
                continue
            if not self.handler_path(spec.name).is_file() or spec.name in self._overrides:
                continue
            try:
                self.handler(spec.name)
            except Exception as exc:
                log.exception("loading function %s failed", spec.name)
                errors[spec.name] = type(exc).__name__
        return errors

    def handler(self, name: str) -> Handler:
        function_spec(name)
        with self._lock:
            override = self._overrides.get(name)
            if override is not None:
                return override
            loaded = self._handlers.get(name)
            if loaded is not None:
                return loaded
            path = self.handler_path(name)
            if not path.is_file():
                raise FunctionNotFound(f"function {name!r} has no handler at {path}")
            module = self._load(name, path)
            fn = getattr(module, "handler", None)
            if not callable(fn):
                raise FunctionNotFound(f"{path} defines no handler(event, context)")
            handler: Handler = fn
            self._handlers[name] = handler
            return handler

    def _load(self, name: str, path: Path) -> ModuleType:
        module_name = f"_posync_function_{self._id}_{name}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise FunctionNotFound(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module

    def context(
        self, name: str, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> LocalLambdaContext:
        spec = function_spec(name)
        function_name = f"posync-{self.stage}-{name}"
        return LocalLambdaContext(
            function_name=function_name,
            memory_limit_in_mb=spec.memory_mb,
            invoked_function_arn=f"arn:aws:lambda:{self.region}:{self.account_id}:function:{function_name}",
            aws_request_id=request_id or str(uuid.uuid4()),
            timeout_s=spec.timeout_s if timeout_s is None else timeout_s,
        )

    def invoke(
        self,
        name: str,
        event: dict[str, Any],
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Call the function's handler with ``event`` and a fresh context; exceptions propagate."""
        fn = self.handler(name)
        ctx = self.context(name, timeout_s=timeout_s, request_id=request_id)
        started = time.monotonic()
        try:
            return fn(event, ctx)
        finally:
            elapsed = time.monotonic() - started
            if elapsed > ctx.timeout_s:
                log.warning("function %s ran %.1f s, over its %s s timeout", name, elapsed, ctx.timeout_s)
