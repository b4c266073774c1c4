"""template.yaml deploys: translated by aws-sam-translator as `sam deploy` does, CloudFormation gets a
template without circular dependencies, and cfn-lint (with AWS's serverless rules) finds nothing on
the translation or the source, except what the template's Metadata waives with a reason.

The checkers live in tests/template_rules.py; each is also run on a small bad fragment here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from playvault_local import template as tpl
from playvault_local.translate import translate
from tests import template_rules as rules

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_RULES = str(ROOT / "tools" / "cfn_rules")


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return tpl.load()


@pytest.fixture(scope="module")
def translated(source) -> dict[str, Any]:
    return translate(source)


def resource(type_: str = "AWS::SQS::Queue", **props: Any) -> dict[str, Any]:
    return {"Type": type_, "Properties": props}


# ------------------------------------------------------------------ the cycle walker on fragments
def test_a_two_resource_cycle_is_named():
    fragment = {"Resources": {"A": resource(Peer={"Ref": "B"}), "B": resource(Peer={"Fn::GetAtt": ["A", "Arn"]})}}
    assert rules.dependency_cycles(fragment) == ["A -> B -> A"]


def test_a_three_resource_cycle_through_sub_and_getatt_strings_is_named():
    fragment = {"Resources": {
        "Bucket": resource(Origin={"Fn::Sub": "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}),
        # the OpenAPI body SAM generates: an integration URI deep inside, in Sub's [text, {vars}] form
        "Api": resource(Body={"paths": {"/me": {"get": {"x-amazon-apigateway-integration": {"uri": {
            "Fn::Sub": ["arn:${Partition}:apigateway:${AWS::Region}:lambda:path/${Fn.Arn}/invocations",
                        {"Partition": {"Ref": "AWS::Partition"}}]}}}}}}),
        "Fn": resource(Variables={"BUCKET": {"Fn::If": ["SomeCondition", {"Fn::GetAtt": "Bucket.Arn"}, "none"]}}),
    }}
    assert rules.dependency_cycles(fragment) == ["Api -> Fn -> Bucket -> Api"]


def test_a_depends_on_cycle_is_named_and_every_member_starts_a_line():
    fragment = {"Resources": {"A": {"Type": "T", "DependsOn": "B"}, "B": {"Type": "T", "DependsOn": ["C"]},
                              "C": resource(Role={"Ref": "A"}), "D": resource(Role={"Ref": "A"}),
                              "E": resource(Role={"Ref": "C"}), "F": {"Type": "T", "DependsOn": "C"},
                              "G": resource(Self={"Fn::Sub": "${G.Arn}"})}}
    assert rules.dependency_cycles(fragment) == ["A -> B -> C -> A", "G -> G"]


def test_parameters_pseudo_parameters_conditions_and_sub_variables_are_not_resources():
    fragment = {
        "Parameters": {"Stage": {"Type": "String"}},
        "Conditions": {"B": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}},
        "Resources": {
            # "B" is also a condition and a Sub variable here: neither is a reference to resource B.
            "A": resource(Name={"Fn::Sub": ["${Stage}-${AWS::StackName}-${B}", {"B": "literal"}]},
                          Escaped={"Fn::Sub": "${!B}"}, Mode={"Fn::If": ["B", "x", {"Ref": "AWS::NoValue"}]}),
            "B": {"Type": "T", "Condition": "B", "Properties": {"Source": {"Ref": "A"}}},
        },
    }
    assert rules.dependency_graph(fragment) == {"A": set(), "B": {"A"}}
    assert rules.dependency_cycles(fragment) == []


def test_no_cycle_is_reported_for_a_diamond():
    fragment = {"Resources": {"Top": resource(L={"Ref": "Left"}, R={"Ref": "Right"}),
                              "Left": resource(B={"Ref": "Bottom"}), "Right": {"Type": "T", "DependsOn": "Bottom"},
                              "Bottom": resource()}}
    assert rules.dependency_graph(fragment)["Top"] == {"Left", "Right"}
    assert rules.dependency_cycles(fragment) == []


# ------------------------------------------------------------------ the real template
def test_the_translated_template_has_no_circular_dependency(translated):
    assert rules.dependency_cycles(translated) == []
    # The walker sees what matters: the API's OpenAPI body names the functions it integrates.
    assert "AccountFunction" in rules.dependency_graph(translated)["AuthApi"]


def test_the_upload_bucket_cors_rule_made_a_cycle_through_the_generated_api_body(source):
    """The cycle issue 19 found, kept as the proof that the walker sees it: a CORS origin naming the
    API made the bucket depend on the API, whose generated body names the account function, whose
    environment and role name the bucket. The upload is a plain form POST (a navigation, never
    subject to CORS), so the rule granted nothing the pages use and is gone."""
    assert "CorsConfiguration" not in source["Resources"]["UserFilesBucket"]["Properties"]
    old = copy.deepcopy(source)
    old["Resources"]["UserFilesBucket"]["Properties"]["CorsConfiguration"] = {"CorsRules": [{
        "AllowedMethods": ["POST"], "AllowedHeaders": ["*"],
        "AllowedOrigins": [{"Fn::Sub": "https://${AuthApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}]}]}
    assert rules.dependency_cycles(translate(old)) == [
        "AccountFunction -> AccountFunctionRole -> UserFilesBucket -> AuthApi -> AccountFunction",
        "AccountFunction -> UserFilesBucket -> AuthApi -> AccountFunction",
    ]


# ------------------------------------------------------------------ cfn-lint with AWS's serverless rules
def _show(findings: list[str]) -> str:
    return "cfn-lint found:\n  " + "\n  ".join(findings)


def test_cfn_lint_and_the_serverless_rules_find_nothing_on_the_translated_template(translated):
    findings = rules.lint_findings(json.dumps(translated))
    assert findings == [], _show(findings)


def test_cfn_lint_the_serverless_and_the_custom_rules_find_nothing_on_the_source():
    findings = rules.lint_findings((ROOT / "template.yaml").read_text(encoding="utf-8"),
                                   (rules.SERVERLESS_RULES, CUSTOM_RULES))
    assert findings == [], _show(findings)


def test_the_serverless_rules_are_loaded(translated):
    """A rule set that silently failed to load would find nothing: without the waivers it finds the
    dead-letter queues that have no dead-letter queue of their own (ES6000)."""
    unwaived = copy.deepcopy(translated)
    for res in unwaived["Resources"].values():
        res.pop("Metadata", None)
    unwaived["Metadata"]["cfn-lint"]["config"]["ignore_checks"] = []
    findings = rules.lint_findings(json.dumps(unwaived))
    assert any(f.startswith("ES6000 DeadLetterQueue:") for f in findings), _show(findings)
    assert any(f.startswith("WS1000 WorkerFunction:") for f in findings), _show(findings)


def test_template_wide_waivers_cover_only_the_generated_resources_they_name(translated):
    assert rules.template_waivers(translated), "expected the template-wide waivers of generated resources"
    assert rules.waiver_scope_problems(translated) == []


def test_a_template_wide_waiver_does_not_hide_a_new_resource(translated):
    bad = copy.deepcopy(translated)
    esm = next(k for k, v in bad["Resources"].items() if v["Type"] == "AWS::Lambda::EventSourceMapping")
    bad["Resources"]["NewMapping"] = copy.deepcopy(bad["Resources"][esm])
    scope = bad["Metadata"][rules.WAIVER_SCOPE_KEY]
    stale = next(r for r in scope if r != "ES1001")
    scope[stale] = [*scope[stale], "GoneResource"]
    problems = rules.waiver_scope_problems(bad)
    assert any(p.startswith("ES1001 NewMapping:") and "not in its scope" in p for p in problems), problems
    assert f"{stale} no longer finds GoneResource: drop it from Metadata.{rules.WAIVER_SCOPE_KEY}.{stale}" in problems


def test_every_waiver_is_kept_next_to_its_reason():
    """A waived rule without a comment on its line is a waiver nobody can judge."""
    lines = (ROOT / "template.yaml").read_text(encoding="utf-8").splitlines()
    in_waivers = False
    waivers = []
    for line in lines:
        if line.strip() == "ignore_checks:":
            in_waivers = True
            continue
        if in_waivers and line.strip().startswith("- "):
            waivers.append(line)
        elif in_waivers and not line.strip().startswith("#"):
            in_waivers = False
    assert waivers
    for line in waivers:
        rule, _, reason = line.strip()[2:].partition("#")
        assert len(reason.strip()) > 20, f"waiver {rule.strip()} has no reason next to it"


# ------------------------------------------------------------------ LogLevel
def _lambda_application_log_levels() -> list[str]:
    """What Lambda's LoggingConfig.ApplicationLogLevel accepts, from cfn-lint's CloudFormation schema."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", "AWS::Lambda::Function").schema
    return schema["definitions"]["LoggingConfig"]["properties"]["ApplicationLogLevel"]["enum"]


