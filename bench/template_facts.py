"""What template.yaml deploys that AWS bills by the month, counted from the template itself.

The cost model (bench/cost.py) takes its fixed lines from here, never from figures typed into it:
alarm metrics, dashboards, customer managed KMS keys and their rotation, SQS queues with a Lambda
trigger (each long-polled around the clock), tables with point-in-time recovery or with
SSEEnabled (the AWS managed key: KMS request charges), table classes, schedules, and the SSM
SecureString parameters functions read. Counted on the CloudFormation template `sam deploy` would
create (playvault_local.translate), with every parameter at its default unless `parameters` says
otherwise, and generically: by resource type and property, never by a resource's name, so a changed
template (a shared dead-letter queue, an account-wide alarm metric, a removed queue, a rotation
parameter) is counted as it is.

Rules, each as AWS bills it (https://aws.amazon.com/cloudwatch/pricing/ and the pages in cost.py):
- an alarm on one metric reads 1 alarm metric; a metric-math alarm reads one per MetricStat entry
  (its expressions are free); a period under 60 s is a high-resolution alarm;
- an SQS queue is triggered when an AWS::Lambda::EventSourceMapping (enabled) reads it;
- rotation is on when EnableKeyRotation resolves to true (a literal or a !Ref/!If on a parameter);
- a SecureString is a parameter a function may read (ssm:GetParameter in its role) that the template
  does not create: CloudFormation cannot create SecureString parameters, so the operator does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playvault_local import template as tpl
from playvault_local.translate import translate

_DAYS_PER_MONTH = 30
_ON = {True, "true", "True", "TRUE"}


class _Attributes(dict):
    """Placeholder physical ids: any attribute of a resource resolves to a string naming it."""

    def __init__(self, logical: str):
        super().__init__(Ref=logical, Arn=f"arn:placeholder:{logical}")
        self.logical = logical

    def __missing__(self, attribute: str) -> str:
        return f"{self.logical}.{attribute}"


class _Physical(dict):
    def __missing__(self, logical: str) -> _Attributes:
        self[logical] = _Attributes(logical)
        return self[logical]


class _Resolver(tpl.Resolver):
    """Resolves intrinsics against parameter defaults; resources resolve to placeholders."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, str] | None):
        super().__init__(template, _Physical(), parameters)
        self._resources = set(template.get("Resources") or {})

    def ref(self, name: str) -> Any:
        if name in self._resources:
            return self.physical[name]["Ref"]
        return super().ref(name)


def _on(value: Any) -> bool:
    return value in _ON


def _target(node: Any) -> str | None:
    """The logical id a !GetAtt X.Arn / !Ref X points at, else None."""
    if isinstance(node, dict) and len(node) == 1:
        (key, arg), = node.items()
        if key == "Fn::GetAtt":
            return arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
        if key == "Ref":
            return str(arg)
    return None


def schedule_runs_per_month(expression: str) -> float:
    """Runs a month (30 days) of a rate() expression; a cron() one is counted by its fields
    minute and hour (every day): '*/15 * ...' runs 96 times a day."""
    expression = expression.strip()
    period_s = tpl.rate_seconds(expression)
    if period_s is not None:
        return _DAYS_PER_MONTH * 86400 / period_s
    match = re.fullmatch(r"cron\((\S+)\s+(\S+)\s+.*\)", expression)
    if match:
        def count(field: str, size: int) -> int:
            if field in ("*", "?"):
                return size
            step = re.fullmatch(r"(?:\*|\d+)/(\d+)", field)
            return size // int(step.group(1)) if step else len(field.split(","))
        return _DAYS_PER_MONTH * count(match.group(1), 60) * count(match.group(2), 24)
    raise ValueError(f"schedule expression {expression!r}: neither rate(N unit) nor cron(...)")


