"""Integration fixtures: the local runtime (embedded AWS + sandboxes + HTTP front) and isolation helpers.

- ``local_runtime`` (session): one :class:`LocalRuntime` on free ports, stage ``it``,
  with the Clover and Poynt sandboxes. Its environment (``AWS_ENDPOINT_URL``,
  ``POSYNC_*``) is applied before every integration test and put back when the
  suite leaves this folder, so unit tests never see it.
- ``clean_runtime`` (function): the session runtime with its tables, queues, bucket
  and connection secrets emptied first, and the sandboxes' knobs at their defaults.
- ``module_runtime`` (module): a runtime of its own stage (own tables, queues,
  bucket, front) sharing the session's AWS and sandboxes: no other module sees its data.
- ``rt`` (module): ``module_runtime`` with the provider sandboxes, the module skipped
  without them (a module may define an ``rt`` of its own); ``settings``: its settings.
- ``seen`` (module): the secrets a module's tests saw (codes, tokens), for its log scan.
- ``empty_sync_queue``: drops what is on ``rt``'s sync queue (the callbacks' backfills);
  modules that do not test the queue use it before every test
  (``pytestmark = pytest.mark.usefixtures("empty_sync_queue")``).
- ``captured_logs`` (session): every log record of the process since the session
  started, formatted as its own handler would (Powertools JSON included), for
  secret scanning: ``captured_logs.text``, ``captured_logs.mark()`` /
  ``captured_logs.since(mark)``, ``captured_logs.find(secrets)``.

Sandbox knobs changed by a test are reset after it. Set ``POSYNC_EXTERNAL_AWS=1``
with ``AWS_ENDPOINT_URL`` to run against LocalStack (``make test-localstack``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posync.config import Settings
from posync_local.local_aws import external_aws_requested
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import Secrets, queued_syncs

HERE = Path(__file__).resolve().parent
_module_stage_numbers = itertools.count(1)


def sandbox_available() -> bool:
    """The provider sandboxes (posync_local.sandbox) are importable."""
    try:
        return importlib.util.find_spec("posync_local.sandbox") is not None and hasattr(
            importlib.import_module("posync_local.sandbox"), "CloverSandbox"
        )
    except ImportError:
        return False


# --- log capture ------------------------------------------------------------------------------


_capture = LogCapture()


@pytest.fixture(scope="session")
def captured_logs() -> Iterator[LogCapture]:
    noisy = ("botocore", "boto3", "urllib3", "werkzeug", "s3transfer")
    levels = {name: logging.getLogger(name or None).level for name in ("", *noisy)}
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    _capture.attach()
    yield _capture
    _capture.detach()
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


# --- runtimes ---------------------------------------------------------------------------------


class _Current:
    """The runtime whose environment the integration tests run in (top of the stack)."""

    stack: list[LocalRuntime] = []
    knob_defaults: dict[int, dict[str, Any]] = {}


def _snapshot_knobs(rt: LocalRuntime) -> None:
    for sb in (rt.clover, rt.poynt):
        knobs = getattr(sb, "knobs", None)
        if sb is None or knobs is None or not dataclasses.is_dataclass(knobs):
            continue
        _Current.knob_defaults[id(sb)] = {
            f.name: getattr(knobs, f.name) for f in dataclasses.fields(knobs) if not f.name.startswith("_")
        }


def _reset_knobs(rt: LocalRuntime) -> None:
    for sb in (rt.clover, rt.poynt):
        defaults = _Current.knob_defaults.get(id(sb))
        if sb is None or defaults is None:
            continue
        for name, value in defaults.items():
            setattr(sb.knobs, name, value)
        clear = getattr(sb.knobs, "clear_failures", None)
        if callable(clear):
            clear()


def _stage(prefix: str) -> str:
    # Under an external AWS (LocalStack, an account) stages get a random suffix: reruns never collide.
    return f"{prefix}{secrets.token_hex(3)}" if external_aws_requested() else prefix


@pytest.fixture(scope="session")
def local_runtime(captured_logs: LogCapture) -> Iterator[LocalRuntime]:
    """The session's local stack: embedded AWS, sandboxes (when present), HTTP front on free ports."""
    rt = LocalRuntime(api_port=0, aws_port=0, sandbox=sandbox_available(), stage=_stage("it"))
    rt.start()
    captured_logs.attach()  # loggers the handlers created while loading
    _snapshot_knobs(rt)
    _Current.stack.append(rt)
    try:
        yield rt
    finally:
        _Current.stack.remove(rt)
        rt.stop()


@pytest.fixture(scope="module")
def module_runtime(local_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    """A stage of this module's own (fresh tables, queues, bucket, front), sharing AWS and sandboxes."""
    rt = local_runtime.derive(_stage(f"m{next(_module_stage_numbers)}x"))
    rt.start()
    _Current.stack.append(rt)
    try:
        yield rt
    finally:
        _Current.stack.remove(rt)
        rt.stop()
        local_runtime.apply_env()


@pytest.fixture
def clean_runtime(local_runtime: LocalRuntime) -> LocalRuntime:
    """The session runtime with empty tables, queues, bucket and no connection secrets."""
    local_runtime.reset_data()
    return local_runtime


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> LocalRuntime:
    """The module's runtime, with the provider sandboxes (the module is skipped without them)."""
    if module_runtime.clover is None:
        pytest.skip("the provider sandboxes are not available")
    return module_runtime


@pytest.fixture
def settings(module_runtime: LocalRuntime) -> Settings:
    return module_runtime.settings


@pytest.fixture(scope="module")
def seen() -> Secrets:
    return Secrets()


@pytest.fixture
def empty_sync_queue(rt: LocalRuntime) -> None:
    queued_syncs(rt.settings)


@pytest.fixture(autouse=True)
def _local_runtime_env() -> Iterator[None]:
    """Every integration test runs in the current runtime's environment; knobs reset after it."""
    rt = _Current.stack[-1] if _Current.stack else None
    if rt is not None:
        rt.apply_env()
        _capture.attach()
    yield
    for r in _Current.stack:
        _reset_knobs(r)


@pytest.hookimpl(trylast=True)  # after the fixtures' own teardown (which may re-apply an environment)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Leaving this folder: put the environment back so later suites (unit tests) never see it."""
    if nextitem is not None and HERE in Path(str(nextitem.path)).resolve().parents:
        return
    for rt in reversed(_Current.stack):
        rt.restore_env()
