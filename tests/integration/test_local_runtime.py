"""The local runtime: HTTP front, provisioning, tick/drain semantics and `posync local up`."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from posync.aws import client
from posync.config import Settings
from posync.resources import FUNCTIONS, resources
from posync_local.local_aws import CDK_BOOTSTRAP_PARAMETER, EmbeddedAws, provision
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime, load_state, store_app_credentials

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# --- a probe runtime: real front and AWS, recording handlers --------------------------------------


class Probe:
    """Records what the handlers receive; ``answer`` decides what they return (or raise)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self.answer: Any = None

    def handler(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        self.contexts.append(context)
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is not None:
            return self.answer
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event)}


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe()


@pytest.fixture(scope="module")
def probe_runtime(local_runtime: LocalRuntime, probe: Probe) -> Iterator[LocalRuntime]:
    rt = local_runtime.derive(
        "probe", handlers={"connect": probe.handler, "callback": probe.handler, "webhooks": probe.handler}
    )
    rt.start()
    yield rt
    rt.stop()
    local_runtime.apply_env()


@pytest.fixture
def fresh_probe(probe: Probe) -> Probe:
    probe.events.clear()
    probe.contexts.clear()
    probe.answer = None
    return probe


# --- the HTTP front ---------------------------------------------------------------------------


def test_health_through_the_front_is_ok(local_runtime: LocalRuntime) -> None:
    # Given the session's local stack
    # When GET /health goes through the front to functions/health/handler.py
    r = requests.get(f"{local_runtime.api_url}/health", timeout=10)
    # Then the real handler answers 200 {"status": "ok"} with its security headers
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/health/extra"),
        ("POST", "/health"),  # the path exists, the route (method + path) does not
        ("GET", "/webhooks/clover"),
        ("GET", "/connect"),
        ("GET", "/connect/clover/more"),
    ],
)
def test_only_routes_in_the_route_table_exist(
    probe_runtime: LocalRuntime, fresh_probe: Probe, method: str, path: str
) -> None:
    # When a request matches no (method, path) of posync.resources.ROUTES
    r = requests.request(method, f"{probe_runtime.api_url}{path}", timeout=10)
    # Then API Gateway's 404 comes back and no function runs
    assert r.status_code == 404
    assert r.json() == {"message": "Not Found"}
    assert fresh_probe.events == []


def test_a_body_over_one_mebibyte_is_refused_with_413(
    probe_runtime: LocalRuntime, fresh_probe: Probe
) -> None:
    # Given a body one byte over 1 MiB, and one of exactly 1 MiB
    too_big = b"x" * (1024 * 1024 + 1)
    just_right = b"y" * (1024 * 1024)
    # When both are posted to a real route
    r_big = requests.post(f"{probe_runtime.api_url}/webhooks/clover", data=too_big, timeout=10)
    r_ok = requests.post(f"{probe_runtime.api_url}/webhooks/clover", data=just_right, timeout=10)
    # Then the first gets 413 without reaching the function, the second reaches it whole
    assert r_big.status_code == 413
    assert r_ok.status_code == 200
    assert len(fresh_probe.events) == 1
    assert base64.b64decode(fresh_probe.events[0]["body"]) == just_right