def test_log_level_allows_exactly_lambdas_application_log_levels(source):
    assert source["Parameters"]["LogLevel"]["AllowedValues"] == _lambda_application_log_levels()
    assert source["Globals"]["Function"]["LoggingConfig"]["ApplicationLogLevel"] == {"Ref": "LogLevel"}


def test_powertools_gets_a_python_level_for_every_log_level(source):
    """POWERTOOLS_LOG_LEVEL is read by Python's logging (through Powertools): TRACE is no Python level."""
    import logging

    from aws_lambda_powertools import Logger

    env = source["Globals"]["Function"]["Environment"]["Variables"]
    for level in source["Parameters"]["LogLevel"]["AllowedValues"]:
        python_level = rules.resolver(source, {"LogLevel": level}).value(env["POWERTOOLS_LOG_LEVEL"])
        assert isinstance(logging.getLevelName(python_level), int), (level, python_level)
        assert Logger(service=f"loglevel-{level}", level=python_level).log_level == logging.getLevelName(python_level)


def test_the_lint_refuses_a_log_level_lambda_does_not_know(source):
    bad = copy.deepcopy(source)
    bad["Parameters"]["LogLevel"]["AllowedValues"] = ["DEBUG", "INFO", "WARNING", "ERROR"]
    findings = rules.lint_findings(json.dumps(translate(bad)), ())
    where = "WorkerFunction/Properties/LoggingConfig/ApplicationLogLevel"
    assert any(f.startswith("W1030 Parameters/LogLevel/AllowedValues") and "'WARN'" in f and where in f
               for f in findings), _show(findings)


def test_an_unknown_log_level_is_refused_as_cloudformation_would(source):
    assert tpl.parameter_problems(source, {"LogLevel": "WARNING"}) == [
        "LogLevel=WARNING is not one of its AllowedValues: TRACE, DEBUG, INFO, WARN, ERROR, FATAL"]
    for level in _lambda_application_log_levels():
        assert tpl.parameter_problems(source, {"LogLevel": level}) == []
