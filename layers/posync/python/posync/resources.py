"""The one description of posync's AWS resources.

The CDK stack (``infra/``) and the local runtime (``posync local up``) both build
from :func:`resources`, so the names and key schemas used by the code, the
synthesized template and the embedded AWS cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STAGE_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


@dataclass(frozen=True)
class IndexSpec:
    """A DynamoDB global secondary index: its name and key attributes."""

    name: str
    pk: str
    sk: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table: name, key schema, TTL attribute and indexes."""

    key: str  # logical key used in code and CDK ("connections")
    name: str
    pk: str
    sk: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[IndexSpec, ...] = ()


@dataclass(frozen=True)
class QueueSpec:
    """An SQS queue: name, FIFO or not, visibility timeout, retention and dead-letter queue."""

    key: str
    name: str
    fifo: bool
    visibility_timeout_s: int
    dead_letter: str | None = None  # key of the DLQ
    max_receive_count: int = 5
    retention_s: int = 14 * 24 * 3600


@dataclass(frozen=True)
class Resources:
    """Every AWS resource of one stage, by name (what the stack creates and the code uses)."""

    stage: str
    tables: tuple[TableSpec, ...]
    queues: tuple[QueueSpec, ...]
    bucket: str
    event_bus: str
    kms_alias: str
    secret_prefix: str
    extra: dict[str, str] = field(default_factory=dict)

    def table(self, key: str) -> TableSpec:
        for t in self.tables:
            if t.key == key:
                return t
        raise KeyError(key)

    def queue(self, key: str) -> QueueSpec:
        for q in self.queues:
            if q.key == key:
                return q
        raise KeyError(key)


WORKER_TIMEOUT_S = 300
# One pass over 100,000 connections takes some 40-60 s (`make bench`, scenario scale); five
# minutes leave room, and a pass cut short resumes (posync.dispatcher).
DISPATCHER_TIMEOUT_S = 300
# SQS wants the visibility timeout to be at least six times the function timeout.
SYNC_VISIBILITY_S = 6 * WORKER_TIMEOUT_S


def bucket_name(stage: str, account: str, region: str) -> str:
    return f"posync-{stage}-exports-{account}-{region}"


def resources(stage: str, account: str = "000000000000", region: str = "us-east-1") -> Resources:
    """All resources of one stage. ``account`` and ``region`` only shape the bucket name."""
    if not STAGE_PATTERN.fullmatch(stage):
        raise ValueError(f"stage must match {STAGE_PATTERN.pattern}: {stage!r}")
    p = f"posync-{stage}"
    return Resources(
        stage=stage,
        tables=(
            # One item per connection: status, tokens' expiry, cursor, last run and error.
            TableSpec(
                key="connections",
                name=f"{p}-connections",
                pk="connection_id",
                indexes=(IndexSpec(name="by-status", pk="status", sk="connection_id"),),
            ),
            # One item per order (latest version wins).
            TableSpec(key="orders", name=f"{p}-orders", pk="connection_id", sk="order_id"),
            # Short-lived control items: OAuth states, refresh leases, rate-limit buckets,
            # webhook deduplication. Everything here carries a TTL.
            TableSpec(key="control", name=f"{p}-control", pk="pk", ttl_attribute="expires_at"),
        ),
        queues=(
            QueueSpec(
                key="sync",
                name=f"{p}-sync.fifo",
                fifo=True,
                visibility_timeout_s=SYNC_VISIBILITY_S,
                dead_letter="sync_dlq",
            ),
            QueueSpec(key="sync_dlq", name=f"{p}-sync-dlq.fifo", fifo=True, visibility_timeout_s=60),
        ),
        bucket=bucket_name(stage, account, region),
        event_bus=p,
        kms_alias=f"alias/{p}",
        secret_prefix=f"posync/{stage}",
    )


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda: its folder under ``functions/`` and how it is triggered."""

    name: str  # folder name under functions/, and the function's logical name
    timeout_s: int
    memory_mb: int
    description: str
    # Process environment of this function alone (read by the runtime before any code runs).
    process_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RouteSpec:
    """A public HTTP API route and the function behind it."""

    method: str
    path: str  # API Gateway HTTP API route path, e.g. "/connect/{provider}"
    function: str


# Lambda gives CPU in proportion to memory: 1,769 MB is one whole vCPU. A backfill is bound by
# the worker's CPU (parsing and normalizing 1,000-order pages under one interpreter lock: `make
# bench` keeps a core ~90 % busy at Clover's rate), so at 1,024 MB (0.58 vCPU) it would run at
# about 0.6 of the speed for the same GB-seconds. More than one vCPU would sit idle (one GIL).
WORKER_MEMORY_MB = 1769
# glibc's allocator in the worker, whose fetch threads each allocate multi-megabyte response
# bodies: two arenas instead of eight per core, and blocks over 128 KiB always mapped (returned
# to the system when freed) instead of a threshold that grows to the size of the biggest block
# freed. `make bench` (a 100,000-order backfill): peak RSS 166 -> 143 MiB, and a plateau
# instead of a slow climb; no measurable time cost.
WORKER_PROCESS_ENV: tuple[tuple[str, str], ...] = (
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
)

FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("health", 5, 256, "GET /health"),
    FunctionSpec("connect", 10, 256, "GET /connect/{provider}: redirect to the provider's consent page"),
    FunctionSpec("callback", 30, 512, "GET /oauth/{provider}/callback: exchange the code, store tokens"),
    FunctionSpec("webhooks", 10, 256, "POST /webhooks/{provider}: verify and enqueue targeted syncs"),
    FunctionSpec(
        "dispatcher",
        DISPATCHER_TIMEOUT_S,
        1024,
        "Scheduled: the due connections' syncs, within the app's budget",
    ),
    FunctionSpec(
        "worker", WORKER_TIMEOUT_S, WORKER_MEMORY_MB, "SQS: sync one connection's orders", WORKER_PROCESS_ENV
    ),
)

# The only public routes (DESIGN.md contract). The CDK api construct and the local front share this.
ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/health", "health"),
    RouteSpec("GET", "/connect/{provider}", "connect"),
    RouteSpec("GET", "/oauth/{provider}/callback", "callback"),
    RouteSpec("POST", "/webhooks/{provider}", "webhooks"),
)