def test_the_event_is_an_api_gateway_v2_payload(probe_runtime: LocalRuntime, fresh_probe: Probe) -> None:
    # Given a request with repeated query parameters, cookies and a repeated header
    conn = http.client.HTTPConnection("127.0.0.1", int(probe_runtime.api_url.rsplit(":", 1)[1]), timeout=10)
    conn.putrequest("GET", "/connect/clover?ref=shop-1&x=1&x=2&empty=&sp=a%20b")
    conn.putheader("Cookie", "a=1; b=2")
    conn.putheader("X-Custom", "one")
    conn.putheader("X-Custom", "two")
    conn.putheader("User-Agent", "probe/1.0")
    conn.endheaders()
    before_ms = int(time.time() * 1000)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    # Then the handler received the HTTP API payload format 2.0 event
    assert resp.status == 200
    (event,) = fresh_probe.events
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /connect/{provider}"
    assert event["rawPath"] == "/connect/clover"
    assert event["rawQueryString"] == "ref=shop-1&x=1&x=2&empty=&sp=a%20b"
    assert event["queryStringParameters"] == {"ref": "shop-1", "x": "1,2", "empty": "", "sp": "a b"}
    assert event["pathParameters"] == {"provider": "clover"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-custom"] == "one,two"
    assert all(k == k.lower() for k in event["headers"])
    assert event["isBase64Encoded"] is False
    assert "body" not in event
    ctx = event["requestContext"]
    assert ctx["http"] == {
        "method": "GET",
        "path": "/connect/clover",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "probe/1.0",
    }
    assert ctx["routeKey"] == "GET /connect/{provider}"
    assert ctx["stage"] == "$default"
    assert ctx["accountId"] == "000000000000"
    assert ctx["domainName"].startswith("127.0.0.1")
    assert ctx["requestId"]
    assert abs(ctx["timeEpoch"] - before_ms) < 5000


def test_path_parameters_are_decoded_and_request_ids_unique(
    probe_runtime: LocalRuntime, fresh_probe: Probe
) -> None:
    # When two callbacks arrive, one with an encoded path segment
    requests.get(f"{probe_runtime.api_url}/oauth/po%20ynt/callback?code=c&state=s", timeout=10)
    requests.get(f"{probe_runtime.api_url}/oauth/poynt/callback", timeout=10)
    # Then the raw path stays encoded, the parameter is decoded, and each request has its own id
    first, second = fresh_probe.events
    assert first["rawPath"] == "/oauth/po%20ynt/callback"
    assert first["pathParameters"] == {"provider": "po ynt"}
    assert first["routeKey"] == "GET /oauth/{provider}/callback"
    assert "queryStringParameters" not in second
    assert second["rawQueryString"] == ""
    assert first["requestContext"]["requestId"] != second["requestContext"]["requestId"]


@pytest.mark.parametrize(
    ("content_type", "body", "expect_base64"),
    [
        ("application/octet-stream", bytes(range(256)), True),
        ("application/json", json.dumps({"merchants": {"M": [1]}}).encode(), False),
        ("text/plain; charset=utf-8", "naïve text".encode(), False),
        ("application/vnd.api+json", b'{"a":1}', False),
        (None, b"\x00\xffbinary", True),
    ],
)
def test_bodies_arrive_as_text_or_base64_like_api_gateway(
    probe_runtime: LocalRuntime,
    fresh_probe: Probe,
    content_type: str | None,
    body: bytes,
    expect_base64: bool,
) -> None:
    # When a webhook body of this content type is posted
    headers = {"Content-Type": content_type} if content_type else {}
    r = requests.post(f"{probe_runtime.api_url}/webhooks/poynt", data=body, headers=headers, timeout=10)
    # Then the handler gets it as text or base64, byte for byte
    assert r.status_code == 200
    (event,) = fresh_probe.events
    assert event["isBase64Encoded"] is expect_base64
    received = base64.b64decode(event["body"]) if expect_base64 else event["body"].encode()
    assert received == body
    assert event["routeKey"] == "POST /webhooks/{provider}"


def test_chunked_bodies_are_read_whole(probe_runtime: LocalRuntime, fresh_probe: Probe) -> None:
    # When a body arrives with chunked transfer encoding
    chunks = (c for c in [b"part-1;", b"part-2;", b"part-3"])
    r = requests.post(
        f"{probe_runtime.api_url}/webhooks/clover",
        data=chunks,
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    # Then the handler gets all of it
    assert r.status_code == 200
    assert fresh_probe.events[0]["body"] == "part-1;part-2;part-3"


def test_the_handler_answer_is_sent_as_api_gateway_would(
    probe_runtime: LocalRuntime, fresh_probe: Probe
) -> None:
    # Given a handler answering a base64 body, cookies and a multi-valued header
    payload = bytes(range(200))
    fresh_probe.answer = {
        "statusCode": 302,
        "headers": {"Location": "https://example.test/next", "Content-Type": "application/octet-stream"},
        "multiValueHeaders": {"X-Multi": ["a", "b"]},
        "cookies": ["s=1; HttpOnly", "t=2"],
        "body": base64.b64encode(payload).decode(),
        "isBase64Encoded": True,
    }
    # When the route is called
    r = requests.get(f"{probe_runtime.api_url}/connect/poynt", allow_redirects=False, timeout=10)
    # Then status, headers, cookies and the decoded body come back
    assert r.status_code == 302
    assert r.headers["Location"] == "https://example.test/next"
    assert r.content == payload
    assert r.raw.headers.getlist("X-Multi") == ["a", "b"]
    assert r.raw.headers.getlist("Set-Cookie") == ["s=1; HttpOnly", "t=2"]


def test_a_plain_json_answer_becomes_200_json(probe_runtime: LocalRuntime, fresh_probe: Probe) -> None:
    # Given a handler that returns a bare JSON value (no statusCode)
    fresh_probe.answer = {"hello": "world"}
    # When it is called
    r = requests.get(f"{probe_runtime.api_url}/connect/clover", timeout=10)
    # Then API Gateway's rule applies: 200, application/json, the value as body
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"hello": "world"}


def test_a_handler_exception_is_a_500_with_a_request_id_and_no_trace(
    probe_runtime: LocalRuntime, fresh_probe: Probe, captured_logs: LogCapture
) -> None:
    # Given a handler that raises with a sensitive-looking message
    fresh_probe.answer = RuntimeError("boom: do-not-show-this-detail")
    mark = captured_logs.mark()
    # When it is called
    r = requests.get(f"{probe_runtime.api_url}/connect/clover", timeout=10)
    # Then the client gets a generic 500 with the request id, and the trace stays in the server log
    assert r.status_code == 500
    body = r.json()
    assert body["message"] == "Internal Server Error"
    assert body["requestId"] == fresh_probe.events[0]["requestContext"]["requestId"]
    assert "do-not-show-this-detail" not in r.text
    assert "Traceback" not in r.text
    server_log = captured_logs.since(mark)
    assert "do-not-show-this-detail" in server_log
    assert body["requestId"] in server_log


def test_handlers_get_a_lambda_context_backed_by_the_function_spec(
    probe_runtime: LocalRuntime, fresh_probe: Probe
) -> None:
    # When the callback route runs
    requests.get(f"{probe_runtime.api_url}/oauth/clover/callback", timeout=10)
    # Then its context carries the function's name, memory, ARN, request id and remaining time
    ctx = fresh_probe.contexts[0]
    spec = next(f for f in FUNCTIONS if f.name == "callback")
    assert ctx.function_name == "posync-probe-callback"
    assert ctx.memory_limit_in_mb == spec.memory_mb
    assert ctx.invoked_function_arn.endswith(":function:posync-probe-callback")
    assert ctx.aws_request_id == fresh_probe.events[0]["requestContext"]["requestId"]
    assert 0 < ctx.get_remaining_time_in_millis() <= spec.timeout_s * 1000


def test_keep_alive_connections_serve_several_requests(local_runtime: LocalRuntime) -> None:
    # Given one HTTP/1.1 connection
    with requests.Session() as s:
        # When it sends several requests
        statuses = [s.get(f"{local_runtime.api_url}/health", timeout=10).status_code for _ in range(5)]
    # Then each is answered
    assert statuses == [200] * 5


def test_a_stopped_front_serves_nothing_even_on_kept_alive_connections(local_runtime: LocalRuntime) -> None:
    # Given a runtime whose front a client holds a kept-alive connection to
    rt = local_runtime.derive("stopfront").start()
    try:
        with requests.Session() as s:
            assert s.get(f"{rt.api_url}/health", timeout=10).status_code == 200
            # When the runtime stops
            rt.stop()
            # Then the same connection is not served any more, nor a new one
            with pytest.raises(requests.ConnectionError):
                s.get(f"{rt.api_url}/health", timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{rt.api_url}/health", timeout=5)
    finally:
        rt.stop()
        local_runtime.apply_env()


# --- provisioning -----------------------------------------------------------------------------


def _expected_description(settings: Settings) -> dict[str, Any]:
    res = settings.resources
    return {
        "tables": {
            t.name: {
                "pk": t.pk,
                "sk": t.sk,
                "ttl": t.ttl_attribute,
                "indexes": {i.name: {"pk": i.pk, "sk": i.sk} for i in t.indexes},
            }
            for t in res.tables
        },
        "queues": {
            q.name: {
                "fifo": q.fifo,
                "dlq": res.queue(q.dead_letter).name if q.dead_letter else None,
                "max_receive_count": q.max_receive_count if q.dead_letter else None,
                "visibility_timeout": q.visibility_timeout_s,
            }
            for q in res.queues
        },
        "buckets": [res.bucket],
        "event_buses": [res.event_bus],
    }


def test_provisioned_resources_match_the_resource_model(local_runtime: LocalRuntime) -> None:
    # Given the session stack, provisioned from posync.resources
    settings = local_runtime.settings
    # When its resources are read back from the embedded AWS
    described = local_runtime.describe()
    # Then names, keys, indexes, TTL, FIFO, dead-letter redrive, bucket and bus are those of the model
    assert described == _expected_description(settings)
    assert settings.resources == resources(local_runtime.stage)
    # And the queue attributes AWS would enforce are there too
    sqs = client("sqs")
    sync_url = sqs.get_queue_url(QueueName=settings.resources.queue("sync").name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=sync_url, AttributeNames=["All"])["Attributes"]
    assert attrs["FifoQueue"] == "true"
    assert attrs["ContentBasedDeduplication"] == "false"
    assert int(attrs["MessageRetentionPeriod"]) == settings.resources.queue("sync").retention_s
    ddb = client("dynamodb")
    for table in settings.resources.tables:
        desc = ddb.describe_table(TableName=table.name)["Table"]
        assert desc["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # And the KMS alias, the CDK bootstrap parameter and the secrets exist
    aliases = {a["AliasName"] for a in client("kms").list_aliases()["Aliases"]}
    assert settings.resources.kms_alias in aliases
    assert client("ssm").get_parameter(Name=CDK_BOOTSTRAP_PARAMETER)["Parameter"]["Value"]
    sm = client("secretsmanager")
    state_key = base64.b64decode(sm.get_secret_value(SecretId=settings.state_key_secret_name)["SecretString"])
    assert len(state_key) == 32
    for provider in ("clover", "poynt"):
        assert sm.describe_secret(SecretId=settings.app_secret_name(provider))["Name"]
    # And the functions' environment points at what was provisioned
    assert settings.sync_queue_url == sync_url


def test_provisioning_twice_is_idempotent_and_keeps_secrets(module_runtime: LocalRuntime) -> None:
    # Given a provisioned stage whose app credentials were filled in
    settings = module_runtime.settings
    first = module_runtime.provisioned
    assert first is not None
    store_app_credentials(settings, "clover", {"client_id": "cid-1", "client_secret": "filled-in"})
    sm = client("secretsmanager")
    state_key_before = sm.get_secret_value(SecretId=settings.state_key_secret_name)["SecretString"]
    described_before = module_runtime.describe()
    # When provisioning runs again
    second = provision(settings)
    # Then nothing changes: same queues, key, bucket; the state key is not rotated;
    # the filled app credentials are not emptied
    assert second == first
    assert module_runtime.describe() == described_before == _expected_description(settings)
    assert sm.get_secret_value(SecretId=settings.state_key_secret_name)["SecretString"] == state_key_before
    clover = json.loads(sm.get_secret_value(SecretId=settings.app_secret_name("clover"))["SecretString"])
    assert clover == {"client_id": "cid-1", "client_secret": "filled-in"}


def test_app_credentials_must_have_their_fields(module_runtime: LocalRuntime) -> None:
    # When Poynt credentials lack the private key
    with pytest.raises(ValueError, match="private_key_pem"):
        store_app_credentials(module_runtime.settings, "poynt", {"app_id": "urn:aid:x"})
    # Then the message names the field and nothing else
    with pytest.raises(ValueError, match="unknown provider"):
        store_app_credentials(module_runtime.settings, "square", {"x": "y"})


def test_stages_are_isolated_and_reset_data_empties_only_data(
    local_runtime: LocalRuntime, module_runtime: LocalRuntime
) -> None:
    # Given an item and a message in the module's stage
    module_runtime.apply_env()
    ms = module_runtime.settings
    client("dynamodb").put_item(TableName=ms.connections_table, Item={"connection_id": {"S": "clover#X"}})
    client("sqs").send_message(
        QueueUrl=ms.sync_queue_url, MessageBody="{}", MessageGroupId="g", MessageDeduplicationId="d1"
    )
    client("s3").put_object(Bucket=ms.bucket, Key="exports/x.json", Body=b"{}")
    client("secretsmanager").create_secret(
        Name=ms.connection_secret_name("clover", "ABCDEFGHJKMNP"), SecretString="{}"
    )
    # Then the session stage does not see them
    local_runtime.apply_env()
    other = client("dynamodb").scan(TableName=local_runtime.settings.connections_table)["Items"]
    assert {"connection_id": {"S": "clover#X"}} not in other
    # When the module stage's data is reset
    module_runtime.reset_data()
    # Then its tables, queue, bucket and connection secrets are empty, and its configuration stays
    assert client("dynamodb").scan(TableName=ms.connections_table)["Items"] == []
    assert client("s3").list_objects_v2(Bucket=ms.bucket).get("KeyCount", 0) == 0
    attrs = client("sqs").get_queue_attributes(QueueUrl=ms.sync_queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    sm = client("secretsmanager")
    names = {
        s["Name"]
        for page in sm.get_paginator("list_secrets").paginate()  # other stages' secrets fill pages too
        for s in page["SecretList"]
        if s["Name"].startswith(f"posync/{ms.stage}/")
    }
    assert names == {ms.state_key_secret_name, ms.app_secret_name("clover"), ms.app_secret_name("poynt")}
    local_runtime.apply_env()


# --- tick and drain (with handlers written here; the real ones are exercised by the sync tests) --


class FakeFunctions:
    """A dispatcher and a worker with the real contracts: SQS batch in, batchItemFailures out."""

    def __init__(self) -> None:
        self.queue_url = ""
        self.scheduled: list[dict[str, Any]] = []
        self.dispatch_bodies: list[str] = []
        self.deliveries: list[dict[str, Any]] = []  # every record the worker got, in order
        self.done: list[str] = []  # bodies processed successfully, in order
        self.fail_times: dict[str, int] = {}  # body -> how many more deliveries fail
        self.raise_times = 0  # batches that raise instead of answering
        self.continuations: dict[str, str] = {}  # body -> body to enqueue when it succeeds
        self.remaining_ms: list[int] = []

    def dispatcher(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.scheduled.append(event)
        for i, body in enumerate(self.dispatch_bodies):
            send(self.queue_url, body, group=f"g{i}", dedup=f"{event['time']}-{i}")
        return {"enqueued": len(self.dispatch_bodies)}

    def worker(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.remaining_ms.append(context.get_remaining_time_in_millis())
        if self.raise_times > 0:
            self.raise_times -= 1
            raise RuntimeError("worker crashed")
        failures: list[dict[str, str]] = []
        failed_groups: set[str] = set()
        for record in event["Records"]:
            self.deliveries.append(record)
            body = record["body"]
            group = record["attributes"]["MessageGroupId"]
            # FIFO discipline (like Powertools' SqsFifoPartialProcessor): after a failure in a
            # group, the rest of that group in this batch fails too.
            if group in failed_groups or self.fail_times.get(body, 0) > 0:
                if group not in failed_groups and self.fail_times.get(body, 0) > 0:
                    self.fail_times[body] -= 1
                failed_groups.add(group)
                failures.append({"itemIdentifier": record["messageId"]})
                continue
            self.done.append(body)
            if body in self.continuations:
                send(self.queue_url, self.continuations[body], group=group, dedup=f"cont-{body}")
        return {"batchItemFailures": failures}


def send(queue_url: str, body: str, *, group: str, dedup: str) -> None:
    client("sqs").send_message(
        QueueUrl=queue_url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=dedup
    )


@pytest.fixture(scope="module")
def fakes() -> FakeFunctions:
    return FakeFunctions()


@pytest.fixture(scope="module")
def tick_runtime_module(local_runtime: LocalRuntime, fakes: FakeFunctions) -> Iterator[LocalRuntime]:
    rt = local_runtime.derive("ticks", handlers={"dispatcher": fakes.dispatcher, "worker": fakes.worker})
    rt.start()
    yield rt
    rt.stop()
    local_runtime.apply_env()


@pytest.fixture
def tick_runtime(tick_runtime_module: LocalRuntime, fakes: FakeFunctions) -> Iterator[LocalRuntime]:
    tick_runtime_module.reset_data()
    fakes.__init__()  # type: ignore[misc]
    fakes.queue_url = tick_runtime_module.settings.sync_queue_url or ""
    yield tick_runtime_module


def test_drain_of_an_empty_queue_stops_at_once(tick_runtime: LocalRuntime, fakes: FakeFunctions) -> None:
    # Given an empty sync queue
    # When it is drained
    report = tick_runtime.drain()
    # Then nothing runs and the drain stops because the queue is idle
    assert report.stopped_by == "idle" and report.idle
    assert (report.messages, report.batches, report.rounds) == (0, 0, 1)
    assert fakes.deliveries == []


def test_records_have_the_sqs_event_shape(tick_runtime: LocalRuntime, fakes: FakeFunctions) -> None:
    # Given one message on the FIFO sync queue
    send(fakes.queue_url, '{"provider":"clover"}', group="clover#M1", dedup="d-1")
    # When the queue is drained
    tick_runtime.drain()
    # Then the worker got a real SQS record
    (record,) = fakes.deliveries
    settings = tick_runtime.settings
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].endswith(":" + settings.resources.queue("sync").name)
    assert record["body"] == '{"provider":"clover"}'
    assert record["messageId"] and record["receiptHandle"]
    assert record["awsRegion"] == "us-east-1"
    attrs = record["attributes"]
    assert attrs["MessageGroupId"] == "clover#M1"
    assert attrs["MessageDeduplicationId"] == "d-1"
    assert attrs["ApproximateReceiveCount"] == "1"
    assert "SentTimestamp" in attrs and "SequenceNumber" in attrs


def test_failed_records_are_redelivered_after_their_visibility_timeout(
    tick_runtime: LocalRuntime, fakes: FakeFunctions
) -> None:
    # Given three messages in three groups, the second of which fails once
    for i, body in enumerate(["a", "b", "c"]):
        send(fakes.queue_url, body, group=f"g{i}", dedup=body)
    fakes.fail_times["b"] = 1
    # When the queue is drained with a 1 s redelivery delay
    started = time.monotonic()
    report = tick_runtime.drain(retry_delay_s=1)
    elapsed = time.monotonic() - started
    # Then a and c were deleted at once, b came back (receive count 2) after its timeout and succeeded
    assert sorted(fakes.done) == ["a", "b", "c"]
    b_deliveries = [r for r in fakes.deliveries if r["body"] == "b"]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in b_deliveries] == ["1", "2"]
    assert elapsed >= 1.0
    assert (report.messages, report.succeeded, report.failures) == (4, 3, 1)
    assert report.idle and report.dead_lettered == 0


def test_fifo_order_holds_per_message_group_across_redeliveries(
    tick_runtime: LocalRuntime, fakes: FakeFunctions
) -> None:
    # Given two groups of five ordered messages, interleaved, and a failure in the middle of one
    for n in range(1, 6):
        send(fakes.queue_url, f"g1-{n}", group="g1", dedup=f"g1-{n}")
        send(fakes.queue_url, f"g2-{n}", group="g2", dedup=f"g2-{n}")
    fakes.fail_times["g1-2"] = 2
    # When the queue is drained in batches of three
    report = tick_runtime.drain(batch_size=3, retry_delay_s=0)
    # Then each group was processed exactly once, in order, despite the redeliveries
    assert [b for b in fakes.done if b.startswith("g1")] == [f"g1-{n}" for n in range(1, 6)]
    assert [b for b in fakes.done if b.startswith("g2")] == [f"g2-{n}" for n in range(1, 6)]
    assert report.failures >= 2
    assert report.succeeded == 10
    assert report.idle


def test_continuations_the_worker_enqueues_are_drained_too(
    tick_runtime: LocalRuntime, fakes: FakeFunctions
) -> None:
    # Given a run that continues itself three times
    fakes.continuations = {"run-1": "run-2", "run-2": "run-3", "run-3": "run-4"}
    send(fakes.queue_url, "run-1", group="clover#M", dedup="run-1")
    # When the queue is drained once
    report = tick_runtime.drain()
    # Then the whole chain ran, in order, before the drain called the queue idle
    assert fakes.done == ["run-1", "run-2", "run-3", "run-4"]
    assert report.messages == 4 and report.batches == 4 and report.idle


def test_a_worker_that_raises_gets_the_whole_batch_again(
    tick_runtime: LocalRuntime, fakes: FakeFunctions
) -> None:
    # Given two messages and a worker that crashes on its first batch
    send(fakes.queue_url, "x", group="g1", dedup="x")
    send(fakes.queue_url, "y", group="g2", dedup="y")
    fakes.raise_times = 1
    # When the queue is drained
    report = tick_runtime.drain(retry_delay_s=0)
    # Then both messages came back and were processed
    assert sorted(fakes.done) == ["x", "y"]
    assert report.failures == 2 and report.succeeded == 2 and report.batches == 2


def test_a_poison_message_ends_in_the_dead_letter_queue(
    tick_runtime: LocalRuntime, fakes: FakeFunctions
) -> None:
    # Given a message that always fails, and a healthy one
    send(fakes.queue_url, "poison", group="g1", dedup="poison")
    send(fakes.queue_url, "fine", group="g2", dedup="fine")
    fakes.fail_times["poison"] = 1000
    # When the queue is drained
    report = tick_runtime.drain(retry_delay_s=0)
    # Then after maxReceiveCount deliveries the poison message is in the DLQ and the drain is idle
    max_receives = tick_runtime.settings.resources.queue("sync").max_receive_count
    assert [r["body"] for r in fakes.deliveries].count("poison") == max_receives
    assert fakes.done == ["fine"]
    assert report.dead_lettered == 1
    assert report.idle


def test_drain_stops_at_its_bounds(tick_runtime: LocalRuntime, fakes: FakeFunctions) -> None:
    # Given a message that keeps failing with a long redelivery delay
    send(fakes.queue_url, "slow", group="g1", dedup="slow")
    fakes.fail_times["slow"] = 1000
    # When the drain is bounded in rounds, and then in time
    by_rounds = tick_runtime.drain(retry_delay_s=30, max_rounds=3)
    started = time.monotonic()
    by_time = tick_runtime.drain(retry_delay_s=30, max_seconds=0.5)
    # Then it stops at the bound and says so
    assert by_rounds.stopped_by == "max_rounds" and not by_rounds.idle
    assert by_rounds.rounds == 3
    assert by_time.stopped_by == "max_seconds"
    assert time.monotonic() - started < 5


def test_tick_fires_the_schedule_then_drains(tick_runtime: LocalRuntime, fakes: FakeFunctions) -> None:
    # Given a dispatcher that enqueues one sync per connection (two of them)
    fakes.dispatch_bodies = ["sync-a", "sync-b"]
    # When the schedule fires once
    report = tick_runtime.tick(worker_timeout_s=20)
    # Then the dispatcher got an EventBridge scheduled event and the worker drained its messages
    (event,) = fakes.scheduled
    assert event["source"] == "aws.events"
    assert event["detail-type"] == "Scheduled Event"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])
    assert event["resources"] and event["resources"][0].startswith("arn:aws:events:us-east-1:")
    assert report.dispatcher == {"enqueued": 2}
    assert sorted(fakes.done) == ["sync-a", "sync-b"]
    assert report.messages == 2 and report.idle
    # And the worker's deadline followed the override
    assert all(0 < ms <= 20_000 for ms in fakes.remaining_ms)
    assert report.to_dict()["idle"] is True


def test_the_real_handlers_run_unless_overridden(local_runtime: LocalRuntime) -> None:
    # Given the session runtime (no overrides)
    # When health is invoked directly like Lambda would
    answer = local_runtime.invoke("health", {"version": "2.0", "rawPath": "/health"})
    # Then the real functions/health/handler.py answered
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"]) == {"status": "ok"}
    path = local_runtime.functions.handler_path("health")
    assert path == REPO / "functions" / "health" / "handler.py"


# --- `posync local up` as a real process --------------------------------------------------------


class ProcessOutput:
    """Drains a process's stdout and stderr in threads (no pipe ever fills up) and waits for text."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stdout)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not printed in {timeout} s:\n{self.stdout}\n{self.stderr}")

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return code


def _sandbox_flag() -> str:
    try:
        from posync_local.sandbox import CloverSandbox, PoyntSandbox  # noqa: F401
    except ImportError:
        return "--no-sandbox"
    return "--sandbox"


def _posync_command() -> list[str]:
    exe = Path(sys.executable).with_name("posync")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "posync_local.cli"]


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POSYNC_", "POWERTOOLS_"))}
    env["POSYNC_LOCAL_STATE"] = str(tmp_path / "state.json")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _approve_consent(api_url: str, provider: str) -> requests.Response:
    """A merchant's browser: /connect -> the sandbox's consent page -> Approve -> our callback."""
    with requests.Session() as browser:
        r = browser.get(f"{api_url}/connect/{provider}", allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        consent_url = r.headers["Location"]
        page = browser.get(consent_url, timeout=10)
        assert page.status_code == 200, page.text
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        assert action is not None, page.text
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
        selected = re.search(r'<select id="\w+" name="(\w+)"><option value="([^"]+)"', page.text)
        if selected:
            form[selected.group(1)] = selected.group(2)
        form["decision"] = "approve"
        base = consent_url.split("/", 3)
        r = browser.post(
            f"{base[0]}//{base[2]}{action.group(1)}", data=form, allow_redirects=False, timeout=10
        )
        assert r.status_code == 302, r.text
        assert r.headers["Location"].startswith(api_url)
        return browser.get(r.headers["Location"], allow_redirects=False, timeout=30)


def _secret_values(aws_url: str) -> tuple[list[str], list[str]]:
    sm = boto3.client(
        "secretsmanager",
        endpoint_url=aws_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    names = [s["Name"] for page in sm.get_paginator("list_secrets").paginate() for s in page["SecretList"]]
    values: list[str] = []
    secret_field = re.compile(r"token|secret|private|key|code", re.IGNORECASE)
    not_secret = re.compile(r"expir|_at$|_id$|^id$", re.IGNORECASE)
    for name in names:
        raw = sm.get_secret_value(SecretId=name)["SecretString"]
        try:
            fields = json.loads(raw)
        except ValueError:
            values.append(raw)  # the state key: the whole value is the secret
            continue
        if isinstance(fields, dict):
            values.extend(
                str(v) for k, v in fields.items() if v and secret_field.search(k) and not not_secret.search(k)
            )
    return names, values


def test_posync_local_up_serves_ticks_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    # Given `posync local up` started as its own process on free ports, with the sandboxes
    sandbox = _sandbox_flag() == "--sandbox"
    cmd = [*_posync_command(), "local", "up", "--api-port", "0", "--aws-port", "0", "--stage", "upt"]
    env = _clean_env(tmp_path)
    proc = subprocess.Popen(
        [*cmd, _sandbox_flag()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = ProcessOutput(proc)
    tick_out = ""
    try:
        # When it prints its endpoints
        output.wait_for(r"State file:\s+(\S+)\n", timeout=60)
        out = output.stdout
        api_url = re.search(r"API:\s+(http://127\.0\.0\.1:\d+)", out)
        aws_url = re.search(r"AWS endpoint:\s+(http://127\.0\.0\.1:\d+)", out)
        assert api_url and aws_url, out
        # Then its API answers, and the state file names its endpoints for other commands
        r = requests.get(f"{api_url.group(1)}/health", timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert f"{api_url.group(1)}/connect/clover" in out and f"{api_url.group(1)}/connect/poynt" in out
        state = load_state(tmp_path / "state.json")
        assert state is not None
        assert state.api_url == api_url.group(1)
        assert state.data["aws_endpoint"] == aws_url.group(1)
        state_text = state.path.read_text()
        if sandbox:
            # When a sandbox merchant connects and `posync local tick --json` runs in another process
            callback = _approve_consent(api_url.group(1), "clover")
            assert callback.status_code in (200, 302), callback.text
            ticked = subprocess.run(
                [*_posync_command(), "local", "tick", "--json"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            tick_out = ticked.stdout + ticked.stderr
            # Then the tick reached the running stack: the backfill ran in the worker, and the queue is idle
            assert ticked.returncode == 0, tick_out
            report = json.loads(ticked.stdout)
            assert report["idle"] is True and report["stopped_by"] == "idle"
            assert report["messages"] >= 1 and report["failures"] == 0
            assert isinstance(report["dispatcher"], dict)
            ddb = boto3.client(
                "dynamodb",
                endpoint_url=aws_url.group(1),
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            assert ddb.scan(TableName="posync-upt-orders", Select="COUNT")["Count"] > 0
        # And the secrets it holds (state key, app credentials, connection tokens) are readable from its AWS
        names, secret_values = _secret_values(aws_url.group(1))
        assert "posync/upt/app/state-key" in names
        if sandbox:
            assert len(secret_values) >= 6  # state key, 2 + 2 app credentials, the connection's tokens
        # When it gets SIGINT
        proc.send_signal(signal.SIGINT)
        code = output.finish(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Then it exits 0, removes its state file, and never printed nor stored a secret outside AWS
    assert code == 0, output.stderr
    assert "stopped" in output.stdout
    assert not (tmp_path / "state.json").exists()
    everything = output.stdout + output.stderr + state_text + tick_out
    leaked = [v for v in secret_values if len(v) >= 8 and v in everything]
    assert leaked == []
    assert "Traceback" not in output.stderr


def test_tick_runs_the_real_dispatcher_and_worker(module_runtime: LocalRuntime) -> None:
    # Given a stage with no connections and the real functions/dispatcher and functions/worker
    assert module_runtime.functions.available("dispatcher") and module_runtime.functions.available("worker")
    # When the schedule fires
    report = module_runtime.tick()
    # Then the real dispatcher answered with its report and the (empty) queue drained at once
    assert isinstance(report.dispatcher, dict)
    assert report.messages == 0 and report.idle


def test_posync_local_up_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    # Given `posync local up` without sandboxes
    cmd = [*_posync_command(), "local", "up", "--api-port", "0", "--aws-port", "0", "--no-sandbox"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    output = ProcessOutput(proc)
    try:
        m = output.wait_for(r"API:\s+(http://127\.0\.0\.1:\d+)", timeout=60)
        output.wait_for(r"Ctrl-C stops", timeout=10)
        assert requests.get(f"{m.group(1)}/health", timeout=10).status_code == 200
        assert "sandbox" not in output.stdout.lower().replace("--sandbox", "")
        # When it gets SIGTERM (what a process manager sends)
        proc.send_signal(signal.SIGTERM)
        code = output.finish(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Then it shuts its servers down and exits 0
    assert code == 0, output.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{m.group(1)}/health", timeout=2)


def test_a_busy_port_fails_the_start_and_leaves_nothing_behind(local_runtime: LocalRuntime) -> None:
    # Given a port someone else listens on
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env_before = dict(os.environ)
        # When a runtime wants it for its API, or an embedded AWS for itself
        with pytest.raises(OSError):
            LocalRuntime(api_port=port, sandbox=False, stage="busy").start()
        with pytest.raises(RuntimeError, match=f"port {port}"):
            EmbeddedAws(port).start()
    # Then the start fails with a clear error and the environment is as it was
    assert dict(os.environ) == env_before


def test_posync_local_tick_without_a_running_stack_fails_clearly(tmp_path: Path) -> None:
    # Given no `posync local up` (no state file)
    # When tick is run
    proc = subprocess.run(
        [*_posync_command(), "local", "tick", "--json"],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it says so and exits non-zero
    assert proc.returncode != 0
    assert "no local stack is running" in proc.stderr


# --- the embedded AWS: moto's DynamoDB transactions ------------------------------------------------


def test_dynamodb_transactions_roll_back_without_copying_tables(
    module_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an orders table holding 300 items, and a spy on deep copies of whole tables
    if module_runtime.external_aws:
        pytest.skip("moto's internals only exist with the embedded AWS")
    from moto.dynamodb.models.table import Table

    table_copies: list[int] = []

    def spy_deepcopy(self: Any, memo: Any) -> Any:
        table_copies.append(1)
        raise AssertionError("a whole table was deep-copied")

    module_runtime.apply_env()
    name = module_runtime.settings.orders_table
    ddb = client("dynamodb")
    for start in range(0, 300, 25):
        ddb.batch_write_item(
            RequestItems={
                name: [
                    {
                        "PutRequest": {
                            "Item": {"connection_id": {"S": "c#big"}, "order_id": {"S": f"o{i:04d}"}}
                        }
                    }
                    for i in range(start, start + 25)
                ]
            }
        )
    monkeypatch.setattr(Table, "__deepcopy__", spy_deepcopy, raising=False)

    def put(order_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": name,
                "Item": {"connection_id": {"S": "c#big"}, "order_id": {"S": order_id}, "v": {"S": "new"}},
                **extra,
            }
        }

    # When a transaction of 100 puts fails on its last condition (the item exists)
    failing = [put(f"n{i:03d}") for i in range(99)]
    failing.append(put("o0001", ConditionExpression="attribute_not_exists(order_id)"))
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(TransactItems=failing)
    # Then nothing of it stayed, the existing item is untouched, and no table was copied
    count = ddb.query(
        TableName=name,
        KeyConditionExpression="connection_id = :c",
        ExpressionAttributeValues={":c": {"S": "c#big"}},
        Select="COUNT",
    )["Count"]
    assert count == 300
    kept = ddb.get_item(TableName=name, Key={"connection_id": {"S": "c#big"}, "order_id": {"S": "o0001"}})
    assert "v" not in kept["Item"]
    # When the same transaction succeeds without the failing put
    ddb.transact_write_items(TransactItems=failing[:99])
    # Then all of it is there
    count = ddb.query(
        TableName=name,
        KeyConditionExpression="connection_id = :c",
        ExpressionAttributeValues={":c": {"S": "c#big"}},
        Select="COUNT",
    )["Count"]
    assert count == 399
    assert table_copies == []


# --- the log capture the secret scans rely on ---------------------------------------------------


def test_captured_logs_see_powertools_keys_extras_and_every_logger(captured_logs: LogCapture) -> None:
    # Given the functions' Powertools logger with an appended key, and a plain library logger
    from posync.observability import logger

    mark = captured_logs.mark()
    # When both log, with extra fields
    logger.append_keys(probe_key="appended-value-123")
    try:
        logger.info("hello from powertools", extra={"extra_field": "extra-value-456"})
    finally:
        logger.remove_keys(["probe_key"])
    logging.getLogger("posync_local.some_module").warning("plain %s", "args-789", extra={"k": "extra-0ab"})
    # Then the capture holds the messages and every structured value (what a secret scan must see)
    found = captured_logs.find(
        ["hello from powertools", "appended-value-123", "extra-value-456", "args-789", "extra-0ab"],
        since=mark,
    )
    assert found == [
        "hello from powertools",
        "appended-value-123",
        "extra-value-456",
        "args-789",
        "extra-0ab",
    ]
