"""Scenario 4: a worker's peak RSS at two sizes (it streams: nothing may grow with the orders).

Each size runs in a fresh interpreter (``python -m bench.memory <config>``): the real
``SyncService`` and ``SourceFactory`` read one merchant's backfill from the Clover
sandbox process, normalize it and hand it to ``StoreSink`` with the **real
``ExportWriter``** writing gzip parts, checkpoint records, the manifest and the event to
the **embedded AWS** (moto, running in the parent process, so its storage is not in the
child's RSS). Only the newest-wins DynamoDB upsert is replaced by a pass-through (every
order counts as changed): 100,000 conditional writes to moto would measure moto.

The child runs with the worker function's process environment from ``posync.resources``
(its glibc allocator settings), as deployed. It reports ``ru_maxrss`` (peak RSS) after its
imports and wiring (the baseline) and after the run, and the kernel's ``VmHWM`` as a
cross-check. It is started through a shell that forks it: ``ru_maxrss`` counts the RSS of
the process that called ``exec()``, so a child exec'd directly from the benchmark (moto's
data included) would inherit the benchmark's RSS as its peak. The parent then reads the
run's manifested exports back and checks
them against the sandbox's truth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import check, load
from bench.sandboxproc import ROOT, SandboxProcess

TARGET = 1.25


def worker_process_env() -> dict[str, str]:
    from posync.resources import FUNCTIONS

    (worker,) = [f for f in FUNCTIONS if f.name == "worker"]
    return dict(worker.process_env)


# --------------------------------------------------------------------------- the child


class PassThroughRepository:
    """``OrderSink`` without DynamoDB: every order of a page is new (all go to the exports)."""

    def __init__(self) -> None:
        self.orders = 0

    def write(
        self, conn_id: str, run_id: str, orders: Sequence[Mapping[str, Any]], *, ledger: Any = None
    ) -> list[Mapping[str, Any]]:
        self.orders += len(orders)
        return list(orders)


def _status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS`` now, ``VmHWM`` the peak), 0 if unreadable."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def child(config: Mapping[str, Any]) -> dict[str, Any]:
    """Run one backfill in this (fresh) process; return the figures as a dict."""
    os.environ.update({str(k): str(v) for k, v in config["env"].items()})
    import resource

    from bench.common import MemoryConnections, NullMetrics, StaticTokens, clover_limits, quiet_logs
    from posync.config import Settings
    from posync.domain import Connection
    from posync.exports import ExportWriter
    from posync.ratelimit import Deadline, LocalAppRate
    from posync.sync import SourceFactory, StoreSink, SyncConfig, SyncService
    from posync.syncqueue import SyncKind, SyncRequest

    quiet_logs()
    if config.get("worker_gc", True):
        from posync.gcpolicy import tune_for_sync

        tune_for_sync()  # as functions/worker/handler.py does at cold start
    merchant = str(config["merchant"])
    settings = Settings.from_env()
    limits = clover_limits()
    sync_config = SyncConfig(limits=limits, app_limit="local")
    factory = SourceFactory(
        settings,
        StaticTokens({merchant: str(config["token"])}),
        sync_config,
        app_rates={"clover": LocalAppRate(limits["clover"].app_rps)},
    )
    repository = PassThroughRepository()
    writers: list[ExportWriter] = []

    samples: list[tuple[int, int]] = []  # (orders written so far, peak RSS so far in kB)

    class SampledSink(StoreSink):
        def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
            n = super().write(orders)
            samples.append((repository.orders, _status_kb("VmHWM")))
            return n

    def sinks(conn: Connection, run_id: str) -> StoreSink:
        writer = ExportWriter(settings, run_id, conn.provider, conn.merchant_id)
        writers.append(writer)
        return SampledSink(repository, writer, conn.connection_id)

    service = SyncService(
        connections=MemoryConnections([Connection("clover", merchant)]),
        sources=factory,
        sinks=sinks,
        enqueue=lambda req, dedup: None,
        config=sync_config,
        metrics=NullMetrics(),
    )
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    result = service.run(
        SyncRequest("clover", merchant, SyncKind.BACKFILL, reason="bench"), Deadline.after(900)
    )
    elapsed = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "status": result.status,
        "orders": repository.orders,
        "exported": result.exported,
        "manifest_key": result.manifest_key,
        "export_run_id": writers[-1].run_id if writers else None,
        "elapsed_s": round(elapsed, 2),
        "baseline_rss_kb": baseline,
        "peak_rss_kb": peak,
        "peak_vmhwm_kb": _status_kb("VmHWM"),
        "rss_at_end_kb": _status_kb("VmRSS"),
        "peak_so_far_kb": _thin(samples, 10),
    }


def _thin(samples: Sequence[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """At most ``n`` samples, evenly spread, the last one included."""
    if len(samples) <= n:
        return list(samples)
    step = len(samples) / n
    return [samples[min(len(samples) - 1, round((i + 1) * step) - 1)] for i in range(n)]


# --------------------------------------------------------------------------- the parent


def run_size(
    sb: SandboxProcess, env: Mapping[str, str | None], merchant: str, token: str, *, worker_gc: bool = True
) -> dict[str, Any]:
    config = {
        "env": {k: v for k, v in env.items() if v is not None},
        "merchant": merchant,
        "token": token,
        "worker_gc": worker_gc,
    }
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POSYNC_"))}
    child_env.update(worker_process_env())  # the worker function's allocator settings, as deployed
    # Through a shell that forks the child: Linux folds the RSS of the process that calls
    # exec() into ru_maxrss, so a child exec'd straight from this (large) process would
    # start with this process's RSS as its peak.
    proc = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$0" "$@"; rc=$?; exit $rc',
            sys.executable,
            "-m",
            "bench.memory",
            json.dumps(config),
        ],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        env=child_env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def exported_versions(settings: Any, merchant: str) -> list[tuple[str, int]]:
    from posync.exports import modified_ms, read_manifested

    return [
        (str(o["order_id"]), modified_ms(str(o["modified_at"])))
        for o in read_manifested(settings, provider="clover", merchant_id=merchant)
    ]


def scenario(
    sb: SandboxProcess,
    env: Mapping[str, str | None],
    settings: Any,
    sizes: Mapping[int, str],
    tokens: Mapping[str, str],
    *,
    worker_gc: bool = True,
) -> dict[str, Any]:
    """``sizes``: orders -> merchant (each with that many orders, over the same days)."""
    sb.set_knobs(latency_ms=50)
    out: dict[str, Any] = {
        "exports_to": "embedded AWS (moto server in the parent process); DynamoDB upsert passed through",
        "load_before": load(),
        "sizes": {},
    }
    for n, merchant in sorted(sizes.items()):
        figures = run_size(sb, env, merchant, tokens[merchant], worker_gc=worker_gc)
        truth = sb.truth(merchant)
        verdict = check(truth, exported_versions(settings, merchant))
        figures["check"] = verdict.as_dict()
        figures["check_ok"] = verdict.ok and figures["status"] == "completed"
        out["sizes"][str(n)] = figures
    small, large = min(sizes), max(sizes)
    peak_small = out["sizes"][str(small)]["peak_rss_kb"]
    peak_large = out["sizes"][str(large)]["peak_rss_kb"]
    base_small = out["sizes"][str(small)]["baseline_rss_kb"]
    base_large = out["sizes"][str(large)]["baseline_rss_kb"]
    ratio = peak_large / max(1, peak_small)
    out.update(
        {
            "ratio": round(ratio, 3),
            "target": TARGET,
            "pass": ratio <= TARGET,
            "check_ok": all(v["check_ok"] for v in out["sizes"].values()),
            "growth_above_baseline_kb": {
                str(small): peak_small - base_small,
                str(large): peak_large - base_large,
            },
            "load_after": load(),
        }
    )
    sb.set_knobs(latency_ms=0)
    return out


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
