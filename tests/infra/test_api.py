"""The HTTP API has exactly the routes of posync.resources.ROUTES, each to its own function."""

from __future__ import annotations

import json
from typing import Any

from posync.resources import ROUTES
from tests.infra.support import Synth


def function_logical_ids(synth: Synth) -> dict[str, str]:
    stage = synth.stack.ctx.stage
    return {
        r["Properties"]["FunctionName"].removeprefix(f"posync-{stage}-"): lid
        for lid, r in synth.resources("AWS::Lambda::Function").items()
    }


def integration_target(synth: Synth, route: dict[str, Any]) -> str:
    """The logical id of the function a route's integration invokes."""
    target = route["Target"]["Fn::Join"][1]
    assert target[0] == "integrations/"
    integration = synth.resources("AWS::ApiGatewayV2::Integration")[target[1]["Ref"]]["Properties"]
    assert integration["IntegrationType"] == "AWS_PROXY"
    assert integration["PayloadFormatVersion"] == "2.0"
    return str(integration["IntegrationUri"]["Fn::GetAtt"][0])


def test_routes_are_exactly_the_contract(synth: Synth) -> None:
    # When the stack is synthesized
    keys = sorted(p["RouteKey"] for p in synth.props("AWS::ApiGatewayV2::Route"))
    # Then the API has exactly the DESIGN.md routes: no $default, no ANY, nothing else
    assert keys == sorted(f"{r.method} {r.path}" for r in ROUTES)
    assert all(not k.startswith(("$default", "ANY")) for k in keys)


def test_each_route_invokes_its_own_function(synth: Synth) -> None:
    fn_ids = function_logical_ids(synth)
    routes = {p["RouteKey"]: p for p in synth.props("AWS::ApiGatewayV2::Route")}
    for spec in ROUTES:
        route = routes[f"{spec.method} {spec.path}"]
        assert integration_target(synth, route) == fn_ids[spec.function], spec


def test_scheduled_and_queue_functions_are_not_behind_the_api(synth: Synth) -> None:
    fn_ids = function_logical_ids(synth)
    targets = {integration_target(synth, r) for r in synth.props("AWS::ApiGatewayV2::Route")}
    assert fn_ids["dispatcher"] not in targets
    assert fn_ids["worker"] not in targets


def test_invoke_permissions_are_scoped_to_each_route(synth: Synth) -> None:
    # API Gateway may invoke a function only through the route that maps to it.
    permissions = [
        p for p in synth.props("AWS::Lambda::Permission") if p["Principal"] == "apigateway.amazonaws.com"
    ]
    assert len(permissions) == len(ROUTES)
    for p in permissions:
        source = "".join(part if isinstance(part, str) else "<x>" for part in p["SourceArn"]["Fn::Join"][1])
        route = next(r for r in ROUTES if source.endswith(f"/*/*{r.path}"))
        assert p["FunctionName"]["Fn::GetAtt"][0] == function_logical_ids(synth)[route.function]


def test_default_stage_throttles_and_logs_without_query_strings(synth: Synth) -> None:
    (stage,) = synth.props("AWS::ApiGatewayV2::Stage")
    assert stage["StageName"] == "$default"
    assert stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"] == {"ThrottlingBurstLimit": 100, "ThrottlingRateLimit": 50}
    fields = json.loads(stage["AccessLogSettings"]["Format"])
    assert {"requestId", "routeKey", "status", "ip"} <= set(fields)
    # The OAuth callback carries the authorization code in its query string: never logged.
    assert not any("query" in v.lower() for v in fields.values())
    group_id = stage["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert synth.resources("AWS::Logs::LogGroup")[group_id]["Properties"]["RetentionInDays"] == 30


def test_api_has_no_default_route_or_integration(synth: Synth) -> None:
    (api,) = synth.props("AWS::ApiGatewayV2::Api")
    assert api["ProtocolType"] == "HTTP"
    assert "Target" not in api  # quick-create target would add a catch-all route
    assert len(synth.props("AWS::ApiGatewayV2::Integration")) == len({r.function for r in ROUTES})
