"""PlayVault's own cfn-lint rules (cfn-lint --append-rules tools/cfn_rules).

cfn-lint hands whole-template rules the template as written (before the SAM transform), so they
check AWS::Serverless::Function (with Globals) as well as plain AWS::Lambda::Function and IAM
resources. tests/template_rules.py holds the same checks for the unit tests.
"""

from __future__ import annotations

from typing import Any

from cfnlint.rules import CloudFormationLintRule, RuleMatch

# (resource, Sid) of the statements allowed to be broad: the KMS key policy must let the account
# administer the key (tests/template_rules.py keeps the same list).
# The KMS key policy's account-root statement (without it the key cannot be administered); the user
# files bucket's TLS-only statement, a Deny of every action over plain HTTP (it grants nothing).
DOCUMENTED_EXCEPTIONS = {("TokenKey", "AccountAdministersTheKey"), ("UserFilesBucketPolicy", "TlsOnly")}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _ref(node: Any) -> str | None:
    if isinstance(node, dict) and len(node) == 1:
        (key, arg), = node.items()
        if key == "Ref" and isinstance(arg, str):
            return arg
        if key == "Fn::GetAtt":
            return str((arg if isinstance(arg, list) else str(arg).split("."))[0])
    return None


class LambdaLogGroupWithRetention(CloudFormationLintRule):
    id = "E9101"
    shortdesc = "Every Lambda function logs to its own log group with retention"
    description = (
        "AWS::Lambda::Function needs LoggingConfig.LogGroup pointing at an AWS::Logs::LogGroup of the "
        "template that sets RetentionInDays; otherwise Lambda creates a group that keeps logs forever."
    )
    source_url = "README.md, Operate"
    tags = ["playvault", "logs", "lambda"]

    def match(self, cfn: Any) -> list[RuleMatch]:
        matches = []
        groups = cfn.get_resources(["AWS::Logs::LogGroup"])
        used: dict[str, str] = {}
        globals_ = ((cfn.template.get("Globals") or {}).get("Function") or {}).get("LoggingConfig") or {}
        for logical, res in cfn.get_resources(["AWS::Lambda::Function", "AWS::Serverless::Function"]).items():
            props = res.get("Properties") or {}
            path = ["Resources", logical, "Properties", "LoggingConfig", "LogGroup"]
            config = dict(globals_) if res.get("Type") == "AWS::Serverless::Function" else {}
            config.update(props.get("LoggingConfig") or {})
            target = _ref(config.get("LogGroup"))
            if target not in groups:
                matches.append(RuleMatch(path, f"{logical} does not log to an AWS::Logs::LogGroup of this template"))
                continue
            if target in used:
                matches.append(RuleMatch(path, f"{logical} shares log group {target} with {used[target]}"))
            used[target] = logical
            if "RetentionInDays" not in (groups[target].get("Properties") or {}):
                matches.append(RuleMatch(["Resources", target, "Properties"], f"{target} has no RetentionInDays"))
        return matches


class NoWildcardIamAction(CloudFormationLintRule):
    id = "E9102"
    shortdesc = "No wildcard IAM actions, no Resource '*' in inline role policies"
    description = (
        "Inline policies of roles and policies list each action (no '*', 'service:*' or 'service:Get*', "
        "no NotAction) on named resources (no Resource '*'); key, queue and topic policies list each "
        "action too. DOCUMENTED_EXCEPTIONS names the allowed exceptions."
    )
    source_url = "README.md, Operate"
    tags = ["playvault", "iam", "least-privilege"]

    def _check(self, logical: str, path: list[Any], document: Any, identity: bool) -> list[RuleMatch]:
        matches = []
        statements = _as_list((document or {}).get("Statement")) if isinstance(document, dict) else []
        for i, statement in enumerate(statements):
            if not isinstance(statement, dict) or (logical, statement.get("Sid")) in DOCUMENTED_EXCEPTIONS:
                continue
            where = [*path, "Statement", i]
            if "NotAction" in statement:
                matches.append(RuleMatch([*where, "NotAction"], f"{logical}: NotAction grants everything else"))
            for action in _as_list(statement.get("Action")):
                if not isinstance(action, str) or "*" in action:
                    matches.append(RuleMatch([*where, "Action"], f"{logical}: wildcard action {action!r}"))
            if identity and "*" in _as_list(statement.get("Resource")):
                matches.append(RuleMatch([*where, "Resource"], f"{logical}: Resource '*'"))
        return matches

    def match(self, cfn: Any) -> list[RuleMatch]:
        matches = []
        for logical, res in cfn.get_resources(["AWS::Serverless::Function"]).items():
            for i, policy in enumerate(_as_list((res.get("Properties") or {}).get("Policies"))):
                path = ["Resources", logical, "Properties", "Policies", i]
                if not (isinstance(policy, dict) and "Statement" in policy):
                    matches.append(RuleMatch(path, f"{logical}: use explicit statements, not {policy!r}"))
                    continue
                matches += self._check(logical, path, policy, identity=True)
        for logical, res in cfn.get_resources(["AWS::IAM::Role"]).items():
            for i, policy in enumerate(_as_list((res.get("Properties") or {}).get("Policies"))):
                path = ["Resources", logical, "Properties", "Policies", i, "PolicyDocument"]
                matches += self._check(logical, path, (policy or {}).get("PolicyDocument"), identity=True)
        for logical, res in cfn.get_resources(["AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"]).items():
            path = ["Resources", logical, "Properties", "PolicyDocument"]
            matches += self._check(logical, path, (res.get("Properties") or {}).get("PolicyDocument"), identity=True)
        for logical, res in cfn.get_resources(["AWS::KMS::Key"]).items():
            path = ["Resources", logical, "Properties", "KeyPolicy"]
            matches += self._check(logical, path, (res.get("Properties") or {}).get("KeyPolicy"), identity=False)
        for logical, res in cfn.get_resources(["AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy"]).items():
            path = ["Resources", logical, "Properties", "PolicyDocument"]
            matches += self._check(logical, path, (res.get("Properties") or {}).get("PolicyDocument"), identity=False)
        return matches
