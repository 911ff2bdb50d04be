"""Synthesize the CDK app once per session, in-process, offline, and share the result.

The dependency layer is built (or reused by its input hash) first; the synth runs with
cdk-nag's AwsSolutions checks on, so a session that gets a template at all has zero
unacknowledged findings (cdk-nag 3 fails the synth on any).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template

from infra.app import build_app
from infra.layer_build import build_dependency_layer
from tests.infra.support import Synth


@pytest.fixture(scope="session")
def deps_layer_dir() -> Path:
    return build_dependency_layer().path


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, deps_layer_dir: Path) -> Iterator[Synth]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    built = build_app(outdir=str(outdir), deps_layer_dir=deps_layer_dir)
    assembly = built.app.synth()
    artifact = assembly.get_stack_artifact(built.stack.artifact_id)
    template_path = Path(artifact.template_full_path)
    template: dict[str, Any] = json.loads(template_path.read_text())
    yield Synth(
        outdir=outdir,
        template_path=template_path,
        template=template,
        assertions=Template.from_json(template),
        stack=built.stack,
    )
