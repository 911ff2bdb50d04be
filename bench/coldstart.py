"""Scenario 5: cold start, i.e. each handler module's import time in a fresh interpreter.

Every measurement is a new ``python`` process that loads one ``functions/<name>/handler.py``
by file path (as Lambda's bootstrap and ``posync_local.local_functions`` do) and reports
the wall and CPU time of that import, module body included (settings, services, clients).
The baseline is a bare handler importing only ``boto3`` and ``aws_lambda_powertools``.
A second reference, ``worker_libraries``, imports what the worker cannot do without as
well (Powertools' batch utility; its provider HTTP is urllib3, which boto3 already loads):
the worker's figure minus it is posync's own code (its modules and the handler's module
body: settings, clients, the service).

The environment looks like Lambda's: ``LAMBDA_TASK_ROOT`` and ``AWS_LAMBDA_FUNCTION_NAME``
set (Powertools and the X-Ray SDK behave as on Lambda; ``POSYNC_TRACE_CALLS`` unset, the
stack's default, so the SDK is not loaded), dummy credentials, a region, and an ``AWS_ENDPOINT_URL`` on
a closed local port so any AWS call made at import fails at once instead of waiting.

Bytecode: the main figures use compiled bytecode (kept under a private
``PYTHONPYCACHEPREFIX``, warmed by one discarded run per module; the repository and the
venv are not written to). The ``no_bytecode`` figures compile everything on every import,
which is what a layer shipped without ``.pyc`` files costs on Lambda (its /opt is
read-only: nothing is cached between cold starts).

Runs are interleaved (one of each module per round, in a shuffled order) so that the
machine's load drifts over all modules alike; the figure is the median per module.
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import load
from bench.sandboxproc import ROOT

TARGET = 1.3
HANDLERS = ("health", "connect", "callback", "webhooks", "dispatcher", "worker")
BARE = "bare"
BARE_SOURCE = '''"""A bare handler: boto3 and Powertools, nothing else."""

import boto3  # noqa: F401
import aws_lambda_powertools  # noqa: F401


def handler(event, context):
    return {}
'''
# The library the worker cannot do without beyond the bare handler's: the brief's Powertools
# batch utility (partial batch failures). Not a handler: a reference that shows how much of
# the worker's figure is that library and how much is posync's own code.
FLOOR = "worker_libraries"
FLOOR_SOURCE = '''"""The worker's required libraries: boto3, Powertools and its batch utility."""

import boto3  # noqa: F401
import aws_lambda_powertools  # noqa: F401
from aws_lambda_powertools.utilities.batch import BatchProcessor  # noqa: F401


def handler(event, context):
    return {}
