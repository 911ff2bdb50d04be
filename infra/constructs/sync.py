"""The sync pipeline: FIFO queue + FIFO DLQ, the schedule that fires the dispatcher, the worker's source.

Queues are created first (every function's environment names the sync queue); the
schedule and the worker's SQS event source are wired once the functions exist.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from posync.resources import QueueSpec, Resources

WORKER_BATCH_SIZE = 10


class SyncPipeline(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, res: Resources, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.queues: dict[str, sqs.Queue] = {}
        # Dead-letter queues first, so the queues that redrive into them can name them.
        for spec in sorted(res.queues, key=lambda q: q.dead_letter is not None):
            self.queues[spec.key] = self._queue(spec, key)
        self.sync_queue = self.queues["sync"]
        dlq_key = res.queue("sync").dead_letter
        if dlq_key is None:
            raise ValueError("posync.resources: the sync queue must have a dead-letter queue")
        self.dead_letter_queue = self.queues[dlq_key]
        self.schedule: events.Rule | None = None
        self.reconcile_schedule: events.Rule | None = None

    def _queue(self, spec: QueueSpec, key: kms.IKey) -> sqs.Queue:
        dead_letter = None
        if spec.dead_letter is not None:
            dead_letter = sqs.DeadLetterQueue(
                queue=self.queues[spec.dead_letter], max_receive_count=spec.max_receive_count
            )
        return sqs.Queue(
            self,
            "".join(part.capitalize() for part in spec.key.split("_")) + "Queue",
            queue_name=spec.name,
            fifo=spec.fifo or None,
            content_based_deduplication=False if spec.fifo else None,
            visibility_timeout=Duration.seconds(spec.visibility_timeout_s),
            retention_period=Duration.seconds(spec.retention_s),
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            data_key_reuse=Duration.minutes(15),
            enforce_ssl=True,
            dead_letter_queue=dead_letter,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def wire(
        self,
        *,
        dispatcher: lambda_.IFunction,
        worker: lambda_.Function,
        schedule_minutes: int,
        worker_max_concurrency: int,
        reconcile_hours: int = 24,
    ) -> None:
        """The schedules fire the dispatcher (syncs; reconcile sweeps, ``{"kind": "reconcile"}``);
        the worker drains the sync queue."""
        self.schedule = events.Rule(
            self,
            "Schedule",
            description=f"posync sync slot every {schedule_minutes} minutes",
            schedule=events.Schedule.rate(Duration.minutes(schedule_minutes)),
            targets=[
                targets.LambdaFunction(
                    dispatcher, retry_attempts=2, max_event_age=Duration.minutes(schedule_minutes)
                )
            ],
        )
        # A dispatcher pass that fails or times out is retried (Lambda's async retries) while its
        # slot lasts: the retry resumes it (posync.dispatcher); a later one would be the next tick's.
        lambda_.EventInvokeConfig(
            self,
            "DispatcherRetries",
            function=dispatcher,
            retry_attempts=2,
            max_event_age=Duration.minutes(max(1, schedule_minutes)),
        )
        self.reconcile_schedule = events.Rule(
            self,
            "ReconcileSchedule",
            description=f"posync reconciliation sweep every {reconcile_hours} hours",
            schedule=events.Schedule.rate(Duration.hours(reconcile_hours)),
            targets=[
                targets.LambdaFunction(
                    dispatcher,
                    event=events.RuleTargetInput.from_object({"kind": "reconcile"}),
                    retry_attempts=2,
                    max_event_age=Duration.hours(1),
                )
            ],
        )
        # maxConcurrency bounds how many workers (hence how many requests per app) run at once.
        # The event source grants the worker's role what polling needs on this queue (and kms:Decrypt).
        worker.add_event_source(
            sources.SqsEventSource(
                self.sync_queue,
                batch_size=WORKER_BATCH_SIZE,
                report_batch_item_failures=True,
                max_concurrency=worker_max_concurrency,
            )
        )
