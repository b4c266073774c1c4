"""The cost model's fixed lines match the template (so the model cannot drift from it again).

Two ways: template.yaml's SAM source counted here with this file's own small rules (not
bench/template_facts.py, which counts the CloudFormation translation), compared with the lines the
model prices; and small synthetic templates, one per billing rule (a 3-metric math alarm is 3 alarm
metrics, a MaximumConcurrency trigger keeps 5 pollers, rotation adds $1 at the first and second
rotation, the schedule's period comes from its parameter's default, ...).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench import cost
from bench import template_facts as tf
from playvault_local import template as tpl
from tests.unit.test_cost import line, synthetic_inputs, template_facts

MINUTES_A_MONTH = 30 * 24 * 60


# ---------------------------------------------------------------- this file's own reading of the SAM source
def _resolve(node: Any, doc: dict[str, Any]) -> Any:
    """Parameter defaults through Ref, Fn::Sub, Fn::If (Equals/Not conditions); anything else as is."""
    params = {k: str(v.get("Default", "")) for k, v in (doc.get("Parameters") or {}).items()}

    def condition(name: str) -> bool:
        return bool(value(doc["Conditions"][name]))

    def value(n: Any) -> Any:
        if isinstance(n, dict) and len(n) == 1:
            (k, arg), = n.items()
            if k == "Ref" and arg in params:
                return params[arg]
            if k == "Fn::Sub" and isinstance(arg, str):
                return re.sub(r"\$\{(\w+)\}", lambda mt: params.get(mt.group(1), mt.group(0)), arg)
            if k == "Fn::If":
                return value(arg[1] if condition(arg[0]) else arg[2])
            if k == "Fn::Equals":
                return value(arg[0]) == value(arg[1])
            if k == "Fn::Not":
                return not value(arg[0])
        return n

    return value(node)


def _truthy(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def _by_type(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v.get("Properties") or {} for k, v in doc["Resources"].items() if v.get("Type") == kind}


def _sam_counts(doc: dict[str, Any]) -> dict[str, Any]:
    alarm_metrics = 0
    for p in _by_type(doc, "AWS::CloudWatch::Alarm").values():
        alarm_metrics += sum(1 for q in p["Metrics"] if "MetricStat" in q) if p.get("Metrics") else 1
    triggered, schedules = {}, []
    for p in _by_type(doc, "AWS::Serverless::Function").values():
        for event in (p.get("Events") or {}).values():
            props = event.get("Properties") or {}
            if event["Type"] == "SQS":
                queue = props["Queue"]["Fn::GetAtt"][0]
                triggered[queue] = _resolve((props.get("ScalingConfig") or {}).get("MaximumConcurrency"), doc)
            if event["Type"] == "Schedule":
                schedules.append(_resolve(props["Schedule"], doc))
    tables = _by_type(doc, "AWS::DynamoDB::Table")
    return {
        "alarm_metrics": alarm_metrics,
        "triggered": triggered,
        "schedules": schedules,
        "rotation": {k: _truthy(_resolve(p.get("EnableKeyRotation", False), doc))
                     for k, p in _by_type(doc, "AWS::KMS::Key").items()},
        "pitr": {k for k, p in tables.items()
                 if _truthy(_resolve((p.get("PointInTimeRecoverySpecification") or {}).get(
                     "PointInTimeRecoveryEnabled", False), doc))},
        "sse": {k for k, p in tables.items() if _truthy(_resolve((p.get("SSESpecification") or {}).get(
            "SSEEnabled", False), doc))},
    }


def _rate_minutes(expression: str) -> int:
    number, unit = re.fullmatch(r"rate\((\d+) (minutes?|hours?)\)", expression).groups()
    return int(number) * (60 if unit.startswith("hour") else 1)


def _priced(facts: dict[str, Any], month: int = 1, end: str = "high", users: int = 5) -> dict[str, Any]:
    return cost.deployment(synthetic_inputs(), facts, users, month, with_allowances=False, kind="personal", end=end)


# ---------------------------------------------------------------- template.yaml
def test_the_models_fixed_lines_are_the_templates_as_its_sam_source_states_them():
    doc = tpl.load()
    sam = _sam_counts(doc)
    facts = template_facts()
    assert facts["alarm_metrics"] == sam["alarm_metrics"]
    assert set(facts["triggered_queues"]) == set(sam["triggered"])
    assert {q: f["maximum_concurrency"] for q, f in facts["triggered_queues"].items()} == \
        {q: (int(c) if c is not None else None) for q, c in sam["triggered"].items()}
    assert set(facts["pitr_tables"]) == sam["pitr"]
    assert set(facts["sse_kms_tables"]) == sam["sse"]
    assert {k: key["rotation"] for k, key in facts["kms_keys"].items()} == sam["rotation"]

    d, low = _priced(facts, month=36), _priced(facts, month=36, end="low")
    assert line(d, "CloudWatch alarm metrics")["quantity"] == sam["alarm_metrics"]
    polls_a_poller_month = 3 * MINUTES_A_MONTH  # a 20 s long poll: 3 ReceiveMessage a minute
    assert line(d, "SQS: Lambda's idle pollers")["quantity"] == 5 * len(sam["triggered"]) * polls_a_poller_month
    assert line(low, "SQS: Lambda's idle pollers")["quantity"] == sum(
        5 if c is not None else 2 for c in sam["triggered"].values()) * polls_a_poller_month
    runs = sum(MINUTES_A_MONTH / _rate_minutes(s) for s in sam["schedules"])
    assert line(d, "Lambda requests: dispatcher")["quantity"] == pytest.approx(runs)
    assert line(d, "KMS customer managed keys")["quantity"] == len(sam["rotation"])
    assert line(d, "KMS key rotations billed")["quantity"] == 2 * sum(sam["rotation"].values())  # month 36
    assert line(d, "KMS requests: DynamoDB's table keys")["quantity"] == len(sam["sse"]) * 12 * 24 * 30
    assert line(low, "KMS requests: DynamoDB's table keys")["quantity"] == 0


# ---------------------------------------------------------------- one rule per synthetic template
FUNCTION = {"Type": "AWS::Serverless::Function",
            "Properties": {"CodeUri": "functions/worker", "Handler": "app.handler", "Runtime": "python3.12"}}


def _sam(resources: dict[str, Any], parameters: dict[str, Any] | None = None,
         conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"AWSTemplateFormatVersion": "2010-09-09", "Transform": "AWS::Serverless-2016-10-31",
            "Parameters": parameters or {}, "Conditions": conditions or {}, "Resources": resources}


def _metric(namespace: str, name: str, dimensions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"Metric": {"Namespace": namespace, "MetricName": name, **({"Dimensions": dimensions} if dimensions
                                                                      else {})}, "Period": 300, "Stat": "Sum"}


def _alarm(**props: Any) -> dict[str, Any]:
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": {"EvaluationPeriods": 1, "Threshold": 0,
                                                            "ComparisonOperator": "GreaterThanThreshold", **props}}


def test_a_metric_math_alarm_is_billed_for_each_metric_it_reads_and_its_expressions_are_free():
    doc = _sam({
        "Fn": FUNCTION,
        "ThreeQueues": _alarm(Metrics=[
            *({"Id": f"q{i}", "ReturnData": False,
               "MetricStat": _metric("AWS/SQS", "ApproximateNumberOfMessagesVisible",
                                     [{"Name": "QueueName", "Value": f"dlq{i}"}])} for i in range(3)),
            {"Id": "sum", "Expression": "q0 + q1 + q2", "ReturnData": True}]),
        # An account-wide metric (no dimensions) is one metric like any other.
        "AllLambdaErrors": _alarm(Namespace="AWS/Lambda", MetricName="Errors", Statistic="Sum", Period=300),
    })
    facts = tf.facts(document=doc)
    assert {k: a["metrics"] for k, a in facts["alarms"].items()} == {"ThreeQueues": 3, "AllLambdaErrors": 1}
    assert facts["alarm_metrics"] == 4
    assert line(_priced(facts), "CloudWatch alarm metrics")["usd"] == pytest.approx(0.40)


def _queue_trigger(scaling: dict[str, Any] | None) -> dict[str, Any]:
    event = {"Type": "SQS", "Properties": {"Queue": {"Fn::GetAtt": ["Queue", "Arn"]}, "BatchSize": 1,
                                           **({"ScalingConfig": scaling} if scaling else {})}}
    return _sam({"Queue": {"Type": "AWS::SQS::Queue", "Properties": {}},
                 "Idle": {"Type": "AWS::SQS::Queue", "Properties": {}},  # no trigger: no pollers
                 "Fn": {**FUNCTION, "Properties": {**FUNCTION["Properties"], "Events": {"Work": event}}}})


def test_a_trigger_with_maximum_concurrency_keeps_five_pollers_one_without_scales_down_to_two():
    capped = tf.facts(document=_queue_trigger({"MaximumConcurrency": 2}))
    free = tf.facts(document=_queue_trigger(None))
    assert list(capped["triggered_queues"]) == ["Queue"] == list(free["triggered_queues"])
    month = 3 * MINUTES_A_MONTH
    assert line(_priced(capped, end="low"), "SQS: Lambda's idle pollers")["quantity"] == 5 * month
    assert line(_priced(capped, end="high"), "SQS: Lambda's idle pollers")["quantity"] == 5 * month
    assert line(_priced(free, end="low"), "SQS: Lambda's idle pollers")["quantity"] == 2 * month
    assert line(_priced(free, end="high"), "SQS: Lambda's idle pollers")["quantity"] == 5 * month


def _key_template(rotation: Any, default: str = "true") -> dict[str, Any]:
    return _sam({"Fn": FUNCTION, "Key": {"Type": "AWS::KMS::Key", "Properties": {
        "EnableKeyRotation": rotation, "KeyPolicy": {"Version": "2012-10-17", "Statement": []}}}},
        parameters={"RotateTokenKey": {"Type": "String", "Default": default, "AllowedValues": ["true", "false"]}},
        conditions={"Rotate": {"Fn::Equals": [{"Ref": "RotateTokenKey"}, "true"]}})


@pytest.mark.parametrize("rotation", [True, {"Ref": "RotateTokenKey"},
                                      {"Fn::If": ["Rotate", True, False]}], ids=["literal", "ref", "if"])
def test_rotation_adds_a_dollar_a_month_at_the_first_and_second_rotation(rotation: Any):
    facts = tf.facts(document=_key_template(rotation))
    assert facts["kms_keys"] == {"Key": {"rotation": True, "rotation_period_days": 365}}

    def key_usd(month: int) -> float:
        d = _priced(facts, month)
        return line(d, "KMS customer managed keys")["usd"] + line(d, "KMS key rotations billed")["usd"]

    assert [key_usd(m) for m in (1, 12, 13, 24, 25, 36)] == [1, 1, 2, 2, 3, 3]


def test_rotation_off_by_its_parameters_default_costs_the_key_alone():
    facts = tf.facts(document=_key_template({"Ref": "RotateTokenKey"}, default="false"))
    assert facts["kms_keys"]["Key"]["rotation"] is False
    assert line(_priced(facts, 36), "KMS key rotations billed")["usd"] == 0
    on = tf.facts(document=_key_template({"Ref": "RotateTokenKey"}, default="false"),
                  parameters={"RotateTokenKey": "true"})
    assert line(_priced(on, 36), "KMS key rotations billed")["usd"] == 2


def test_the_dispatcher_runs_as_often_as_its_schedule_parameters_default_says():
    def doc(default: int) -> dict[str, Any]:
        event = {"Type": "Schedule", "Properties": {"Schedule": {"Fn::Sub": "rate(${Period} minutes)"}}}
        return _sam({"Fn": {**FUNCTION, "Properties": {**FUNCTION["Properties"], "Events": {"Tick": event}}}},
                    parameters={"Period": {"Type": "Number", "Default": default}})

    assert tf.dispatcher_runs_per_month(tf.facts(document=doc(15))) == 2880
    assert tf.dispatcher_runs_per_month(tf.facts(document=doc(60))) == 720
    assert line(_priced(tf.facts(document=doc(30))), "Lambda requests: dispatcher")["quantity"] == 1440


def _tables(**tables: dict[str, Any]) -> dict[str, Any]:
    def table(props: dict[str, Any]) -> dict[str, Any]:
        return {"Type": "AWS::DynamoDB::Table", "Properties": {
            "BillingMode": "PAY_PER_REQUEST", "AttributeDefinitions": [{"AttributeName": "k", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "k", "KeyType": "HASH"}], **props}}
    return _sam({"Fn": FUNCTION, **{k: table(p) for k, p in tables.items()}})


def test_pitr_is_priced_on_the_pitr_tables_only_and_sse_enabled_tables_bring_kms_calls():
    pitr = {"PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True}}
    sse = {"SSESpecification": {"SSEEnabled": True}}
    facts = tf.facts(document=_tables(PlaysTable={**pitr, **sse}, UsersTable=sse, RollupsTable={}))
    assert facts["pitr_tables"] == ["PlaysTable"]
    assert facts["sse_kms_tables"] == ["PlaysTable", "UsersTable"]
    d = _priced(facts, 12, users=1000)  # enough GB that the line's 4 decimals are exact to 0.1 %
    m = synthetic_inputs()
    plays = d["history_plays"] * (m["play_item_bytes"] + cost.ITEM_OVERHEAD) / cost.GB
    assert line(d, "DynamoDB point-in-time recovery")["quantity"] == pytest.approx(plays, rel=1e-3)
    assert line(d, "KMS requests: DynamoDB's table keys")["quantity"] == 2 * 12 * 24 * 30
    assert line(_priced(facts, 12, end="low"), "KMS requests: DynamoDB's table keys")["quantity"] == 0


def test_a_secure_string_is_a_parameter_functions_read_that_the_template_does_not_create():
    def reader(names: list[str]) -> dict[str, Any]:
        arns = [{"Fn::Sub": f"arn:${{AWS::Partition}}:ssm:${{AWS::Region}}:${{AWS::AccountId}}:parameter{n}"}
                for n in names]
        return {**FUNCTION, "Properties": {**FUNCTION["Properties"], "Policies": [
            {"Statement": [{"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": arns}]}]}}
    doc = _sam({"WorkerFunction": reader(["/app/id", "/app/secret"]),
                "Id": {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/app/id", "Type": "String",
                                                                     "Value": "x"}}})
    assert tf.facts(document=doc)["secure_parameter_reads"] == {"WorkerFunction": ["/app/secret"]}


def test_a_standard_ia_table_stores_for_less():
    standard = tf.facts(document=_tables(RollupsTable={}, PlaysTable={}))
    ia = tf.facts(document=_tables(RollupsTable={"TableClass": "STANDARD_INFREQUENT_ACCESS"}, PlaysTable={}))
    assert ia["tables"]["RollupsTable"]["table_class"] == "STANDARD_INFREQUENT_ACCESS"
    cheap, full = _priced(ia, 36, users=1000), _priced(standard, 36, users=1000)
    assert line(cheap, "DynamoDB storage")["quantity"] == line(full, "DynamoDB storage")["quantity"]
    rollups_gb = cheap["storage_gb_by_table"]["RollupsTable"]
    assert line(full, "DynamoDB storage")["usd"] - line(cheap, "DynamoDB storage")["usd"] == pytest.approx(
        rollups_gb * (0.25 - 0.10), abs=2e-4)
