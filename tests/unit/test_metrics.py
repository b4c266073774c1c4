"""Core and detailed metrics: with DETAILED_METRICS off only the core set reaches the EMF output."""

from __future__ import annotations

import json

import pytest

from playvault import metrics
from playvault.config import ConfigError, MetricsSettings
from playvault.failures import USER_FAILURE_TYPES


@pytest.fixture
def emitted(monkeypatch, capsys):
    """Calls fn with DETAILED_METRICS set as given; returns (metric name, FailureType or None) emitted."""

    def run(detailed: bool, fn) -> set[tuple[str, str | None]]:
        monkeypatch.setattr(metrics, "detailed", detailed)
        metrics.metrics.clear_metrics()
        capsys.readouterr()
        fn()
        out: set[tuple[str, str | None]] = set()
        for name in metrics.metrics.metric_set:
            out.add((name, None))
        metrics.metrics.clear_metrics()
        for line in capsys.readouterr().out.splitlines():  # single_metric flushes its own EMF blob
            blob = json.loads(line)
            for directive in blob["_aws"]["CloudWatchMetrics"]:
                for m in directive["Metrics"]:
                    out.add((m["Name"], blob.get(metrics.FAILURE_TYPE_DIMENSION)))
        return out

    return run


def _everything() -> None:
    for name, (_, dims) in metrics.CATALOG.items():
        if not dims:
            metrics.count(name) if name != metrics.BATCH_DURATION else metrics.record_duration_ms(name, 5.0)
    for failure_type in USER_FAILURE_TYPES:
        metrics.count_failure(failure_type.value)


def test_without_detailed_metrics_only_the_core_set_is_emitted(emitted):
    got = emitted(False, _everything)
    # GapsDetected is core but counted from a log line (FROM_LOGS), not emitted as EMF.
    expected = {(n, None) for n in metrics.CORE - set(metrics.FROM_LOGS) if n != metrics.USERS_FAILED} | {
        (metrics.USERS_FAILED, t) for t in metrics.CORE_FAILURE_TYPES}
    assert got == expected
    assert (metrics.USERS_SKIPPED, None) not in got and (metrics.USERS_FAILED, "NETWORK") not in got


def test_with_detailed_metrics_every_catalog_metric_is_emitted(emitted):
    got = emitted(True, _everything)
    assert {n for n, _ in got} == set(metrics.CATALOG)
    assert {t for n, t in got if n == metrics.USERS_FAILED} == {t.value for t in USER_FAILURE_TYPES}


def test_custom_metric_count_matches_what_is_emitted(emitted):
    types = [t.value for t in USER_FAILURE_TYPES]
    for detailed in (False, True):
        from_logs = len(metrics.FROM_LOGS)  # a metric filter, not EMF: billed the same
        billed = len(metrics.custom_metrics(types, detailed_on=detailed))
        assert billed == len(emitted(detailed, _everything)) + from_logs
    assert len(metrics.custom_metrics(types, detailed_on=False)) <= 10


def test_detailed_metrics_setting_is_validated_and_named():
    assert MetricsSettings.from_env({}).detailed_metrics is False
    assert MetricsSettings.from_env({"DETAILED_METRICS": "true"}).detailed_metrics is True
    with pytest.raises(ConfigError, match="DETAILED_METRICS"):
        MetricsSettings.from_env({"DETAILED_METRICS": "sometimes"})
