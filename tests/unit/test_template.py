"""template.yaml is production-ready: least-privilege IAM, metrics that exist, queues, logs and tables.

The checkers live in tests/template_rules.py; every one is also run on a small bad fragment here, so
a checker that silently stops catching its problem fails the suite.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from playvault import metrics
from playvault.failures import USER_FAILURE_TYPES, FailureType
from playvault_local import template as tpl
from tests import template_rules as rules

ROOT = Path(__file__).resolve().parents[2]
CONSTANTS = {k: v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str)}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return tpl.load()


@pytest.fixture(scope="module")
def service(template: dict[str, Any]) -> str:
    return template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]


def fragment(resources: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {"Resources": resources, **sections}


def function(**props: Any) -> dict[str, Any]:
    return {"Type": "AWS::Serverless::Function", "Properties": props}


def statement(action: Any, resource: Any = "arn:aws:dynamodb:us-east-1:1:table/t", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


# ------------------------------------------------------------------ (a) IAM
def test_no_wildcard_actions_or_resources_in_any_policy(template):
    assert rules.iam_problems(template) == []


def test_every_function_has_explicit_policy_statements(template):
    for logical, res in tpl.resources_of_type(template, "AWS::Serverless::Function").items():
        policies = res["Properties"].get("Policies")
        assert policies, f"{logical} has no Policies: it would run with none, or someone will add a broad one"
        assert all("Statement" in p for p in policies), logical


def test_the_documented_exceptions_are_narrow(template):
    """The key policy lets the account root administer the key; the bucket policy denies every
    action without TLS (a Deny, granting nothing). Nothing else is excepted."""
    key = template["Resources"]["TokenKey"]["Properties"]["KeyPolicy"]
    excepted = [s for s in key["Statement"] if ("TokenKey", s.get("Sid")) in rules.DOCUMENTED_EXCEPTIONS]
    assert len(excepted) == 1
    assert excepted[0]["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    bucket = template["Resources"]["UserFilesBucketPolicy"]["Properties"]["PolicyDocument"]
    tls = [s for s in bucket["Statement"] if ("UserFilesBucketPolicy", s.get("Sid")) in rules.DOCUMENTED_EXCEPTIONS]
    assert len(tls) == 1
    assert tls[0]["Effect"] == "Deny"
    assert tls[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert rules.DOCUMENTED_EXCEPTIONS == {("TokenKey", "AccountAdministersTheKey"),
                                           ("UserFilesBucketPolicy", "TlsOnly")}


def test_user_files_bucket_is_private_encrypted_and_expires(template):
    """The bucket contract shared with the account pages: SSE, no public access, TLS only,
    exports/ expire after 1 day and imports/ after 7; object-created events reach EventBridge,
    whose rule on imports/ starts the importer."""
    props = template["Resources"]["UserFilesBucket"]["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert all(props["PublicAccessBlockConfiguration"].values())
    expiry = {r["Prefix"]: r["ExpirationInDays"] for r in props["LifecycleConfiguration"]["Rules"]}
    assert expiry == {"exports/": 1, "imports/": 7}
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True
    importer = template["Resources"]["ImporterFunction"]["Properties"]
    pattern = importer["Events"]["Uploaded"]["Properties"]["Pattern"]
    assert pattern["detail"]["object"]["key"] == [{"prefix": "imports/"}]
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "UserFilesBucket"}]
    s3_grants = [st for st in importer["Policies"][0]["Statement"] if any(a.startswith("s3:") for a in st["Action"])]
    # Reads the uploads, and removes an upload of a user being deleted; never touches exports/.
    assert s3_grants == [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:DeleteObject"],
                          "Resource": {"Fn::Sub": "${UserFilesBucket.Arn}/imports/*"}, **{
                              k: v for k, v in s3_grants[0].items() if k not in ("Effect", "Action", "Resource")}}]
    assert importer["Environment"]["Variables"]["USER_FILES_BUCKET"] == {"Ref": "UserFilesBucket"}


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"Statement": [statement("*")]}, "wildcard"),
        ({"Statement": [statement(["dynamodb:GetItem", "dynamodb:*"])]}, "wildcard"),
        ({"Statement": [statement("dynamodb:Get*")]}, "wildcard"),
        ({"Statement": [statement("dynamodb:GetItem", "*")]}, "Resource '*'"),
        ({"Statement": [statement("dynamodb:GetItem", ["arn:aws:dynamodb:us-east-1:1:table/t", "*"])]}, "Resource '*'"),
        ({"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:x"}]}, "NotAction"),
        ("AmazonDynamoDBFullAccess", "not an explicit policy statement"),
        ({"DynamoDBCrudPolicy": {"TableName": {"Ref": "T"}}}, "not an explicit policy statement"),
    ],
)
def test_iam_checker_catches_broad_function_policies(bad, expected):
    problems = rules.iam_problems(fragment({"Fn": function(Policies=[bad])}))
    assert problems, f"checker missed {bad!r}"
    assert any(expected in p for p in problems), problems


def test_iam_checker_catches_broad_key_policies_and_roles():
    key = {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": {"Statement": [
        statement("kms:*", "*", Sid="SomethingElse", Principal={"AWS": "arn:aws:iam::1:role/r"})]}}}
    role = {"Type": "AWS::IAM::Role", "Properties": {"Policies": [
        {"PolicyName": "p", "PolicyDocument": {"Statement": [statement("sqs:*", "*")]}}]}}
    open_key = {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": {"Statement": [
        statement("kms:Decrypt", "*", Principal="*")]}}}
    problems = rules.iam_problems(fragment({"OtherKey": key, "Role": role, "OpenKey": open_key}))
    assert any(p.startswith("OtherKey.KeyPolicy") and "kms:*" in p for p in problems), problems
    assert any(p.startswith("Role.Policies[0]") and "sqs:*" in p for p in problems), problems
    assert any(p.startswith("Role.Policies[0]") and "Resource '*'" in p for p in problems), problems
    assert any(p.startswith("OpenKey.KeyPolicy") and "any principal" in p for p in problems), problems


def test_iam_checker_accepts_narrow_statements():
    good = {"Statement": [statement(["dynamodb:GetItem", "dynamodb:UpdateItem"], {"Fn::GetAtt": ["T", "Arn"]})]}
    assert rules.iam_problems(fragment({"Fn": function(Policies=[good])})) == []


# ------------------------------------------------------------------ (b) metrics
DETAILED_ON = {"DetailedMetrics": "true"}
DETAILED_OFF = {"DetailedMetrics": "false"}
# EMF metrics plus the ones a log metric filter counts: everything the dashboard and alarms may read.
ALL_METRICS = {**metrics.CATALOG, **{name: (None, ()) for name in metrics.FROM_LOGS}}


def test_custom_metrics_of_alarms_and_dashboard_are_the_ones_the_code_emits(template, service):
    for parameters in (DETAILED_ON, DETAILED_OFF):
        refs = rules.dashboard_metrics(template, parameters) + rules.alarm_metrics(template, parameters)
        custom = [r for r in refs if r.namespace == rules.CUSTOM_NAMESPACE]
        assert len(custom) >= len(metrics.CORE), "the dashboard and alarms read (almost) no custom metric"
        assert rules.metric_problems(refs, ALL_METRICS, service) == []
    assert rules.CUSTOM_NAMESPACE == metrics.NAMESPACE


def test_every_catalog_metric_is_on_the_dashboard_with_detailed_metrics(template):
    assert rules.coverage_problems(rules.dashboard_metrics(template, DETAILED_ON), ALL_METRICS) == []


def test_every_core_metric_is_on_the_dashboard_without_detailed_metrics(template):
    assert rules.coverage_problems(rules.dashboard_metrics(template, DETAILED_OFF), metrics.CORE) == []


def test_every_failure_type_is_on_the_dashboard_with_detailed_metrics(template):
    shown = {dict(r.dimensions).get(metrics.FAILURE_TYPE_DIMENSION)
             for r in rules.dashboard_metrics(template, DETAILED_ON) if r.name == metrics.USERS_FAILED}
    # RATE_LIMITED and APP never count against a user (deferred app-wide: their own metrics).
    user_failures = {t.value for t in FailureType} - {FailureType.RATE_LIMITED, FailureType.APP}
    assert user_failures <= shown


def test_metrics_from_logs_have_their_filter_and_their_log_line(template):
    filters = {props["MetricTransformations"][0]["MetricName"]: props for props in (
        r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Logs::MetricFilter")}
    sources = "\n".join(p.read_text() for p in _sources())
    for name, message in metrics.FROM_LOGS.items():
        assert f'$.message = "{message}"' in filters[name]["FilterPattern"], name
        assert filters[name]["MetricTransformations"][0]["MetricNamespace"] == metrics.NAMESPACE
    # The worker writes the gap line right after the gap record (playvault.archive).
    assert "logger.warning(metrics.GAP_LOG_MESSAGE" in sources


def _custom_series(refs: list[rules.MetricRef]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """(name, dimensions besides service) of the custom metrics among refs: what CloudWatch bills."""
    return {(r.name, tuple(sorted((k, v) for k, v in r.dimensions if k != rules.SERVICE_DIMENSION)))
            for r in refs if r.namespace == rules.CUSTOM_NAMESPACE}


def test_without_detailed_metrics_at_most_10_custom_metrics_and_only_core_ones_are_read(template):
    # The always-free allowance: 10 custom metrics (name + dimensions) and 10 alarm metrics.
    core = set(metrics.custom_metrics([t.value for t in USER_FAILURE_TYPES], detailed_on=False))
    assert len(core) <= 10, sorted(core)
    assert metrics.CORE_FAILURE_TYPES <= {t.value for t in FailureType}
    refs = rules.dashboard_metrics(template, DETAILED_OFF) + rules.alarm_metrics(template, DETAILED_OFF)
    assert _custom_series(refs) <= core, sorted(_custom_series(refs) - core)
    # CloudWatch bills (and the allowance counts) alarm metrics: a metric-math alarm pays for every
    # metric it reads, so the count is of metrics, not of alarms.
    assert len(rules.alarm_metrics(template, DETAILED_OFF)) <= 10, rules.alarm_metrics(template, DETAILED_OFF)


def test_the_detailed_set_is_what_detailed_metrics_adds(template):
    user_failures = [t.value for t in USER_FAILURE_TYPES]
    every = set(metrics.custom_metrics(user_failures, detailed_on=True))
    core = set(metrics.custom_metrics(user_failures, detailed_on=False))
    assert core < every
    on = _custom_series(rules.dashboard_metrics(template, DETAILED_ON))
    off = _custom_series(rules.dashboard_metrics(template, DETAILED_OFF))
    assert on == every, sorted(every ^ on)
    assert off < on


def test_without_detailed_metrics_the_dashboard_stays_within_the_free_50_metrics(template):
    # Always free: 3 dashboards of up to 50 metrics each (AWS and custom namespaces alike).
    assert len(rules.dashboard_bodies(template, DETAILED_OFF)) <= 3
    assert len(rules.dashboard_metrics(template, DETAILED_OFF)) <= 50


def test_without_detailed_metrics_logs_insights_widgets_read_the_structured_log_lines(template):
    body = rules.dashboard_bodies(template, DETAILED_OFF)["Dashboard"]
    queries = [w["properties"]["query"] for w in body["widgets"] if w["type"] == "log"]
    assert any("WorkerLogGroup" in q and 'message = "batch archived"' in q and "failures_by_type" in q
               for q in queries), queries
    assert any("DispatcherLogGroup" in q and 'message = "dispatch report"' in q for q in queries), queries


def test_detailed_metrics_and_tracing_are_parameters_wired_to_the_functions(template):
    params = template["Parameters"]
    assert params["DetailedMetrics"]["Default"] == "false"
    assert params["Tracing"]["Default"] == "false"
    function_globals = template["Globals"]["Function"]
    assert function_globals["Environment"]["Variables"]["DETAILED_METRICS"] == {"Ref": "DetailedMetrics"}
    assert function_globals["Tracing"] == {"Fn::If": ["TracingOn", "Active", "PassThrough"]}
    off = rules.resolver(template, {"Tracing": "false"})
    on = rules.resolver(template, {"Tracing": "true"})
    assert off.value(function_globals["Tracing"]) == "PassThrough"
    assert on.value(function_globals["Tracing"]) == "Active"


def test_custom_metric_alarms_watch_what_they_should(template):
    alarms = {r.where: r for r in rules.alarm_metrics(template)}
    assert alarms["AuthRevokedAlarm"].name == metrics.USERS_FAILED
    assert dict(alarms["AuthRevokedAlarm"].dimensions)[metrics.FAILURE_TYPE_DIMENSION] == FailureType.AUTH_REVOKED
    assert alarms["GapsDetectedAlarm"].name == metrics.GAPS_DETECTED
    assert alarms["RateLimitedAlarm.Metrics[limited]"].name == metrics.RATE_LIMITED
    assert alarms["DispatcherMissedRunAlarm"].name == metrics.USERS_DISPATCHED
    missed = template["Resources"]["DispatcherMissedRunAlarm"]["Properties"]
    assert missed["TreatMissingData"] == "breaching", "no datapoint at all must mean 'the dispatcher did not run'"
    sustained = template["Resources"]["RateLimitedAlarm"]["Properties"]
    assert sustained["EvaluationPeriods"] == sustained["DatapointsToAlarm"], "sustained = every period in a row"


def test_metric_checker_catches_bad_fragments(service):
    body = """{"widgets": [{"type": "metric", "properties": {"metrics": [
        ["PlayVault", "UsersArchivd", "service", "playvault"],
        ["PlayVault", "UsersFailed", "service", "playvault"],
        ["PlayVault", "PlaysArchived", "service", "other"],
        ["PlayVault", "NewTracks", "service", "playvault", "FunctionName", "${WorkerFunction}"],
        ["AWS/Lambda", "Errors", "FunctionName", "${WorkerFunction}"]
    ]}}]}"""
    bad = fragment({
        "Board": {"Type": "AWS::CloudWatch::Dashboard", "Properties": {"DashboardBody": {"Fn::Sub": body}}},
        "Alarm": {"Type": "AWS::CloudWatch::Alarm", "Properties": {
            "Namespace": "PlayVault", "MetricName": "GapsDetectd", "Dimensions": [{"Name": "service", "Value": "x"}]}},
        "MathAlarm": {"Type": "AWS::CloudWatch::Alarm", "Properties": {"Metrics": [
            {"Id": "m1", "MetricStat": {"Metric": {"Namespace": "PlayVault", "MetricName": "RateLimited"}}}]}},
    })
    refs = rules.dashboard_metrics(bad) + rules.alarm_metrics(bad)
    problems = rules.metric_problems(refs, metrics.CATALOG, service)
    assert any("UsersArchivd is not in" in p for p in problems), problems
    assert any("UsersFailed dimensions ['service']" in p for p in problems), problems
    assert any("PlaysArchived service=other" in p for p in problems), problems
    assert any("NewTracks dimensions" in p for p in problems), problems
    assert any(p.startswith("Alarm:") and "GapsDetectd" in p for p in problems), problems
    assert any(p.startswith("MathAlarm.Metrics[m1]") and "RateLimited dimensions" in p for p in problems), problems
    assert not any("Errors" in p for p in problems), "AWS namespaces are not the catalog's business"
    missing = rules.coverage_problems(rules.dashboard_metrics(bad), metrics.CATALOG)
    assert "UsersArchived (in CATALOG) is not on the dashboard" in missing


def _sources() -> list[Path]:
    layer = ROOT / "layers" / "playvault" / "playvault"
    files = [p for p in layer.rglob("*.py") if p.name != "metrics.py"]
    return files + sorted((ROOT / "functions").rglob("*.py"))


def test_every_catalog_metric_is_emitted_by_the_code():
    emitted = rules.emitted_metrics(_sources(), CONSTANTS, metrics.USERS_FAILED)
    assert set(emitted) <= set(metrics.CATALOG), "code emits a metric the catalog does not list"
    assert rules.emission_problems(metrics.CATALOG, emitted) == []


def test_emission_checker_reads_calls_not_mentions(tmp_path):
    source = tmp_path / "code.py"
    source.write_text(
        "from playvault import metrics\n"
        "from playvault.metrics import PLAYS_ARCHIVED, count\n"
        "metrics.count(metrics.USERS_ARCHIVED)\n"
        "count(PLAYS_ARCHIVED, 3)\n"
        "metrics.record_duration_ms(metrics.BATCH_DURATION, 12.0)\n"
        "metrics.count_failure('AUTH')\n"
        "# metrics.count(metrics.GAPS_DETECTED) in a comment emits nothing\n"
        "NAME = metrics.NEW_TRACKS  # a mention is not an emission\n"
    )
    emitted = rules.emitted_metrics([source], CONSTANTS, metrics.USERS_FAILED)
    assert set(emitted) == {"UsersArchived", "PlaysArchived", "BatchDuration", "UsersFailed"}
    problems = rules.emission_problems(metrics.CATALOG, emitted)
    assert "LatePlays is in CATALOG but no code emits it" in problems
    assert "NewTracks is in CATALOG but no code emits it" in problems


# ------------------------------------------------------------------ (c) queue, logs, tables
def test_worker_queue_visibility_partial_failures_and_dead_letter_queue(template):
    assert rules.queue_problems(template) == []


def test_queue_checker_catches_bad_fragment(template):
    bad = copy.deepcopy(template)
    bad["Resources"]["WorkQueue"]["Properties"]["VisibilityTimeout"] = 60
    del bad["Resources"]["WorkQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    del bad["Resources"]["WorkerFunction"]["Properties"]["Events"]["Work"]["Properties"]["FunctionResponseTypes"]
    problems = rules.queue_problems(bad)
    assert any("VisibilityTimeout 60 < 6 x WorkerFunction Timeout" in p for p in problems), problems
    assert any("without maxReceiveCount" in p for p in problems), problems
    assert any("ReportBatchItemFailures" in p for p in problems), problems
    del bad["Resources"]["WorkQueue"]["Properties"]["RedrivePolicy"]
    assert any("no RedrivePolicy" in p for p in rules.queue_problems(bad))


def test_every_function_and_the_api_log_to_their_own_group_with_retention(template):
    assert rules.log_group_problems(template) == []
    for res in tpl.resources_of_type(template, "AWS::Logs::LogGroup").values():
        assert res["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_log_group_checker_catches_bad_fragment(template):
    bad = copy.deepcopy(template)
    res = bad["Resources"]
    del res["WorkerLogGroup"]["Properties"]["RetentionInDays"]
    res["AuthFunction"]["Properties"]["LoggingConfig"]["LogGroup"] = {"Ref": "DispatcherLogGroup"}
    del res["DispatcherFunction"]["Properties"]["FunctionName"]
    del res["AuthApi"]["Properties"]["AccessLogSettings"]
    problems = rules.log_group_problems(bad)
    assert "WorkerLogGroup: no RetentionInDays" in problems
    assert any("AuthFunction.LoggingConfig.LogGroup: log group DispatcherLogGroup is already used" in p
               for p in problems), problems
    assert any(p.startswith("DispatcherFunction: FunctionName must be set") for p in problems), problems
    assert any(p.startswith("AuthApi.AccessLogSettings") for p in problems), problems


def test_tables_on_demand_and_user_data_protected(template):
    assert rules.table_problems(template) == []
    user_data = {k for k, v in tpl.resources_of_type(template, "AWS::DynamoDB::Table").items()
                 if rules.holds_user_data(v["Properties"])}
    assert {"UsersTable", "PlaysTable"} <= user_data


def test_tables_use_the_free_aws_owned_key_and_the_plays_table_class_is_a_parameter(template):
    # SSEEnabled true (the AWS managed key) bills KMS requests: README.md, Cost levers in BENCHMARKS.md.
    tables = tpl.resources_of_type(template, "AWS::DynamoDB::Table")
    assert [name for name, res in tables.items()
            if (res["Properties"].get("SSESpecification") or {}).get("SSEEnabled") not in (None, False)] == []
    assert template["Parameters"]["PlaysTableClass"]["Default"] == "STANDARD"
    table_class = tables["PlaysTable"]["Properties"]["TableClass"]
    assert rules.resolver(template, {}).value(table_class) == "STANDARD"
    ia = "STANDARD_INFREQUENT_ACCESS"
    assert rules.resolver(template, {"PlaysTableClass": ia}).value(table_class) == ia


def test_ephemeral_tables_expire_their_items(template):
    assert rules.ttl_problems(template, ["IdempotencyTable", "StateTable"]) == []
    assert rules.ttl_problems(fragment({"T": {"Type": "AWS::DynamoDB::Table", "Properties": {}}}), ["T"])


def test_table_checker_catches_bad_fragment(template):
    bad = copy.deepcopy(template)
    res = bad["Resources"]
    del res["PlaysTable"]["Properties"]["PointInTimeRecoverySpecification"]
    res["UsersTable"]["DeletionPolicy"] = "Delete"
    del res["UsersTable"]["Properties"]["DeletionProtectionEnabled"]
    res["TracksTable"]["Properties"]["BillingMode"] = "PROVISIONED"
    del res["AlbumsTable"]["Metadata"]["NoBackup"]
    res["ExportsTable"]["Metadata"]["NoBackup"] = " "
    problems = rules.table_problems(bad)
    assert "PlaysTable: holds user data without point-in-time recovery" in problems
    assert "AlbumsTable: no reason (Metadata NoBackup) given without point-in-time recovery" in problems
    assert "ExportsTable: holds user data without point-in-time recovery" in problems
    # derived from the plays, whose backup is gone here
    assert "RollupsTable: holds user data without point-in-time recovery" in problems
    assert not any(p.startswith(("ArtistsTable", "SessionsTable", "GapsTable")) for p in problems), problems
    assert "UsersTable: holds user data, DeletionPolicy is not Retain" in problems
    assert "UsersTable: holds user data without DeletionProtectionEnabled" in problems
    assert "TracksTable: BillingMode is not PAY_PER_REQUEST (on-demand)" in problems


# ------------------------------------------------------------------ alarms and dashboard wiring
def test_every_alarm_notifies_the_alarm_topic(template):
    alarms = tpl.resources_of_type(template, "AWS::CloudWatch::Alarm")
    assert len(alarms) >= 6
    for logical, res in alarms.items():
        assert res["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["TopicArn"] == {"Ref": "AlarmTopic"}


def test_one_account_wide_errors_alarm_and_the_dashboard_names_the_failing_function(template):
    errors = [ref for ref in rules.alarm_metrics(template) if (ref.namespace, ref.name) == ("AWS/Lambda", "Errors")]
    assert [(ref.where, ref.dimensions) for ref in errors] == [("FunctionErrorsAlarm", ())]
    props = template["Resources"]["FunctionErrorsAlarm"]["Properties"]
    # Any error in a 5-minute period: what each of the per-function alarms it replaces fired on, or sooner.
    assert (props["Statistic"], props["Period"], props["EvaluationPeriods"]) == ("Sum", 300, 1)
    assert (props["ComparisonOperator"], props["Threshold"], props["TreatMissingData"]) == (
        "GreaterThanThreshold", 0, "notBreaching")
    functions = set(tpl.resources_of_type(template, "AWS::Serverless::Function"))
    shown = {dict(ref.dimensions).get("FunctionName") for ref in rules.dashboard_metrics(template, DETAILED_OFF)
             if (ref.namespace, ref.name) == ("AWS/Lambda", "Errors")}
    assert shown == functions, shown


def test_dead_letter_queue_alarm_watches_every_dead_letter_queue(template):
    props = template["Resources"]["DeadLetterQueueAlarm"]["Properties"]
    watched = {props["Dimensions"][0]["Value"]["Fn::GetAtt"][0]}
    dead_letter_queues = {name for name, res in template["Resources"].items() if res["Type"] == "AWS::SQS::Queue"
                          and any(other.get("Properties", {}).get("RedrivePolicy", {}).get("deadLetterTargetArn")
                                  == {"Fn::GetAtt": [name, "Arn"]} for other in template["Resources"].values())}
    assert watched == dead_letter_queues == {"DeadLetterQueue"}  # one queue: one alarm metric
    assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0)


def test_two_queues_are_polled_by_lambda_and_imports_continue_through_the_jobs_queue(template):
    """Every queue with a Lambda trigger is long-polled around the clock (billed requests): the work
    queue and the jobs queue only. The importer is invoked asynchronously (uploads, continuations)."""
    triggered = {event["Properties"]["Queue"]["Fn::GetAtt"][0]: function
                 for function, res in tpl.resources_of_type(template, "AWS::Serverless::Function").items()
                 for event in (res["Properties"].get("Events") or {}).values() if event["Type"] == "SQS"}
    assert triggered == {"WorkQueue": "WorkerFunction", "JobsQueue": "JobsFunction"}
    importer = template["Resources"]["ImporterFunction"]["Properties"]
    assert importer["ReservedConcurrentExecutions"] == 3  # uploads and continuations: no more imports at once
    assert importer["Environment"]["Variables"]["JOBS_QUEUE_URL"] == {"Ref": "JobsQueue"}
    jobs_env = template["Resources"]["JobsFunction"]["Properties"]["Environment"]["Variables"]
    assert jobs_env["IMPORTER_FUNCTION_NAME"] == {"Ref": "ImporterFunction"}


def _sub_texts(node: Any) -> list[str]:
    """Every !Sub text in node (the variable maps' own names excluded by the caller)."""
    if isinstance(node, list):
        return [t for item in node for t in _sub_texts(item)]
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        if key == "Fn::Sub":
            out += [value] if isinstance(value, str) else [value[0], *_sub_texts(value[1])]
        else:
            out += _sub_texts(value)
    return out


def test_dashboard_variables_resolve_to_parameters_resources_or_pseudo_parameters(template):
    known = set(template["Resources"]) | set(template["Parameters"]) | {"AWS::Region", "AWS::AccountId",
                                                                         "AWS::Partition", "AWS::URLSuffix"}
    for res in tpl.resources_of_type(template, "AWS::CloudWatch::Dashboard").values():
        sub = res["Properties"]["DashboardBody"]["Fn::Sub"]
        local = set(sub[1]) if isinstance(sub, list) else set()
        for text in _sub_texts(res["Properties"]["DashboardBody"]):
            names = {m.split(".", 1)[0] for m in re.findall(r"\$\{([^}!][^}]*)\}", text)}
            assert names <= known | local, names - known - local
    assert rules.dashboard_bodies(template, DETAILED_ON) and rules.dashboard_bodies(template, DETAILED_OFF)


# ------------------------------------------------------------------ custom cfn-lint rules (tools/cfn_rules)
def _cfn_lint(text: str) -> list[tuple[str, str]]:
    from cfnlint.api import ManualArgs, lint

    config = ManualArgs(regions=["us-east-1"], append_rules=[str(ROOT / "tools" / "cfn_rules")])
    return [(m.rule.id, m.message) for m in lint(text, config=config) if m.rule.id.startswith("E91")]


def test_custom_cfn_lint_rules_pass_on_the_template():
    assert _cfn_lint((ROOT / "template.yaml").read_text(encoding="utf-8")) == []


def test_custom_cfn_lint_rules_catch_a_bad_template():
    from cfnlint.decode import decode_str

    document, errors = decode_str((ROOT / "template.yaml").read_text(encoding="utf-8"))
    assert not errors
    res = document["Resources"]
    res["DispatcherFunction"]["Properties"]["Policies"][0]["Statement"][0]["Action"] = ["dynamodb:*"]
    del res["WorkerFunction"]["Properties"]["LoggingConfig"]
    del res["DispatcherLogGroup"]["Properties"]["RetentionInDays"]
    found = _cfn_lint(json.dumps(document))
    assert ("E9102", "DispatcherFunction: wildcard action 'dynamodb:*'") in found, found
    assert ("E9101", "WorkerFunction does not log to an AWS::Logs::LogGroup of this template") in found, found
    assert ("E9101", "DispatcherLogGroup has no RetentionInDays") in found, found


# ------------------------------------------------------------------ the user-files bucket and account plane
def test_user_files_bucket_is_private_encrypted_tls_only_and_expires_files(template):
    bucket = template["Resources"]["UserFilesBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert all(bucket["PublicAccessBlockConfiguration"][k] is True for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    expiry = {r["Prefix"]: r["ExpirationInDays"] for r in bucket["LifecycleConfiguration"]["Rules"]
              if r["Status"] == "Enabled"}
    assert expiry == {"exports/": 1, "imports/": 7}
    policy = template["Resources"]["UserFilesBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "UserFilesBucket"}
    (tls,) = policy["PolicyDocument"]["Statement"]
    assert tls["Effect"] == "Deny" and tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {"s3:GetObject", "s3:PutObject"} <= set(tls["Action"])


def test_deletion_waits_at_least_the_workers_timeout(template):
    """A poll that passed its user check just before the mark may write plays until it times out."""
    worker_timeout = int(template["Resources"]["WorkerFunction"]["Properties"]["Timeout"])
    assert int(template["Parameters"]["DeletionGraceSeconds"]["Default"]) >= worker_timeout


def test_account_functions_reach_user_files_only_under_their_prefixes(template):
    for logical in ("AccountFunction", "JobsFunction"):
        for statement in template["Resources"][logical]["Properties"]["Policies"][0]["Statement"]:
            if not any(a.startswith("s3:") for a in statement["Action"]):
                continue
            for target in statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]:
                text = json.dumps(target)
                object_action = any(a in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                          "s3:AbortMultipartUpload") for a in statement["Action"])
                assert "UserFilesBucket" in text, (logical, target)
                if object_action:
                    assert "/exports/*" in text or "/imports/*" in text, (logical, target)


def test_token_key_rotation_is_a_parameter_off_by_default(template):
    # Each of the first two rotations adds $1 a month to the key's $1 (README.md, Tokens at rest: why off).
    assert template["Parameters"]["TokenKeyRotation"]["Default"] == "false"
    rotation = template["Resources"]["TokenKey"]["Properties"]["EnableKeyRotation"]
    assert rules.resolver(template, {}).value(rotation) is False
    assert rules.resolver(template, {"TokenKeyRotation": "true"}).value(rotation) is True
