"""The pinned CDK CLI synthesizes the app offline, with no AWS credentials anywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from infra.describe import expected_resources, template_resources
from posync.resources import resources

ROOT = Path(__file__).resolve().parents[2]
CDK = ROOT / "node_modules" / ".bin" / "cdk"


def credential_free_env(home: Path) -> dict[str, str]:
    """The current environment without any AWS_* variable, with a HOME that holds no AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "no-such-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-such-credentials"),
        # Never let the SDK fall back to the instance metadata endpoint while looking for credentials.
        AWS_EC2_METADATA_DISABLED="true",
        JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION="1",
        CDK_DISABLE_VERSION_CHECK="1",
        CDK_DISABLE_CLI_TELEMETRY="true",
    )
    return env


@pytest.mark.slow
@pytest.mark.skipif(not CDK.exists(), reason="the pinned CDK CLI is not installed (run `make install`)")
def test_pinned_cli_synthesizes_without_credentials(tmp_path: Path) -> None:
    # Given no AWS credentials, profile or config at all
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "cdk.out"
    # When the pinned CLI synthesizes the app from the repo root (cdk.json)
    proc = subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "--no-lookups", "-o", str(out)],
        cwd=ROOT,
        env=credential_free_env(home),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # Then it exits 0 and writes the stack's template
    assert proc.returncode == 0, proc.stderr[-4000:]
    template = json.loads((out / "posync-dev.template.json").read_text())
    assert template_resources(template) == expected_resources(resources("dev"))
    manifest = json.loads((out / "manifest.json").read_text())
    stack = manifest["artifacts"]["posync-dev"]
    assert stack["environment"] == "aws://unknown-account/unknown-region"