'''
_PROBE = """
import importlib.util, json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["handler"] = module
spec.loader.exec_module(module)
ok = callable(getattr(module, "handler", None))
print(json.dumps({"wall_ms": (time.perf_counter() - t0) * 1000, "cpu_ms": (time.process_time() - c0) * 1000,
                  "handler": ok}))
"""


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now: connections are refused at once


def lambda_env(name: str, task_root: str, pycache: str | None) -> dict[str, str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POSYNC_", "POWERTOOLS_", "PYTHON"))
    }
    env = {
        **base,
        "LAMBDA_TASK_ROOT": task_root,
        "AWS_LAMBDA_FUNCTION_NAME": f"posync-bench-{name}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's documented dummy, not a secret
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
        "POSYNC_STAGE": "bench",
        "POSYNC_SYNC_QUEUE_URL": "http://127.0.0.1/000000000000/posync-bench-sync.fifo",
        "POWERTOOLS_SERVICE_NAME": "posync",
        "POWERTOOLS_METRICS_NAMESPACE": "posync",
        "PYTHONPATH": str(ROOT / "layers" / "posync" / "python"),
    }
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="posync-bench-nopyc-")  # empty: nothing cached
    else:
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def measure(path: Path, env: Mapping[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)],
        capture_output=True,
        text=True,
        cwd=env["LAMBDA_TASK_ROOT"],
        env=dict(env),
        timeout=120,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"importing {path} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    if not out.get("handler"):
        raise RuntimeError(f"{path} defines no handler")
    return {"wall_ms": float(out["wall_ms"]), "cpu_ms": float(out["cpu_ms"])}


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 1)


def run_modes(
    paths: Mapping[str, Path], runs: int, *, bytecode: bool, workdir: str, rng: random.Random
) -> dict[str, dict[str, Any]]:
    pycache = str(Path(workdir) / "pycache") if bytecode else None
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    if bytecode:
        for name, path in paths.items():  # warm the bytecode cache; not measured
            measure(path, lambda_env(name, workdir, pycache))
    for _ in range(runs):
        order = list(paths)
        rng.shuffle(order)
        for name in order:
            samples[name].append(measure(paths[name], lambda_env(name, workdir, pycache)))
    return {
        name: {
            "wall_ms": _median([s["wall_ms"] for s in got]),
            "cpu_ms": _median([s["cpu_ms"] for s in got]),
            "runs": len(got),
            "wall_ms_all": [round(s["wall_ms"], 1) for s in got],
        }
        for name, got in samples.items()
    }


def _ratios(medians: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    bare = medians[BARE]
    out: dict[str, dict[str, Any]] = {}
    for name, m in medians.items():
        if name in (BARE, FLOOR):
            continue
        wall = m["wall_ms"] / max(1e-9, bare["wall_ms"])
        cpu = m["cpu_ms"] / max(1e-9, bare["cpu_ms"])
        out[name] = {
            "wall_ms": m["wall_ms"],
            "cpu_ms": m["cpu_ms"],
            "ratio_wall": round(wall, 3),
            "ratio_cpu": round(cpu, 3),
            "target": TARGET,
            "pass": wall <= TARGET,
        }
    return out


def _floor(medians: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The worker's required libraries against the bare handler, and the worker against them."""
    bare, floor, worker = medians[BARE]["wall_ms"], medians[FLOOR]["wall_ms"], medians["worker"]["wall_ms"]
    return {
        "wall_ms": floor,
        "ratio_to_bare": round(floor / max(1e-9, bare), 3),
        "worker_ratio_to_libraries": round(worker / max(1e-9, floor), 3),
        "posync_ms": round(worker - floor, 1),  # posync's modules and the handler's module body
    }


def scenario(
    *, runs: int, no_bytecode_runs: int, handlers: Sequence[str] = HANDLERS, seed: int = 7
) -> dict[str, Any]:
    rng = random.Random(seed)
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="posync-bench-coldstart-") as workdir:
        bare = Path(workdir) / "bare_handler.py"
        bare.write_text(BARE_SOURCE, encoding="utf-8")
        floor = Path(workdir) / "worker_libraries.py"
        floor.write_text(FLOOR_SOURCE, encoding="utf-8")
        paths = {BARE: bare, **{h: ROOT / "functions" / h / "handler.py" for h in handlers}}
        if "worker" in handlers:
            paths[FLOOR] = floor
        compiled = run_modes(paths, runs, bytecode=True, workdir=workdir, rng=rng)
        out: dict[str, Any] = {
            "environment": "Lambda-like (LAMBDA_TASK_ROOT set; POSYNC_TRACE_CALLS unset, the stack default)",
            "runs_per_module": runs,
            "bare": compiled[BARE],
            "handlers": _ratios(compiled),
        }
        if FLOOR in compiled:
            out["worker_libraries"] = _floor(compiled)
        if no_bytecode_runs > 0:
            subset = {BARE: bare, **{h: paths[h] for h in ("worker",) if h in paths}}
            raw = run_modes(subset, no_bytecode_runs, bytecode=False, workdir=workdir, rng=rng)
            out["no_bytecode"] = {"bare": raw[BARE], "handlers": _ratios(raw)}
    out["pass"] = all(h["pass"] for h in out["handlers"].values())
    out["load_before"] = load_before
    out["load_after"] = load()
    return out
