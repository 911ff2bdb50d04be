"""Deployment knobs, read from CDK context (``cdk.json`` defaults, ``-c key=value`` overrides).

Validated once, before any construct is built, so a typo fails the synth with a clear
message instead of producing a template that deploys and misbehaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from constructs import Node

from posync.resources import STAGE_PATTERN

PROVIDER_REGIONS = ("sandbox", "us", "eu", "la")
LOG_RETENTION_CHOICES = (7, 14, 30, 60, 90, 180, 365)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ContextError(ValueError):
    """A context value is missing or malformed."""


def _int(raw: Any, name: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise ContextError(f"context {name} must be an integer, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ContextError(f"context {name} must be between {lo} and {hi}, got {value}")
    return value


def _retention(raw: Any) -> int:
    if raw is None or raw == "":
        return 30
    value = _int(raw, "logRetentionDays", 1, 3653)
    if value not in LOG_RETENTION_CHOICES:
        raise ContextError(f"context logRetentionDays must be one of {LOG_RETENTION_CHOICES}, got {value}")
    return value


def _flag(raw: Any, name: str) -> bool:
    if raw is None or raw == "" or raw is False or str(raw).lower() == "false":
        return False
    if raw is True or str(raw).lower() == "true":
        return True
    raise ContextError(f"context {name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class InfraContext:
    stage: str = "dev"
    provider_region: str = "sandbox"
    public_base_url: str | None = None  # a custom domain in front of the HTTP API; else its endpoint
    schedule_minutes: int = 15
    reconcile_hours: int = 24  # the reconciliation sweep's schedule (posync.reconcile)
    reconcile_days: int = 7  # the sweep's window: orders modified (so also created) in the last N days
    worker_max_concurrency: int = 10  # bounds the per-app request rate across workers
    exports_ia_days: int = 30
    log_retention_days: int = 30
    api_rate_limit: int = 50  # requests/s, steady state, on the HTTP API's default stage
    api_burst_limit: int = 100
    alarm_email: str | None = None  # subscribed to the alarm topic when set
    trace_calls: bool = False  # X-Ray subsegments for every AWS and provider call (the X-Ray SDK)

    @classmethod
    def from_values(cls, get: Any) -> InfraContext:
        """Build from a ``get(name) -> value | None`` lookup (a construct node or a dict's ``get``)."""
        stage = str(get("stage") or "dev")
        if not STAGE_PATTERN.fullmatch(stage):
            raise ContextError(f"context stage must match {STAGE_PATTERN.pattern}, got {stage!r}")
        region = str(get("providerRegion") or "sandbox")
        if region not in PROVIDER_REGIONS:
            raise ContextError(f"context providerRegion must be one of {PROVIDER_REGIONS}, got {region!r}")
        public = get("publicBaseUrl") or None
        if public is not None:
            parts = urlsplit(str(public))
            if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
                raise ContextError(f"context publicBaseUrl must be an https URL, got {public!r}")
            public = str(public).rstrip("/")

        email = get("alarmEmail") or None
        if email is not None and not EMAIL.fullmatch(str(email)):
            raise ContextError(f"context alarmEmail must be an email address, got {email!r}")

        def num(name: str, default: int, lo: int, hi: int) -> int:
            raw = get(name)
            return default if raw is None or raw == "" else _int(raw, name, lo, hi)

        return cls(
            stage=stage,
            provider_region=region,
            public_base_url=public,
            schedule_minutes=num("scheduleMinutes", 15, 1, 1440),
            reconcile_hours=num("reconcileHours", 24, 1, 168),
            reconcile_days=num("reconcileDays", 7, 1, 90),
            # SQS event sources accept 2..1000.
            worker_max_concurrency=num("workerMaxConcurrency", 10, 2, 1000),
            # S3 refuses a transition to STANDARD_IA earlier than 30 days.
            exports_ia_days=num("exportsIaDays", 30, 30, 3650),
            log_retention_days=_retention(get("logRetentionDays")),
            api_rate_limit=num("apiRateLimit", 50, 1, 10000),
            api_burst_limit=num("apiBurstLimit", 100, 1, 5000),
            alarm_email=str(email) if email is not None else None,
            trace_calls=_flag(get("traceCalls"), "traceCalls"),
        )

    @classmethod
    def from_node(cls, node: Node) -> InfraContext:
        return cls.from_values(node.try_get_context)
