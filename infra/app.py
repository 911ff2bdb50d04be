"""CDK entry point: ``cdk synth`` runs ``python -m infra.app`` (see cdk.json).

Offline by construction: no lookups, no credentials, an environment-agnostic stack.
The stage and the other knobs come from context (``-c stage=prod``; defaults in cdk.json).
The dependency layer is built (or reused, by input hash) before the stack is defined.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import App

from infra.context import InfraContext
from infra.layer_build import build_dependency_layer
from infra.nag import apply_checks
from infra.stack import PosyncStack, stack_name

ROOT = Path(__file__).resolve().parents[1]
CDK_JSON = ROOT / "cdk.json"


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """The ``context`` block of cdk.json (the CLI passes it itself; in-process callers use this)."""
    data: dict[str, Any] = json.loads(path.read_text())
    return dict(data.get("context", {}))


@dataclass(frozen=True)
class Built:
    app: App
    stack: PosyncStack


def define(app: App, deps_layer_dir: Path | None = None) -> Built:
    """Define the posync stack in ``app`` (with cdk-nag's AwsSolutions checks on the whole app)."""
    ctx = InfraContext.from_node(app.node)
    layer_dir = deps_layer_dir if deps_layer_dir is not None else build_dependency_layer().path
    stack = PosyncStack(app, stack_name(ctx.stage), ctx=ctx, deps_layer_dir=layer_dir)
    apply_checks(app)
    return Built(app=app, stack=stack)


def build_app(
    context: Mapping[str, Any] | None = None,
    outdir: str | None = None,
    deps_layer_dir: Path | None = None,
) -> Built:
    """An app for in-process use (tests): cdk.json's context, then ``context`` on top."""
    app = App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    return define(app, deps_layer_dir)


def main() -> None:
    # The CLI provides cdk.json's context, -c overrides and the output directory, and its context
    # wins over the defaults given here; the defaults make `python -m infra.app` work alone too.
    define(App(context=cdk_json_context())).app.synth()


if __name__ == "__main__":
    main()
