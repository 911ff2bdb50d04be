"""The roles the token lifecycle needs (issue 18): the callback takes the refresh lease, the worker
keeps the app breaker, both on the control table only."""

from __future__ import annotations

import pytest

from tests.infra.support import Synth
from tests.infra.test_iam import grants, statements_by_function

pytestmark = pytest.mark.infra


def test_the_callback_can_take_and_release_the_refresh_lease_on_the_control_table(synth: Synth) -> None:
    fns = statements_by_function(synth)
    for action in ("dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem"):
        (table,) = grants(fns["callback"], action)
        assert "ControlTable" in table, action
    # And the worker can read and update the breaker item where it keeps its leases
    for action in ("dynamodb:GetItem", "dynamodb:UpdateItem"):
        assert any("ControlTable" in r for r in grants(fns["worker"], action)), action
