"""One factory for every Lambda in ``posync.resources.FUNCTIONS``.

Each function: Python 3.12 on arm64, code = ``functions/<name>/`` only, handler
``handler.handler``, the two layers (the ``posync`` package and the third-party
dependencies), X-Ray tracing, its own log group, and its own role that starts with
nothing but writing to that log group (``infra.constructs.access`` adds the rest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.nag import acknowledge
from posync.resources import FUNCTIONS, FunctionSpec

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = ROOT / "functions"
POSYNC_LAYER_DIR = ROOT / "layers" / "posync"
HANDLER = "handler.handler"
RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
ASSET_EXCLUDES = ["**/__pycache__", "**/*.pyc", "**/.mypy_cache", "**/.pytest_cache"]

RETENTION: dict[int, logs.RetentionDays] = {
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}

# Tracing needs these two X-Ray actions, which support no resource-level scoping: AWS requires "*".
XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")


def logical_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def function_name(stage: str, name: str) -> str:
    return f"posync-{stage}-{name}"


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        stage: str,
        environment: Mapping[str, str],
        deps_layer_dir: Path,
        log_retention_days: int,
        specs: Sequence[FunctionSpec] = FUNCTIONS,
    ) -> None:
        super().__init__(scope, construct_id)
        compat = {"compatible_runtimes": [RUNTIME], "compatible_architectures": [ARCHITECTURE]}
        self.posync_layer = lambda_.LayerVersion(
            self,
            "PosyncLayer",
            description="posync package (domain and adapters)",
            code=lambda_.Code.from_asset(str(POSYNC_LAYER_DIR), exclude=ASSET_EXCLUDES),
            **compat,  # type: ignore[arg-type]
        )
        self.deps_layer = lambda_.LayerVersion(
            self,
            "DependenciesLayer",
            description="Third-party dependencies (manylinux2014_aarch64, cp312; boto3 from the runtime)",
            code=lambda_.Code.from_asset(str(deps_layer_dir)),
            **compat,  # type: ignore[arg-type]
        )
        self.layers: list[lambda_.ILayerVersion] = [self.posync_layer, self.deps_layer]
        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        for spec in specs:
            self._make(spec, stage, {**environment, **dict(spec.process_env)}, RETENTION[log_retention_days])

    def _make(
        self, spec: FunctionSpec, stage: str, environment: dict[str, str], retention: logs.RetentionDays
    ) -> None:
        code_dir = FUNCTIONS_DIR / spec.name
        if not (code_dir / "handler.py").is_file():
            raise FileNotFoundError(f"{code_dir}/handler.py is missing (FUNCTIONS lists {spec.name!r})")
        lid = logical_name(spec.name)
        name = function_name(stage, spec.name)
        role = iam.Role(
            self,
            f"{lid}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"posync {stage} {spec.name}: only what this function needs",
        )
        log_group = logs.LogGroup(
            self,
            f"{lid}Logs",
            log_group_name=f"/aws/lambda/{name}",
            retention=retention,
            removal_policy=RemovalPolicy.DESTROY,
        )
        log_group.grant_write(role)
        fn = lambda_.Function(
            self,
            lid,
            function_name=name,
            description=spec.description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=HANDLER,
            code=lambda_.Code.from_asset(str(code_dir), exclude=ASSET_EXCLUDES),
            layers=self.layers,
            timeout=Duration.seconds(spec.timeout_s),
            memory_size=spec.memory_mb,
            environment=environment,
            role=role,
            log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE,
        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) support no resource-level "
            "permissions; AWS requires Resource '*' for them. Nothing else in this role uses '*'.",
        )
        acknowledge(
            fn,
            "AwsSolutions-L1",
            "Pinned to python3.12 on purpose: the dependency layer holds cp312 arm64 wheels, so a newer "
            "runtime needs a rebuilt layer; moving runtimes is a deliberate upgrade, not a drift.",
        )
        self.functions[spec.name] = fn
        self.roles[spec.name] = role
        self.log_groups[spec.name] = log_group