def facts(template_path: Path | str = tpl.TEMPLATE_PATH, parameters: dict[str, str] | None = None,
          document: dict[str, Any] | None = None) -> dict[str, Any]:
    """The billed-by-the-month facts of the template (see the module docstring)."""
    source = document if document is not None else tpl.load(template_path)
    cfn = translate(source, parameters=parameters)
    resolver = _Resolver(cfn, parameters)
    resources = {k: v for k, v in cfn["Resources"].items()
                 if v.get("Condition") is None or resolver.condition(v["Condition"])}

    def props(resource: dict[str, Any]) -> dict[str, Any]:
        return resolver.value(resource.get("Properties") or {})

    def of_type(kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in resources.items() if v.get("Type") == kind}

    # -- CloudWatch alarms: alarm metrics
    alarms = {}
    for logical, resource in of_type("AWS::CloudWatch::Alarm").items():
        p = props(resource)
        if p.get("Metrics"):
            stats = [m for m in p["Metrics"] if "MetricStat" in m]
            periods = [int(m["MetricStat"].get("Period", 60)) for m in stats]
            metrics = len(stats)
        else:
            periods, metrics = [int(p.get("Period", 60))], 1
        alarms[logical] = {"metrics": metrics, "high_resolution": any(period < 60 for period in periods)}
    composite = len(of_type("AWS::CloudWatch::CompositeAlarm"))

    # -- dashboards: their metrics and Logs Insights widgets
    dashboards = {}
    for logical, resource in of_type("AWS::CloudWatch::Dashboard").items():
        widgets = json.loads(props(resource)["DashboardBody"]).get("widgets") or []
        dashboards[logical] = {
            "metrics": sum(len((w.get("properties") or {}).get("metrics") or []) for w in widgets),
            "log_widgets": sum(1 for w in widgets if w.get("type") == "log")}

    # -- KMS customer managed keys
    keys = {}
    for logical, resource in of_type("AWS::KMS::Key").items():
        p = props(resource)
        keys[logical] = {"rotation": _on(p.get("EnableKeyRotation", False)),
                         "rotation_period_days": int(p.get("RotationPeriodInDays", 365))}

    # -- SQS queues a Lambda event source mapping polls
    queues = of_type("AWS::SQS::Queue")
    triggered = {}
    for logical, resource in of_type("AWS::Lambda::EventSourceMapping").items():
        raw = (resource.get("Properties") or {})
        p = props(resource)
        if not _on(p.get("Enabled", True)):
            continue
        queue = _target(raw.get("EventSourceArn"))
        arn = str(p.get("EventSourceArn", ""))
        if queue not in queues and ":sqs:" not in arn:
            continue  # a stream or another source: no idle polling of SQS
        scaling = p.get("ScalingConfig") or {}
        provisioned = p.get("ProvisionedPollerConfig") or {}
        triggered[queue or arn] = {
            "mapping": logical, "function": _target(raw.get("FunctionName")),
            "maximum_concurrency": int(scaling["MaximumConcurrency"]) if "MaximumConcurrency" in scaling else None,
            "minimum_pollers": int(provisioned["MinimumPollers"]) if "MinimumPollers" in provisioned else None}

    # -- DynamoDB tables
    tables = {}
    for logical, resource in of_type("AWS::DynamoDB::Table").items():
        p = props(resource)
        sse = p.get("SSESpecification") or {}
        tables[logical] = {
            "pitr": _on((p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled", False)),
            # SSEEnabled true: a KMS key (the AWS managed aws/dynamodb one unless KMSMasterKeyId names
            # another); false or absent: the AWS owned key, free.
            "sse_kms": _on(sse.get("SSEEnabled", False)),
            "sse_key": sse.get("KMSMasterKeyId") or ("aws/dynamodb" if _on(sse.get("SSEEnabled", False)) else None),
            "table_class": p.get("TableClass", "STANDARD"),
            "billing_mode": p.get("BillingMode", "PROVISIONED")}

    # -- schedules (EventBridge rules and Scheduler schedules) and the functions they run
    schedules = {}
    for logical, resource in {**of_type("AWS::Events::Rule"), **of_type("AWS::Scheduler::Schedule")}.items():
        p = props(resource)
        expression = p.get("ScheduleExpression")
        if not expression or p.get("State", "ENABLED") not in ("ENABLED", "ENABLE"):
            continue
        raw = resource.get("Properties") or {}
        targets = raw.get("Targets") or ([raw["Target"]] if raw.get("Target") else [])
        schedules[logical] = {"expression": expression, "runs_per_month": schedule_runs_per_month(expression),
                              "functions": [t for t in (_target(x.get("Arn")) for x in targets) if t]}

    # -- SSM parameters functions read: which the template does not create (SecureString)
    created = {str(props(r).get("Name")) for r in of_type("AWS::SSM::Parameter").values()}
    roles = {}
    for logical, resource in of_type("AWS::Lambda::Function").items():
        role = _target((resource.get("Properties") or {}).get("Role"))
        if role:
            roles[role] = logical
    secure_reads: dict[str, list[str]] = {}
    for role, function in roles.items():
        if role not in resources:
            continue
        for policy in props(resources[role]).get("Policies") or []:
            for statement in (policy.get("PolicyDocument") or {}).get("Statement") or []:
                actions = statement.get("Action")
                actions = [actions] if isinstance(actions, str) else actions or []
                if statement.get("Effect") != "Allow" or not any(a in ("ssm:GetParameter", "ssm:GetParameters")
                                                                 for a in actions):
                    continue
                arns = statement.get("Resource")
                for arn in [arns] if isinstance(arns, str) else arns or []:
                    name = str(arn).split(":parameter", 1)[-1]
                    if name not in created:
                        secure_reads.setdefault(function, []).append(name)

    functions = {k: {"memory_mb": int(props(v).get("MemorySize", 128)),
                     "reserved_concurrency": props(v).get("ReservedConcurrentExecutions")}
                 for k, v in of_type("AWS::Lambda::Function").items()}
    return {
        "alarms": alarms,
        "alarm_metrics": sum(a["metrics"] for a in alarms.values() if not a["high_resolution"]),
        "alarm_metrics_high_resolution": sum(a["metrics"] for a in alarms.values() if a["high_resolution"]),
        "composite_alarms": composite,
        "dashboards": dashboards,
        "dashboard_metrics": sum(d["metrics"] for d in dashboards.values()),
        "logs_insights_widgets": sum(d["log_widgets"] for d in dashboards.values()),
        "metric_filters": sorted({t["MetricName"] for r in of_type("AWS::Logs::MetricFilter").values()
                                  for t in props(r).get("MetricTransformations") or []}),
        "kms_keys": keys,
        "triggered_queues": triggered,
        "queues": sorted(queues),
        "tables": tables,
        "pitr_tables": sorted(k for k, t in tables.items() if t["pitr"]),
        "sse_kms_tables": sorted(k for k, t in tables.items() if t["sse_kms"]),
        "schedules": schedules,
        "secure_parameter_reads": {k: sorted(set(v)) for k, v in secure_reads.items()},
        "functions": functions,
        "parameters": {k: v for k, v in resolver.parameters.items()},
    }


def dispatcher_runs_per_month(f: dict[str, Any]) -> float:
    """Runs a month of the scheduled functions (the dispatcher: the template's only schedule today)."""
    return sum(s["runs_per_month"] for s in f["schedules"].values())


def pollers(queue: dict[str, Any]) -> tuple[int, int]:
    """Idle pollers of one triggered queue, (low, high). Lambda's standard mode starts 5 pollers and
    scales them down to as few as 2 when traffic is low, but not when MaximumConcurrency is set
    (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html); provisioned mode
    keeps MinimumPollers."""
    if queue.get("minimum_pollers"):
        return queue["minimum_pollers"], max(queue["minimum_pollers"], 5)
    return (5 if queue.get("maximum_concurrency") else 2), 5


def key_rotations_billed(key: dict[str, Any], month: int) -> int:
    """KMS bills $1 a month more per rotation for a key's first and second rotation
    (https://aws.amazon.com/kms/pricing/): rotations done when month `month` of the key's life starts."""
    if not key["rotation"]:
        return 0
    age_days = (month - 1) * 365 / 12
    return min(2, int(age_days // key["rotation_period_days"]))
