"""The shared result of the session's synth (see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Template

from infra.stack import PosyncStack


@dataclass(frozen=True)
class Synth:
    outdir: Path
    template_path: Path
    template: dict[str, Any]
    assertions: Template
    stack: PosyncStack

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {lid: r for lid, r in self.template["Resources"].items() if r["Type"] == kind}

    def props(self, kind: str) -> list[dict[str, Any]]:
        return [r.get("Properties", {}) for r in self.resources(kind).values()]

    def asset_dir(self, s3_key: str) -> Path:
        """The staged asset directory behind a ``Code``/``Content`` ``S3Key`` (``<hash>.zip``)."""
        return self.outdir / f"asset.{s3_key.removesuffix('.zip')}"
