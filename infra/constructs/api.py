"""The public HTTP API: exactly the routes in ``posync.resources.ROUTES``, nothing else.

No default route or integration, so any other method/path gets API Gateway's own 404.
The ``$default`` stage auto-deploys, throttles (rate and burst from context) and writes
JSON access logs. The access log format deliberately leaves out the query string:
``/oauth/{provider}/callback`` carries the authorization code there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import jsii
from aws_cdk import RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.aws_apigatewayv2_integrations import HttpLambdaIntegration
from constructs import Construct

from infra.constructs.functions import RETENTION
from infra.nag import acknowledge
from posync.resources import ROUTES, RouteSpec

ACCESS_LOG_FIELDS: dict[str, str] = {
    "requestId": "$context.requestId",
    "time": "$context.requestTimeEpoch",
    "ip": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "method": "$context.httpMethod",
    "routeKey": "$context.routeKey",
    "path": "$context.path",
    "status": "$context.status",
    "protocol": "$context.protocol",
    "responseLength": "$context.responseLength",
    "latencyMs": "$context.responseLatency",
    "integrationLatencyMs": "$context.integrationLatency",
    "integrationStatus": "$context.integrationStatus",
    "error": "$context.error.message",
}


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    def __init__(self, group: logs.ILogGroup) -> None:
        self._destination = apigwv2.LogGroupLogDestination(group)

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS, separators=(",", ":")))


class Api(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        stage: str,
        rate_limit: int,
        burst_limit: int,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.http_api = apigwv2.HttpApi(
            self,
            "HttpApi",
            api_name=f"posync-{stage}",
            description="posync: merchant connect, OAuth callbacks, provider webhooks, health",
            create_default_stage=False,
        )
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=RETENTION[log_retention_days],
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.stage = apigwv2.HttpStage(
            self,
            "DefaultStage",
            http_api=self.http_api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=rate_limit, burst_limit=burst_limit),
            access_log_settings=_AccessLogSettings(self.access_logs),
        )
        self.routes: list[apigwv2.HttpRoute] = []

    @property
    def endpoint(self) -> str:
        """``https://{api-id}.execute-api.{region}.amazonaws.com`` (the ``$default`` stage has no path)."""
        return self.http_api.api_endpoint

    def add_routes(
        self, functions: Mapping[str, lambda_.IFunction], routes: Sequence[RouteSpec] = ROUTES
    ) -> None:
        integrations: dict[str, HttpLambdaIntegration] = {}
        for route in routes:
            fn = functions[route.function]
            if route.function not in integrations:
                integrations[route.function] = HttpLambdaIntegration(
                    f"{route.function.capitalize()}Integration", fn
                )
            added = self.http_api.add_routes(
                path=route.path,
                methods=[apigwv2.HttpMethod(route.method)],
                integration=integrations[route.function],
            )
            for r in added:
                acknowledge(
                    r,
                    "AwsSolutions-APIG4",
                    "Public by design (DESIGN.md routes): merchants' browsers and providers call these "
                    "unauthenticated; callbacks are authenticated by the signed single-use OAuth state, "
                    "webhooks by the provider's signature, and connect/health expose nothing.",
                )
            self.routes.extend(added)
