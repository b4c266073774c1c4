"""The sustained-rate-limit alarm, through the metric path: what the real dispatcher and worker
handlers print as EMF, aggregated the way CloudWatch evaluates the alarm template.yaml defines
(namespace, metric, dimensions, statistic, period, periods to alarm, gap filling, missing data)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from playvault import metrics
from playvault.batch import BatchOutcome
from playvault.store import state
from playvault_local import template as tpl
from tests import template_rules as rules
from tests.unit.test_worker import create_user, install_clock, make_cipher

EVENTS = Path(__file__).resolve().parents[1] / "events"
NOW = datetime(2025, 3, 14, 10, 0, 7, tzinfo=UTC)
ALARM = "RateLimitedAlarm"


@dataclass
class Alarm:
    """One CloudWatch metric alarm as the template defines it (a metric, or FILL(metric, REPEAT))."""

    namespace: str
    metric: str
    dimensions: dict[str, str]
    statistic: str
    period_s: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    treat_missing: str
    fill_repeat: bool

    @classmethod
    def from_template(cls, template: dict[str, Any], logical: str, parameters: dict[str, str]) -> Alarm:
        props = rules.resolver(template, parameters).value(template["Resources"][logical]["Properties"])
        fill = False
        if "MetricName" in props:
            spec, stat, period = props, props["Statistic"], props["Period"]
        else:
            queries = {q["Id"]: q for q in props["Metrics"]}
            (returned,) = [q for q in props["Metrics"] if q.get("ReturnData", True)]
            if "Expression" in returned:
                match = re.fullmatch(r"FILL\((\w+),\s*REPEAT\)", returned["Expression"])
                if not match:
                    raise ValueError(f"{logical}: this test does not know how to evaluate {returned['Expression']}")
                returned, fill = queries[match.group(1)], True
            stat_spec = returned["MetricStat"]
            spec, stat, period = stat_spec["Metric"], stat_spec["Stat"], stat_spec["Period"]
        return cls(
            namespace=spec["Namespace"], metric=spec["MetricName"],
            dimensions={d["Name"]: d["Value"] for d in spec.get("Dimensions", [])},
            statistic=stat, period_s=int(period), evaluation_periods=int(props["EvaluationPeriods"]),
            datapoints_to_alarm=int(props.get("DatapointsToAlarm", props["EvaluationPeriods"])),
            threshold=float(props["Threshold"]), comparison=props["ComparisonOperator"],
            treat_missing=props.get("TreatMissingData", "missing"), fill_repeat=fill,
        )

    def values_in(self, blob: dict[str, Any]) -> list[float]:
        """The samples of this alarm's metric in one EMF blob (only with exactly its dimensions)."""
        out: list[float] = []
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            if directive["Namespace"] != self.namespace:
                continue
            if not any(set(dims) == set(self.dimensions) for dims in directive["Dimensions"]):
                continue
            if any(blob.get(name) != value for name, value in self.dimensions.items()):
                continue
            if any(m["Name"] == self.metric for m in directive["Metrics"]):
                value = blob[self.metric]
                out += [float(v) for v in (value if isinstance(value, list) else [value])]
        return out

    def state_at(self, samples: list[tuple[datetime, float]], at: datetime) -> str:
        """ALARM or OK, evaluated at `at` over the last evaluation_periods whole periods."""
        def start(moment: datetime) -> int:
            return int(moment.timestamp()) // self.period_s * self.period_s

        by_period: dict[int, list[float]] = {}
        for moment, value in samples:
            by_period.setdefault(start(moment), []).append(value)
        aggregate = {"Sum": sum, "Maximum": max, "SampleCount": len}[self.statistic]
        last = start(at) - self.period_s  # the last complete period
        window = [last - i * self.period_s for i in reversed(range(self.evaluation_periods))]
        values: list[float | None] = [aggregate(by_period[p]) if p in by_period else None for p in window]
        if self.fill_repeat:  # a gap takes the last real value before it (within the queried window)
            for i in range(1, len(values)):
                if values[i] is None:
                    values[i] = values[i - 1]
        compare = {"GreaterThanThreshold": lambda v: v > self.threshold,
                   "GreaterThanOrEqualToThreshold": lambda v: v >= self.threshold}[self.comparison]
        breaching = sum(1 for v in values if (self.treat_missing == "breaching" if v is None else compare(v)))
        return "ALARM" if breaching >= self.datapoints_to_alarm else "OK"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return tpl.load()


@pytest.fixture
def stack_overrides(request: Any) -> dict[str, str]:
    """The stack's parameters (conftest's aws_env provisions the template with them)."""
    return getattr(request, "param", {})


