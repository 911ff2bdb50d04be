"""Alarms to an encrypted SNS topic, and one dashboard.

posync's own metrics come from Powertools (EMF log lines, no PutMetricData call): namespace
``posync``, default dimension ``service=posync`` (``posync.observability``). The alarms
watch exactly that dimension set, so a metric published with extra dimensions is not seen
by them; keep the alarmed metrics on the default dimensions.

Every alarm is one whose metric something real emits, each driven past its threshold by
``tests/infra/test_alarms_fire.py``. Missing data is "not breaching" except where silence is
the failure: the dispatcher's heartbeat (``DispatcherRuns``, missing = breaching), and sync
lag while connections exist (``ConnectionsActive`` > 0 with no ``SyncLagSeconds`` is a lag
past the threshold, by metric math).
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from posync.observability import NAMESPACE, SERVICE

DIMENSIONS = {"service": SERVICE}
# The metrics the services publish (sync engine, authorization, exports).
METRICS = (
    "OrdersSynced",
    "SyncLagSeconds",
    "RateLimited",
    "RefreshFailures",
    "OrdersQuarantined",
    "OrdersWithDiscrepancies",
    "PagesFetched",
    "RunDurationMs",
    "ConnectionsNeedingReauth",
    "AppAuthFailures",
    "ConnectionsActive",
    "DispatcherRuns",
    "ApiServerErrors",
)
DLQ_MAX_AGE_S = 2 * 86400  # messages left un-redriven this long alarm (SQS drops them at 14 days)


def posync_metric(name: str, statistic: str, period: Duration) -> cw.Metric:
    return cw.Metric(
        namespace=NAMESPACE, metric_name=name, dimensions_map=DIMENSIONS, statistic=statistic, period=period
    )


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        stage: str,
        key: kms.IKey,
        functions: Mapping[str, lambda_.IFunction],
        dead_letter_queue: sqs.IQueue,
        schedule_minutes: int,
        alarm_email: str | None = None,
        http_api: apigwv2.IHttpApi | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self, "Alarms", display_name=f"posync {stage} alarms", master_key=key, enforce_ssl=True
        )
        if alarm_email is not None:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        self.alarms: dict[str, cw.Alarm] = {}
        five = Duration.minutes(5)

        dlq_depth = dead_letter_queue.metric_approximate_number_of_messages_visible(
            statistic="Maximum", period=five
        )
        self._alarm(
            "SyncDlqDepth",
            dlq_depth,
            threshold=0,
            description="Sync messages reached the dead-letter queue: a connection keeps failing (see its "
            "last_error); redrive after fixing.",
        )
        needs_reauth = cw.MathExpression(
            expression="FILL(refresh, 0) + FILL(reauth, 0)",
            using_metrics={
                "refresh": posync_metric("RefreshFailures", "Sum", five),
                "reauth": posync_metric("ConnectionsNeedingReauth", "Maximum", five),
            },
            label="Refresh failures + connections needing reauth",
            period=five,
        )
        self._alarm(
            "NeedsReauth",
            needs_reauth,
            threshold=0,
            description="A connection needs the merchant to reconnect (refresh refused or revoked).",
        )
        self._alarm(
            "AppAuthFailures",
            posync_metric("AppAuthFailures", "Sum", five),
            threshold=0,
            description="The provider refused the app itself (client id or secret, key pair, aud, clock, "
            "or a token-endpoint outage): refreshes for that app are paused and no merchant is flagged. "
            "See the AppAuthFailed event's kind.",
        )
        self._alarm(
            "QuarantineGrowth",
            posync_metric("OrdersQuarantined", "Sum", Duration.hours(1)),
            threshold=0,
            description="Provider orders failed normalization and were quarantined (quarantine/ prefix).",
        )
        self._alarm(
            "Discrepancies",
            posync_metric("OrdersWithDiscrepancies", "Sum", Duration.hours(1)),
            threshold=0,
            description="Orders were exported with a derived figure (Clover: the tax left of the total) that "
            "disagrees with its computation from the rates by more than a cent: see their `discrepancies`.",
        )
        for name, fn in functions.items():
            self._alarm(
                f"{name.capitalize()}Errors",
                fn.metric_errors(statistic="Sum", period=five),
                threshold=0,
                description=f"The {name} function raised errors.",
            )
        self._signals_that_fire(dead_letter_queue, schedule_minutes, http_api)

        graph = self._graph
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"posync-{stage}",
            widgets=[
                [
                    graph("Orders synced", [posync_metric("OrdersSynced", "Sum", five)]),
                    graph("Sync lag (s)", [posync_metric("SyncLagSeconds", "Maximum", five)]),
                    graph("Provider 429s", [posync_metric("RateLimited", "Sum", five)]),
                ],
                [
                    graph("Token refresh failures", [posync_metric("RefreshFailures", "Sum", five)]),
                    graph("Sync DLQ depth", [dlq_depth]),
                    graph(
                        "Quarantined / flagged orders",
                        [
                            posync_metric("OrdersQuarantined", "Sum", five),
                            posync_metric("OrdersWithDiscrepancies", "Sum", five),
                        ],
                    ),
                ],
                [
                    graph("Pages fetched", [posync_metric("PagesFetched", "Sum", five)]),
                    graph("Run duration (ms, p90)", [posync_metric("RunDurationMs", "p90", five)]),
                    graph(
                        "Function errors (raised)",
                        [
                            fn.metric_errors(statistic="Sum", period=five, label=n)
                            for n, fn in functions.items()
                        ],
                    ),
                ],
                [
                    graph("API 5xx answers", [posync_metric("ApiServerErrors", "Sum", five)]),
                    graph(
                        "Connections (active, needing reauth)",
                        [
                            posync_metric("ConnectionsActive", "Maximum", five),
                            posync_metric("ConnectionsNeedingReauth", "Maximum", five),
                        ],
                    ),
                    graph("Dispatcher runs", [posync_metric("DispatcherRuns", "Sum", five)]),
                ],
            ],
        )

    # -- alarms on what is silent or swallowed (issue 18, item 11) ----------------------------

    def _signals_that_fire(
        self, dead_letter_queue: sqs.IQueue, schedule_minutes: int, http_api: apigwv2.IHttpApi | None
    ) -> None:
        five = Duration.minutes(5)
        slot = Duration.minutes(schedule_minutes)
        # The API functions turn every exception into an answer (posync.answers), so Lambda's
        # Errors never counts them: answers.py counts each 5xx it gives.
        self._alarm(
            "ApiServerErrors",
            posync_metric("ApiServerErrors", "Sum", five),
            threshold=0,
            description="The API answered 5xx (500: a bug, see the function's log by request id; "
            "502: a provider did not answer; 503: not configured).",
        )
        if http_api is not None:
            # What no function answered: timeouts, crashes, throttling, integration failures.
            self._alarm(
                "ApiGateway5xx",
                http_api.metric_server_error(statistic="Sum", period=five),
                threshold=0,
                description="API Gateway answered 5xx for the HTTP API (a function timed out, crashed "
                "or was throttled, or answered 5xx itself).",
            )
        # The dispatcher's heartbeat: one DispatcherRuns per tick, so silence is the failure.
        self._alarm(
            "DispatcherNotRunning",
            posync_metric("DispatcherRuns", "Sum", slot),
            threshold=1,
            comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=2,
            missing=cw.TreatMissingData.BREACHING,
            description=f"The dispatcher did not run for two schedule periods ({2 * schedule_minutes} min): "
            "no syncs are being queued (check its schedule and its Errors alarm).",
        )
        lag_limit_s = 2 * schedule_minutes * 60
        lag = cw.MathExpression(
            expression=f"IF(FILL(active, 0) > 0, FILL(lag, {lag_limit_s + 1}), 0)",
            using_metrics={
                "active": posync_metric("ConnectionsActive", "Maximum", slot),
                "lag": posync_metric("SyncLagSeconds", "Maximum", slot),
            },
            label="Sync lag (s), missing while connections are active = past the limit",
            period=slot,
        )
        self._alarm(
            "SyncLag",
            lag,
            threshold=lag_limit_s,
            description=f"Sync lag above {lag_limit_s} s (two schedule periods), or active connections "
            "with no sync run reporting: syncs are not keeping up.",
        )
        self._alarm(
            "SyncDlqOldestMessage",
            dead_letter_queue.metric_approximate_age_of_oldest_message(
                statistic="Maximum", period=Duration.hours(1)
            ),
            threshold=DLQ_MAX_AGE_S,
            description=f"A sync message has waited in the dead-letter queue over {DLQ_MAX_AGE_S // 3600} h: "
            "redrive it after fixing (SQS deletes it after 14 days).",
        )

    @staticmethod
    def _graph(title: str, metrics: list[cw.IMetric]) -> cw.GraphWidget:
        return cw.GraphWidget(title=title, left=metrics, width=8, height=6)

    def _alarm(
        self,
        alarm_id: str,
        metric: cw.IMetric,
        *,
        threshold: float,
        description: str,
        comparison: cw.ComparisonOperator = cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluation_periods: int = 1,
        missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING,
    ) -> None:
        alarm = cw.Alarm(
            self,
            alarm_id,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=evaluation_periods,
            datapoints_to_alarm=evaluation_periods,
            treat_missing_data=missing,
            alarm_description=description,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        alarm.add_ok_action(cw_actions.SnsAction(self.topic))
        self.alarms[alarm_id] = alarm
