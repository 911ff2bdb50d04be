"""One place for the logger, metrics and (opt-in) call tracing every handler uses.

Tracing: the stack turns on Lambda active tracing, so X-Ray records every invocation (its
init, duration and errors) without any SDK in the function. Per-call subsegments (one for
every AWS and provider request) need the X-Ray SDK's patching of botocore and requests:
that is Powertools' ``Tracer``, created here only when ``POSYNC_TRACE_CALLS`` is set (the
stack's ``traceCalls`` context). Importing and patching the SDK costs a cold start about a
third of a bare Powertools handler's import, and a backfill would send thousands of
subsegments (Powertools streams each one), so it is off by default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from aws_lambda_powertools import Logger, Metrics

SERVICE = "posync"
NAMESPACE = "posync"
TRACE_CALLS_ENV = "POSYNC_TRACE_CALLS"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def trace_calls_enabled(env: Mapping[str, str] = os.environ) -> bool:
    value = env.get(TRACE_CALLS_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{TRACE_CALLS_ENV} must be true or false, got {value!r}")


if trace_calls_enabled():
    from aws_lambda_powertools import Tracer

    Tracer(service=SERVICE)  # patches botocore and requests: a subsegment per call