@pytest.fixture
def clocked(emulator: Any, aws_env: Any) -> Any:
    return install_clock(emulator.state, NOW)


def _emf(capsys: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]


def _run_dispatcher(handler: Any, context: Any, clocked: Any, capsys: Any, alarm: Alarm, every: timedelta,
                    until: datetime) -> list[tuple[datetime, float]]:
    """The real dispatcher handler on its schedule from NOW until `until`: its alarm samples, timed."""
    event = json.loads((EVENTS / "eventbridge_scheduled.json").read_text())
    samples = []
    moment = NOW
    while moment < until:
        clocked.set(moment)
        capsys.readouterr()
        handler(event, context)
        samples += [(moment, value) for blob in _emf(capsys) for value in alarm.values_in(blob)]
        moment += every
    return samples


@pytest.mark.parametrize("stack_overrides", [{"DispatchPeriodMinutes": "15"}, {"DispatchPeriodMinutes": "60"}],
                         indirect=True, ids=["every-15-minutes", "hourly"])
def test_a_closed_gate_fires_the_alarm_after_the_configured_periods_and_not_before(
        template, stack_overrides, load_function, lambda_context, clocked, aws_env, capsys):
    """Nobody is dispatched while the gate is closed, so only the dispatcher can say so; every run does."""
    dispatch_minutes = int(stack_overrides["DispatchPeriodMinutes"])
    alarm = Alarm.from_template(template, ALARM, stack_overrides)
    assert (alarm.metric, alarm.dimensions) == (metrics.RATE_LIMITED, {"service": "playvault"})
    assert metrics.RATE_LIMITED in metrics.CORE, "the alarm must not depend on DetailedMetrics"
    periods = alarm.evaluation_periods
    cipher = make_cipher()
    for index in range(3):
        create_user(f"u{index}", "rt", cipher)
    opens_at = NOW + timedelta(seconds=alarm.period_s * (periods + 4))
    state.close_rate_gate(opens_at, NOW, reason="QUOTA_EXCEEDED")
    handler = load_function("DispatcherFunction")
    assert aws_env.env["DISPATCH_PERIOD_MINUTES"] == str(dispatch_minutes)
    context = lambda_context("DispatcherFunction")
    samples = _run_dispatcher(handler, context, clocked, capsys, alarm, timedelta(minutes=dispatch_minutes),
                              opens_at + timedelta(hours=2))
    assert samples, "no dispatcher run reported the closed gate"
    first_period = int(NOW.timestamp()) // alarm.period_s * alarm.period_s
    fires_at = datetime.fromtimestamp(first_period + alarm.period_s * periods, UTC)
    assert alarm.state_at(samples, fires_at - timedelta(seconds=1)) == "OK", "fired before the configured periods"
    assert alarm.state_at(samples, fires_at + timedelta(seconds=1)) == "ALARM"
    assert alarm.state_at(samples, opens_at - timedelta(seconds=1)) == "ALARM", "a long limit stays an alarm"
    # The first run after the gate opens says so: the alarm recovers within one dispatch period.
    recovered = opens_at + timedelta(minutes=dispatch_minutes) + timedelta(seconds=alarm.period_s * periods)
    assert alarm.state_at(samples, recovered) == "OK"


def test_an_open_gate_never_fires_the_alarm(template, load_function, lambda_context, clocked, aws_env, capsys):
    alarm = Alarm.from_template(template, ALARM, {})
    create_user("u0", "rt", make_cipher())
    handler = load_function("DispatcherFunction")
    samples = _run_dispatcher(handler, lambda_context("DispatcherFunction"), clocked, capsys, alarm,
                              timedelta(minutes=15), NOW + timedelta(hours=3))
    assert samples and all(value == 0 for _, value in samples)
    assert alarm.state_at(samples, NOW + timedelta(hours=3)) == "OK"


@pytest.mark.parametrize("quota", [False, True])
def test_users_a_429_deferred_count_in_the_core_set_quota_or_not(load_function, aws_env, capsys, monkeypatch,
                                                                  template, quota):
    """A quota 429 is a rate limit too: it must reach the alarm with DetailedMetrics off."""
    monkeypatch.setattr(metrics, "detailed", False)
    alarm = Alarm.from_template(template, ALARM, {})
    worker = sys.modules[load_function("WorkerFunction").__module__]
    metrics.metrics.clear_metrics()
    worker._record_metrics(BatchOutcome(deferred=["a", "b"], deferred_until=NOW, quota_exceeded=quota))
    metrics.metrics.flush_metrics()
    got = [value for blob in _emf(capsys) for value in alarm.values_in(blob)]
    assert got == [2.0]
