"""Cold-start behaviour: boto3 clients are built on first use; the X-Ray SDK only when asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from posync import aws
from posync.gcpolicy import SYNC_THRESHOLD0
from posync.observability import trace_calls_enabled

LAYER = Path(__file__).resolve().parents[2] / "layers" / "posync" / "python"


def test_a_client_is_built_on_first_use_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a fresh container (no session, no clients) whose client builds are counted
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    aws.reset_clients()
    built: list[str] = []
    real: Any = boto3.session.Session.client

    def counting(self: object, service: str, **kwargs: object) -> object:
        built.append(service)
        return real(self, service, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counting)
    try:
        # When a module asks for the client, nothing is built yet
        sqs = aws.client("sqs")
        assert built == []
        assert aws.client("sqs") is sqs
        # Then the first attribute read builds it, once, and it is a real client
        assert sqs.meta.service_model.service_name == "sqs"
        assert sqs.exceptions.QueueDoesNotExist is not None
        assert built == ["sqs"]
        assert "built" in repr(sqs)
    finally:
        aws.reset_clients()


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("false", False), ("1", True), ("TRUE", True)]
)
def test_trace_calls_flag(value: str, expected: bool) -> None:
    assert trace_calls_enabled({"POSYNC_TRACE_CALLS": value}) is expected


def test_trace_calls_flag_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="POSYNC_TRACE_CALLS"):
        trace_calls_enabled({"POSYNC_TRACE_CALLS": "maybe"})


def _imports_xray(env_extra: dict[str, str]) -> bool:
    code = "import sys, posync.observability; print('aws_xray_sdk' in sys.modules)"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(LAYER), "LAMBDA_TASK_ROOT": "/tmp", **env_extra}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_the_xray_sdk_loads_only_when_call_tracing_is_on() -> None:
    # Given a Lambda-like environment, the SDK (and its botocore/requests patching) stays out by default
    assert _imports_xray({}) is False
    # When the stack opts in, the Tracer patches
    assert _imports_xray({"POSYNC_TRACE_CALLS": "true", "AWS_DEFAULT_REGION": "us-east-1"}) is True


_LOADED = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
modules = sorted(m for m in sys.modules if "." not in m)
aws = sys.modules.get("posync.aws")
built = [s for s, c in aws._clients.items() if c._built is not None] if aws else []
print(json.dumps({"modules": modules, "built": built}))
"""


def _import_in_lambda_env(handler: str, probe: str) -> dict[str, Any]:
    """Run ``probe`` (which imports the handler given as argv[1]) in a Lambda-like fresh interpreter."""
    root = LAYER.parents[2]
    env = {  # as the cold-start benchmark sets it; port 9 refuses at once
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(LAYER),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LAMBDA_TASK_ROOT": str(root),
        "AWS_LAMBDA_FUNCTION_NAME": f"posync-test-{handler}",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's documented dummy, not a secret
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "POSYNC_STAGE": "test",
        "POSYNC_SYNC_QUEUE_URL": "http://127.0.0.1:9/000000000000/posync-test-sync.fifo",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe, str(root / "functions" / handler / "handler.py")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("handler", "absent"),
    [
        ("health", {"boto3", "requests", "jwt", "cryptography", "aws_xray_sdk"}),
        ("connect", {"requests", "jwt", "cryptography", "aws_xray_sdk"}),
        ("webhooks", {"requests", "jwt", "cryptography", "aws_xray_sdk"}),
        ("dispatcher", {"requests", "jwt", "cryptography", "aws_xray_sdk"}),
        ("callback", {"jwt", "cryptography", "aws_xray_sdk"}),
        ("worker", {"requests", "jwt", "cryptography", "aws_xray_sdk"}),
    ],
)
def test_a_handler_import_loads_only_what_every_invocation_needs(handler: str, absent: set[str]) -> None:
    # Given a Lambda-like environment, When the handler module is imported in a fresh interpreter
    loaded = _import_in_lambda_env(handler, _LOADED)
    # Then no provider-specific or optional library is loaded, and no AWS client is built yet
    assert absent.isdisjoint(loaded["modules"]), absent & set(loaded["modules"])
    assert loaded["built"] == []


_COLLECTIONS = """
import gc, importlib.util, json, sys
started = []
gc.callbacks.append(lambda phase, info: started.append(info["generation"]) if phase == "start" else None)
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({"collections": len(started), "threshold0": gc.get_threshold()[0]}))
"""


def test_the_worker_applies_its_gc_policy_before_its_imports() -> None:
    # When the worker's module is imported in a fresh interpreter (CPython's default thresholds)
    out = _import_in_lambda_env("worker", _COLLECTIONS)
    # Then its policy is in force, and was before boto3, Powertools and posync were imported:
    # at most a collection or two ran (about a hundred, each walking what was imported so far,
    # when the policy came after the imports)
    assert out["threshold0"] == SYNC_THRESHOLD0
    assert out["collections"] <= 3, out
