"""One place for the logger, tracer and metrics every handler uses."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "posync"
NAMESPACE = "posync"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE, disabled=None)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
