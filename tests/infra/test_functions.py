"""Every function in posync.resources.FUNCTIONS: runtime, architecture, layers, code, settings, role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.constructs import functions as fn_construct
from posync.config import Settings
from posync.resources import FUNCTIONS, WORKER_TIMEOUT_S, resources
from tests.infra.support import Synth

IGNORED = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def files_under(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not IGNORED.intersection(p.parts) and p.suffix != ".pyc"
    }


def functions_by_name(synth: Synth) -> dict[str, dict[str, Any]]:
    stage = synth.stack.ctx.stage
    out = {}
    for props in synth.props("AWS::Lambda::Function"):
        name = props["FunctionName"].removeprefix(f"posync-{stage}-")
        out[name] = props
    return out


def layer_refs(synth: Synth) -> dict[str, str]:
    """Logical id of each layer -> its asset directory."""
    return {
        lid: str(synth.asset_dir(r["Properties"]["Content"]["S3Key"]))
        for lid, r in synth.resources("AWS::Lambda::LayerVersion").items()
    }


def test_exactly_the_functions_of_posync_resources(synth: Synth) -> None:
    # When the stack is synthesized
    fns = functions_by_name(synth)
    # Then it has one Lambda per FunctionSpec, named posync-{stage}-{name}, and no other
    assert sorted(fns) == sorted(f.name for f in FUNCTIONS)


@pytest.mark.parametrize("spec", FUNCTIONS, ids=lambda s: s.name)
def test_function_runtime_architecture_handler_limits(synth: Synth, spec: Any) -> None:
    props = functions_by_name(synth)[spec.name]
    assert props["Runtime"] == "python3.12"
    assert props["Architectures"] == ["arm64"]
    assert props["Handler"] == "handler.handler"
    assert props["Timeout"] == spec.timeout_s
    assert props["MemorySize"] == spec.memory_mb
    assert props["TracingConfig"] == {"Mode": "Active"}


def test_every_function_has_both_layers(synth: Synth) -> None:
    # Given the two layer versions and what their assets contain
    layers = layer_refs(synth)
    assert len(layers) == 2
    by_content = {}
    for lid, path in layers.items():
        top = {p.name for p in (Path(path) / "python").iterdir()}
        by_content["posync" if "posync" in top else "deps"] = lid
    # Then every function references both, and nothing else
    for name, props in functions_by_name(synth).items():
        refs = {ref["Ref"] for ref in props["Layers"]}
        assert refs == {by_content["posync"], by_content["deps"]}, name


def test_layers_target_python312_arm64(synth: Synth) -> None:
    for props in synth.props("AWS::Lambda::LayerVersion"):
        assert props["CompatibleRuntimes"] == ["python3.12"]
        assert props["CompatibleArchitectures"] == ["arm64"]


def test_posync_layer_is_the_package_and_nothing_else(synth: Synth) -> None:
    # Given the posync layer's staged asset
    (path,) = [Path(p) for p in layer_refs(synth).values() if (Path(p) / "python" / "posync").is_dir()]
    # Then it holds exactly layers/posync (the package under python/), without caches
    assert files_under(path) == files_under(fn_construct.POSYNC_LAYER_DIR)
    assert "python/posync/__init__.py" in files_under(path)
    assert not any(part == "posync_local" for f in files_under(path) for part in Path(f).parts)


def test_deps_layer_is_the_built_directory(synth: Synth, deps_layer_dir: Path) -> None:
    (path,) = [Path(p) for p in layer_refs(synth).values() if not (Path(p) / "python" / "posync").is_dir()]
    assert files_under(path) == files_under(deps_layer_dir)
    assert (path / "python" / "aws_lambda_powertools").is_dir()
    assert not (path / "python" / "boto3").exists()


@pytest.mark.parametrize("spec", FUNCTIONS, ids=lambda s: s.name)
def test_code_asset_is_the_function_folder_only(synth: Synth, spec: Any) -> None:
    # Given the function's staged code asset
    props = functions_by_name(synth)[spec.name]
    staged = synth.asset_dir(props["Code"]["S3Key"])
    # Then it is exactly functions/<name>/ (handler.py at the top), no other function, no package
    expected = files_under(fn_construct.FUNCTIONS_DIR / spec.name)
    assert files_under(staged) == expected
    assert "handler.py" in expected


def test_environment_matches_what_settings_read(synth: Synth) -> None:
    expected = {
        "POSYNC_STAGE",
        "POSYNC_ACCOUNT_ID",
        "POSYNC_EXPORT_BUCKET",
        "POSYNC_SYNC_QUEUE_URL",
        "POSYNC_PUBLIC_BASE_URL",
        "POSYNC_PROVIDER_REGION",
        "POSYNC_SCHEDULE_MINUTES",
        "POSYNC_RECONCILE_DAYS",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
    }
    (bucket_lid,) = [
        lid for lid, r in synth.resources("AWS::S3::Bucket").items() if "BucketName" in r["Properties"]
    ]
    specs = {f.name: f for f in FUNCTIONS}
    for name, props in functions_by_name(synth).items():
        env = props["Environment"]["Variables"]
        own = dict(specs[name].process_env)  # the worker's allocator settings
        assert set(env) == expected | set(own), name
        assert {k: env[k] for k in own} == own
        assert env["POSYNC_STAGE"] == synth.stack.ctx.stage
        assert env["POSYNC_ACCOUNT_ID"] == {"Ref": "AWS::AccountId"}
        assert env["POSYNC_PROVIDER_REGION"] == "sandbox"
        assert env["POSYNC_SCHEDULE_MINUTES"] == "15"
        assert env["POSYNC_RECONCILE_DAYS"] == "7"
        assert env["POWERTOOLS_SERVICE_NAME"] == "posync"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "posync"
        assert env["POSYNC_PUBLIC_BASE_URL"]["Fn::GetAtt"][1] == "ApiEndpoint"
        assert env["POSYNC_EXPORT_BUCKET"] == {"Ref": bucket_lid}
        queue = synth.resources("AWS::SQS::Queue")[env["POSYNC_SYNC_QUEUE_URL"]["Ref"]]
        assert queue["Properties"]["QueueName"] == f"posync-{synth.stack.ctx.stage}-sync.fifo"


def test_only_the_worker_tunes_its_allocator(synth: Synth) -> None:
    fns = functions_by_name(synth)
    assert fns["worker"]["Environment"]["Variables"]["MALLOC_ARENA_MAX"] == "2"
    assert fns["worker"]["Environment"]["Variables"]["MALLOC_MMAP_THRESHOLD_"] == "131072"
    assert all(
        "MALLOC_ARENA_MAX" not in p["Environment"]["Variables"] for n, p in fns.items() if n != "worker"
    )


def test_settings_accept_the_environment_the_stack_sets(synth: Synth) -> None:
    # Given the environment of a function with its tokens replaced by deployed-looking values
    props = functions_by_name(synth)["worker"]
    concrete = {
        k: v if isinstance(v, str) else f"https://{k.lower()}.example.com"
        for k, v in props["Environment"]["Variables"].items()
    }
    concrete["POSYNC_ACCOUNT_ID"] = "123456789012"
    concrete["POSYNC_EXPORT_BUCKET"] = "posync-dev-exports-123456789012-eu-west-1"
    concrete["AWS_REGION"] = "eu-west-1"
    # When the functions' settings load it at cold start
    settings = Settings.from_env(concrete)
    # Then they agree with posync.resources for that account and region
    res = resources("dev", account="123456789012", region="eu-west-1")
    assert settings.bucket == res.bucket
    assert settings.connections_table == res.table("connections").name
    assert settings.schedule_minutes == 15
    assert settings.sync_queue_url == "https://posync_sync_queue_url.example.com"


def test_one_role_per_function_trusted_by_lambda_only(synth: Synth) -> None:
    roles = synth.resources("AWS::IAM::Role")
    used = [props["Role"]["Fn::GetAtt"][0] for props in functions_by_name(synth).values()]
    # Each function has its own role...
    assert len(set(used)) == len(FUNCTIONS)
    for lid in used:
        role = roles[lid]["Properties"]
        # ...that only Lambda can assume, with no managed policies
        (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert statement["Action"] == "sts:AssumeRole"
        assert "ManagedPolicyArns" not in role


def test_each_function_logs_to_its_own_retained_log_group(synth: Synth) -> None:
    groups = synth.resources("AWS::Logs::LogGroup")
    for name, props in functions_by_name(synth).items():
        lid = props["LoggingConfig"]["LogGroup"]["Ref"]
        group = groups[lid]["Properties"]
        assert group["LogGroupName"] == f"/aws/lambda/posync-{synth.stack.ctx.stage}-{name}"
        assert group["RetentionInDays"] == 30


def test_worker_timeout_fits_the_queue_visibility(synth: Synth) -> None:
    # SQS wants the visibility timeout at least six times the consumer's timeout.
    props = functions_by_name(synth)["worker"]
    assert props["Timeout"] == WORKER_TIMEOUT_S
    sync = next(q for q in synth.props("AWS::SQS::Queue") if "RedrivePolicy" in q)
    assert sync["VisibilityTimeout"] >= 6 * props["Timeout"]
