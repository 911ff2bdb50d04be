"""CloudWatch's alarm evaluation, enough of it to drive a synthesized alarm with datapoints.

``breaches(alarm, series)`` takes an ``AWS::CloudWatch::Alarm``'s properties and, per
metric (``(namespace, name)``), one value per period (oldest first; ``None`` = no data)
and says whether the alarm would be in ALARM after the last period: the statistic is
assumed already applied per period (the caller passes the per-period Sum/Maximum), the
last ``EvaluationPeriods`` values are compared, ``DatapointsToAlarm`` of them must breach,
and missing data counts as ``TreatMissingData`` says. Metric-math alarms are evaluated
with the functions their expressions use here (FILL, IF, + and comparisons).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Series = Mapping[tuple[str, str], Sequence[float | None]]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def _fill(value: float | None, default: float) -> float:
    return default if value is None else value


def _if(cond: float | bool | None, a: float | None, b: float | None) -> float | None:
    return a if cond else b


def _expression_values(alarm: dict[str, Any], series: Series, periods: int) -> list[float | None]:
    metrics = alarm["Metrics"]
    by_id: dict[str, Sequence[float | None]] = {}
    expression = None
    for m in metrics:
        if "MetricStat" in m:
            stat = m["MetricStat"]["Metric"]
            by_id[m["Id"]] = series.get((stat["Namespace"], stat["MetricName"]), [None] * periods)
        elif m.get("ReturnData", True):
            expression = m["Expression"]
    assert expression is not None, "no expression returns data"
    code = re.sub(r"\bFILL\(", "_fill(", re.sub(r"\bIF\(", "_if(", expression))
    out: list[float | None] = []
    for i in range(periods):
        env = {k: (v[i] if i < len(v) else None) for k, v in by_id.items()}
        # the template's own metric math, with no builtins: only FILL, IF and operators
        out.append(eval(code, {"__builtins__": {}, "_fill": _fill, "_if": _if}, env))
    return out


def breaches(alarm: dict[str, Any], series: Series, periods: int | None = None) -> bool:
    """Whether ``alarm`` is in ALARM after the last period of ``series``."""
    n = periods or max((len(v) for v in series.values()), default=1)
    if "Metrics" in alarm:
        values = _expression_values(alarm, series, n)
    else:
        values = list(series.get((alarm["Namespace"], alarm["MetricName"]), [None] * n))
    evaluation = int(alarm["EvaluationPeriods"])
    needed = int(alarm.get("DatapointsToAlarm", evaluation))
    window = ([None] * evaluation + values)[-evaluation:]
    compare = _COMPARE[alarm["ComparisonOperator"]]
    missing = alarm.get("TreatMissingData", "missing")
    breaching = 0
    for v in window:
        if v is None:
            breaching += missing == "breaching"
        elif compare(float(v), float(alarm["Threshold"])):
            breaching += 1
    return breaching >= needed
