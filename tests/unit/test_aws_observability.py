"""Cold-start behaviour: boto3 clients are built on first use; the X-Ray SDK only when asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from posync import aws
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
