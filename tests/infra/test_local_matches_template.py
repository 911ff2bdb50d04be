"""Infra and code cannot drift: what `posync local up` provisions is what the template declares."""

from __future__ import annotations

from infra.describe import template_resources
from posync_local.runtime import LocalRuntime
from tests.infra.support import Synth


def test_local_stack_provisions_exactly_the_templates_resources(synth: Synth) -> None:
    # Given the synthesized stack for the default stage
    declared = template_resources(synth.template)
    # When the local runtime starts its embedded AWS and provisions the same stage
    with LocalRuntime(sandbox=False, stage="dev") as rt:
        provisioned = rt.describe()
    # Then tables (keys, indexes, TTL), queues (FIFO, DLQ, redrive, visibility), bucket and bus agree
    assert provisioned["tables"] == declared["tables"]
    assert provisioned["queues"] == declared["queues"]
    assert provisioned["buckets"] == declared["buckets"]
    assert provisioned["event_buses"] == declared["event_buses"]
    # And the comparison is not vacuous
    assert len(declared["tables"]) == 3 and len(declared["queues"]) == 2
