"""cdk-nag: the AwsSolutions pack on the whole app, and acknowledgments that must say why.

cdk-nag 3 runs as a CDK policy-validation plugin: any unacknowledged finding, error or
warning, fails the synth. Every acknowledgment carries a written reason; with
``write_suppressions_to_cloud_formation`` they are also copied into each resource's
``Metadata.cdk_nag.rules_to_suppress`` so the template keeps the audit trail.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, App, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

MIN_REASON_LENGTH = 20


def apply_checks(app: App) -> None:
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge one finding (``AwsSolutions-XX`` or ``AwsSolutions-IAM5[Resource::...]``) on ``scope``."""
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise ValueError(f"acknowledging {rule_id} needs a real reason, got {reason!r}")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))
