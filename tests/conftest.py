"""Suite-wide settings: a safe default environment, so no test can reach a real AWS account."""

from __future__ import annotations

import os

import pytest

# No test may pick up a developer's real AWS credentials or profile.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_name, None)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "posync")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_DEV", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder so `-m integration`, `-m infra` and `-m e2e` select them."""
    for item in items:
        path = str(item.path)
        if "/tests/integration/" in path or "/tests/sandbox/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/tests/infra/" in path:
            item.add_marker(pytest.mark.infra)
        elif "/tests/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


# Every reading of Clover that the sandbox models (posync_local/sandbox/clover_profile.py): a
# test that takes ``clover_profile`` runs once per preset. Kept as names so this module does
# not import the sandbox (the unit tests run without it).
CLOVER_PROFILES = (
    "documented",
    "href-unexpanded",
    "card-inline",
    "tender-inline",
    "service-charge-line-basis",
)


@pytest.fixture(params=CLOVER_PROFILES)
def clover_profile(request: pytest.FixtureRequest) -> str:
    """The name of one Clover sandbox profile (the test runs under each)."""
    name: str = request.param
    return name
