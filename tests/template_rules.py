"""Checkers for template.yaml, as plain functions over the parsed template (playvault_local.template.load()).

Each checker returns a list of problems (strings naming the place); an empty list means clean. The
tests run them on template.yaml and on small bad fragments, so a checker that stops catching its
problem fails too.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CUSTOM_NAMESPACE = "PlayVault"
SERVICE_DIMENSION = "service"
EMITTERS = {"count", "record_duration_ms", "count_failure"}

# Statements allowed to be broad, each for a documented reason: (resource, Sid).
# A KMS key policy must let the account administer the key (else the key becomes unmanageable);
# IAM policies of the account then decide who may use it.
# The KMS key policy's account-root statement (without it the key cannot be administered); the user
# files bucket's TLS-only statement, a Deny of every action over plain HTTP (it grants nothing).
DOCUMENTED_EXCEPTIONS = {("TokenKey", "AccountAdministersTheKey"), ("UserFilesBucketPolicy", "TlsOnly")}


# ------------------------------------------------------------------ helpers
def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in (template.get("Resources") or {}).items() if v.get("Type") == resource_type}


def _ref_target(node: Any) -> str | None:
    """The logical id behind {"Ref": X} or {"Fn::GetAtt": [X, attr]}."""
    if isinstance(node, dict) and len(node) == 1:
        (key, arg), = node.items()
        if key == "Ref" and isinstance(arg, str):
            return arg
        if key == "Fn::GetAtt":
            parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
            return str(parts[0])
    return None


def _function_prop(template: dict[str, Any], props: dict[str, Any], name: str, default: Any = None) -> Any:
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    return props.get(name, globals_.get(name, default))


# ------------------------------------------------------------------ (a) IAM
def _statements(document: Any) -> Iterator[dict[str, Any]]:
    if isinstance(document, dict):
        for statement in _as_list(document.get("Statement")):
            # A conditional statement (!If [Condition, statement, !Ref AWS::NoValue]): check both branches.
            if isinstance(statement, dict) and set(statement) == {"Fn::If"}:
                branches = [b for b in statement["Fn::If"][1:] if b != {"Ref": "AWS::NoValue"}]
            else:
                branches = [statement]
            for branch in branches:
                if isinstance(branch, dict):
                    yield branch


def _policy_documents(template: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(place, kind, policy document) of every identity and resource policy in the template.

    kind is "identity" (what a function or role may do) or "resource" (who may use a resource).
    """
    for logical, res in (template.get("Resources") or {}).items():
        props = res.get("Properties") or {}
        rtype = res.get("Type")
        if rtype == "AWS::Serverless::Function":
            for i, policy in enumerate(_as_list(props.get("Policies"))):
                yield f"{logical}.Policies[{i}]", "identity", policy
        elif rtype == "AWS::IAM::Role":
            for i, policy in enumerate(_as_list(props.get("Policies"))):
                yield f"{logical}.Policies[{i}]", "identity", (policy or {}).get("PolicyDocument")
        elif rtype in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical, "identity", props.get("PolicyDocument")
        elif rtype == "AWS::KMS::Key":
            yield f"{logical}.KeyPolicy", "resource", props.get("KeyPolicy")
        elif rtype in ("AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy", "AWS::S3::BucketPolicy"):
            yield f"{logical}.PolicyDocument", "resource", props.get("PolicyDocument")


def iam_problems(template: dict[str, Any]) -> list[str]:
    """Wildcard actions (`*`, `dynamodb:*`, `dynamodb:Get*`), NotAction/NotResource, and Resource `*`
    in identity policies. Function policies must be explicit statements (no managed policy names or
    SAM policy templates, whose action lists nobody reviewed here)."""
    problems = []
    for place, kind, document in _policy_documents(template):
        if kind == "identity" and not (isinstance(document, dict) and "Statement" in document):
            problems.append(f"{place}: not an explicit policy statement ({document!r})")
            continue
        resource = place.split(".", 1)[0]
        for i, statement in enumerate(_statements(document)):
            where = f"{place}.Statement[{i}]"
            if (resource, statement.get("Sid")) in DOCUMENTED_EXCEPTIONS:
                continue
            for key in ("NotAction", "NotResource"):
                if key in statement:
                    problems.append(f"{where}: {key} grants everything else")
            for action in _as_list(statement.get("Action")):
                if not isinstance(action, str) or "*" in action or ":" not in action:
                    problems.append(f"{where}: wildcard or malformed action {action!r}")
            if kind == "identity":
                for target in _as_list(statement.get("Resource")):
                    if target == "*":
                        problems.append(f"{where}: Resource {target!r}")
            elif statement.get("Effect") == "Allow" and statement.get("Principal") in ("*", {"AWS": "*"}):
                problems.append(f"{where}: resource policy allows any principal")
    return problems


# ------------------------------------------------------------------ (b) metrics
@dataclass(frozen=True)
class MetricRef:
    where: str
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...] = field(default=())

    @property
    def dimension_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.dimensions)




class _LogicalNames(dict):
    """Physical ids for the Resolver: every resource resolves to its logical id (Ref) or to
    "Logical.Attribute" (GetAtt), so a resolved body stays readable and checkable offline."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, logical: str) -> dict[str, str]:
        class Attributes(dict):
            def __getitem__(self, attribute: str) -> str:
                return logical if attribute == "Ref" else f"{logical}.{attribute}"

        return Attributes()


def resolver(template: dict[str, Any], parameters: dict[str, str] | None = None) -> Any:
    from playvault_local.template import Resolver

    return Resolver(template, _LogicalNames(), parameters)


def active(template: dict[str, Any], resource: dict[str, Any], parameters: dict[str, str] | None = None) -> bool:
    """False for a resource whose Condition is false under these parameters (the template's defaults)."""
    condition = resource.get("Condition")
    return condition is None or resolver(template, parameters).condition(condition)


def dashboard_bodies(template: dict[str, Any], parameters: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Each dashboard's body as JSON, resolved under `parameters` (default: the template's defaults):
    conditions evaluated, ${Resource} -> its logical id, ${Resource.Attribute} -> "Resource.Attribute"."""
    bodies = {}
    for logical, res in _resources(template, "AWS::CloudWatch::Dashboard").items():
        if not active(template, res, parameters):
            continue
        body = (res.get("Properties") or {}).get("DashboardBody")
        if isinstance(body, dict) and "Fn::Sub" in body:
            body = resolver(template, parameters).value(body)
        if not isinstance(body, str):
            raise ValueError(f"{logical}: DashboardBody must be a JSON string or !Sub of one")
        bodies[logical] = json.loads(body)
    return bodies


def _dashboard_metric(where: str, entry: list[Any], previous: MetricRef | None) -> MetricRef | None:
    """One "metrics" row: [namespace, name, dim, value, ..., {options}]; "." repeats the row above."""
    values = [v for v in entry if not isinstance(v, dict)]
    if any(isinstance(v, dict) and "expression" in v for v in entry) and not values:
        return None  # a math expression, no metric of its own
    if previous is not None and values and values[0] == "...":
        return None  # shorthand rows are not used here; refuse to guess
    if previous is not None:
        prev = [previous.namespace, previous.name, *[x for pair in previous.dimensions for x in pair]]
        values = [prev[i] if v == "." and i < len(prev) else v for i, v in enumerate(values)]
    if len(values) < 2 or len(values) % 2:
        raise ValueError(f"{where}: cannot read metric row {entry!r}")
    dims = tuple((str(values[i]), str(values[i + 1])) for i in range(2, len(values), 2))
    return MetricRef(where, str(values[0]), str(values[1]), dims)


def dashboard_metrics(template: dict[str, Any], parameters: dict[str, str] | None = None) -> list[MetricRef]:
    refs = []
    for logical, body in dashboard_bodies(template, parameters).items():
        for w, widget in enumerate(body.get("widgets") or []):
            previous = None
            for r, entry in enumerate(((widget.get("properties") or {}).get("metrics")) or []):
                ref = _dashboard_metric(f"{logical}.widgets[{w}].metrics[{r}]", entry, previous)
                if ref is not None:
                    refs.append(ref)
                    previous = ref
    return refs


def _alarm_metric(where: str, spec: dict[str, Any]) -> MetricRef:
    dims = tuple((str(d.get("Name")), str(d.get("Value"))) for d in _as_list(spec.get("Dimensions")))
    return MetricRef(where, str(spec.get("Namespace")), str(spec.get("MetricName")), dims)


def alarms(template: dict[str, Any], parameters: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The alarms a stack creates under `parameters` (default: the template's defaults)."""
    return {k: v for k, v in _resources(template, "AWS::CloudWatch::Alarm").items()
            if active(template, v, parameters)}


def alarm_metrics(template: dict[str, Any], parameters: dict[str, str] | None = None) -> list[MetricRef]:
    refs = []
    for logical, res in alarms(template, parameters).items():
        props = res.get("Properties") or {}
        if "MetricName" in props:
            refs.append(_alarm_metric(logical, props))
        for query in _as_list(props.get("Metrics")):
            metric = ((query or {}).get("MetricStat") or {}).get("Metric")
            if metric:
                refs.append(_alarm_metric(f"{logical}.Metrics[{query.get('Id')}]", metric))
    return refs


def metric_problems(refs: Iterable[MetricRef], catalog: dict[str, tuple[Any, tuple[str, ...]]],
                    service: str) -> list[str]:
    """Custom metrics must be in the catalog, with exactly the dimensions the code emits."""
    problems = []
    for ref in refs:
        if ref.namespace != CUSTOM_NAMESPACE:
            continue
        if ref.name not in catalog:
            problems.append(f"{ref.where}: {ref.name} is not in playvault.metrics.CATALOG")
            continue
        expected = frozenset((SERVICE_DIMENSION, *catalog[ref.name][1]))
        if ref.dimension_names != expected:
            problems.append(f"{ref.where}: {ref.name} dimensions {sorted(ref.dimension_names)}, "
                            f"the code emits {sorted(expected)}")
        if dict(ref.dimensions).get(SERVICE_DIMENSION, service) != service:
            problems.append(f"{ref.where}: {ref.name} service={dict(ref.dimensions)[SERVICE_DIMENSION]}, "
                            f"the functions' POWERTOOLS_SERVICE_NAME is {service}")
    return problems


def coverage_problems(dashboard: Iterable[MetricRef], catalog: Iterable[str]) -> list[str]:
    shown = {ref.name for ref in dashboard if ref.namespace == CUSTOM_NAMESPACE}
    return [f"{name} (in CATALOG) is not on the dashboard" for name in sorted(set(catalog) - shown)]


def emitted_metrics(sources: Iterable[Path], constants: dict[str, str], users_failed: str) -> dict[str, list[str]]:
    """Metric name -> places that emit it: calls of count(X), record_duration_ms(X) (X a metrics
    constant or a literal) and count_failure(...) (which emits UsersFailed), found by parsing the code."""
    found: dict[str, list[str]] = {}
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in EMITTERS:
                continue
            if called == "count_failure":
                name: str | None = users_failed
            elif not node.args:
                continue
            else:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    name = arg.value
                else:
                    ident = arg.attr if isinstance(arg, ast.Attribute) else getattr(arg, "id", None)
                    name = constants.get(ident) if ident else None
            if name:
                found.setdefault(name, []).append(f"{path}:{node.lineno}")
    return found


def emission_problems(catalog: Iterable[str], emitted: dict[str, list[str]]) -> list[str]:
    return [f"{name} is in CATALOG but no code emits it" for name in sorted(set(catalog) - set(emitted))]


# ------------------------------------------------------------------ (c) structure
def queue_problems(template: dict[str, Any]) -> list[str]:
    """SQS event sources: visibility >= 6x the function timeout, partial batch failures, a DLQ."""
    problems = []
    queues = _resources(template, "AWS::SQS::Queue")
    sources = 0
    for logical, res in _resources(template, "AWS::Serverless::Function").items():
        props = res.get("Properties") or {}
        timeout = int(_function_prop(template, props, "Timeout", 3))
        for event_name, event in (props.get("Events") or {}).items():
            if event.get("Type") != "SQS":
                continue
            sources += 1
            where = f"{logical}.Events.{event_name}"
            eprops = event.get("Properties") or {}
            if "ReportBatchItemFailures" not in _as_list(eprops.get("FunctionResponseTypes")):
                problems.append(f"{where}: no FunctionResponseTypes [ReportBatchItemFailures]")
            queue = _ref_target(eprops.get("Queue"))
            if queue not in queues:
                problems.append(f"{where}: queue {eprops.get('Queue')!r} is not a queue of this template")
                continue
            qprops = queues[queue].get("Properties") or {}
            visibility = int(qprops.get("VisibilityTimeout", 30))
            if visibility < 6 * timeout:
                problems.append(f"{queue}: VisibilityTimeout {visibility} < 6 x {logical} Timeout {timeout}")
            redrive = qprops.get("RedrivePolicy") or {}
            if _ref_target(redrive.get("deadLetterTargetArn")) not in queues:
                problems.append(f"{queue}: no RedrivePolicy.deadLetterTargetArn to a queue of this template")
            if "maxReceiveCount" not in redrive:
                problems.append(f"{queue}: RedrivePolicy without maxReceiveCount")
    if not sources:
        problems.append("no function has an SQS event source")
    return problems


def _expected_log_group_name(function_name: Any) -> str | None:
    """"/aws/lambda/<FunctionName>" as a template string, for a literal or !Sub FunctionName."""
    if isinstance(function_name, str):
        return f"/aws/lambda/{function_name}"
    if isinstance(function_name, dict) and isinstance(function_name.get("Fn::Sub"), str):
        return f"/aws/lambda/{function_name['Fn::Sub']}"
    return None


def _log_group_name(props: dict[str, Any]) -> str | None:
    name = props.get("LogGroupName")
    if isinstance(name, dict) and isinstance(name.get("Fn::Sub"), str):
        return name["Fn::Sub"]
    return name if isinstance(name, str) else None


def log_group_problems(template: dict[str, Any]) -> list[str]:
    """Every function logs to its own AWS::Logs::LogGroup (named after it) with retention; so does the HttpApi."""
    problems = []
    groups = _resources(template, "AWS::Logs::LogGroup")
    used: dict[str, str] = {}

    def check_group(where: str, target: str | None) -> dict[str, Any] | None:
        if target not in groups:
            problems.append(f"{where}: does not point at an AWS::Logs::LogGroup of this template")
            return None
        if target in used:
            problems.append(f"{where}: log group {target} is already used by {used[target]}")
        used[target] = where
        gprops = groups[target].get("Properties") or {}
        if "RetentionInDays" not in gprops:
            problems.append(f"{target}: no RetentionInDays")
        return gprops

    for logical, res in _resources(template, "AWS::Serverless::Function").items():
        props = res.get("Properties") or {}
        target = _ref_target((props.get("LoggingConfig") or {}).get("LogGroup"))
        gprops = check_group(f"{logical}.LoggingConfig.LogGroup", target)
        expected = _expected_log_group_name(props.get("FunctionName"))
        if gprops is not None and (expected is None or _log_group_name(gprops) != expected):
            wanted = expected or "/aws/lambda/<FunctionName>"
            problems.append(f"{logical}: FunctionName must be set and its log group named {wanted}"
                            f" (is {_log_group_name(gprops)!r})")
    for logical, res in _resources(template, "AWS::Serverless::HttpApi").items():
        settings = (res.get("Properties") or {}).get("AccessLogSettings") or {}
        check_group(f"{logical}.AccessLogSettings.DestinationArn", _ref_target(settings.get("DestinationArn")))
        if not settings.get("Format"):
            problems.append(f"{logical}: AccessLogSettings without Format")
    return problems


def holds_user_data(props: dict[str, Any]) -> bool:
    """Tables keyed by user_id hold users' data (users, plays)."""
    return any(k.get("AttributeName") == "user_id" for k in _as_list(props.get("KeySchema")))


def _pitr(props: dict[str, Any]) -> bool:
    return (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is True


def table_problems(template: dict[str, Any]) -> list[str]:
    problems = []
    tables = _resources(template, "AWS::DynamoDB::Table")
    for logical, res in tables.items():
        props = res.get("Properties") or {}
        if props.get("BillingMode") != "PAY_PER_REQUEST":
            problems.append(f"{logical}: BillingMode is not PAY_PER_REQUEST (on-demand)")
        # Point-in-time recovery is billed per GB: a table goes without it only for a stated reason,
        # Metadata NoBackup (why nothing is lost), or DerivedFrom a recoverable table it is recomputed from.
        metadata = res.get("Metadata") or {}
        source = metadata.get("DerivedFrom")
        derived = source is not None and _pitr((tables.get(source) or {}).get("Properties") or {})
        reason = str(metadata.get("NoBackup") or "").strip()
        if not (_pitr(props) or derived or reason):
            kind = "holds user data" if holds_user_data(props) else "no reason (Metadata NoBackup) given"
            problems.append(f"{logical}: {kind} without point-in-time recovery")
        if not holds_user_data(props):
            continue
        for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
            if res.get(policy) != "Retain":
                problems.append(f"{logical}: holds user data, {policy} is not Retain")
        if props.get("DeletionProtectionEnabled") is not True:
            problems.append(f"{logical}: holds user data without DeletionProtectionEnabled")
    return problems


def ttl_problems(template: dict[str, Any], logical_ids: Iterable[str]) -> list[str]:
    tables = _resources(template, "AWS::DynamoDB::Table")
    problems = []
    for logical in logical_ids:
        ttl = ((tables.get(logical) or {}).get("Properties") or {}).get("TimeToLiveSpecification") or {}
        if not (ttl.get("Enabled") and ttl.get("AttributeName")):
            problems.append(f"{logical}: no TimeToLiveSpecification")
    return problems


# ------------------------------------------------------------------ (d) deployability: the dependency graph
PSEUDO_PARAMETER_PREFIX = "AWS::"
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


def referenced_names(node: Any) -> set[str]:
    """Every logical name `node` refers to: Ref, Fn::GetAtt (list or "A.B" form), the variables of
    Fn::Sub (string or [text, {vars}] form; its own vars excluded), nested anywhere (inside Fn::If,
    an OpenAPI body, ...). Parameters and pseudo-parameters are included: the caller keeps resources."""
    names: set[str] = set()
    if isinstance(node, list):
        for item in node:
            names |= referenced_names(item)
    elif isinstance(node, dict):
        for key, arg in node.items():
            if key == "Ref" and isinstance(arg, str):
                names.add(arg)
            elif key == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                if parts and isinstance(parts[0], str):
                    names.add(parts[0])
                names |= referenced_names(parts[1:])  # the attribute may be a Ref itself
            elif key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1] if len(arg) > 1 else {})
                names |= {m.split(".", 1)[0] for m in _SUB_VARIABLE.findall(str(text))} - set(variables or {})
                names |= referenced_names(variables)
            else:
                names |= referenced_names(arg)
    return names


def dependency_graph(template: dict[str, Any]) -> dict[str, set[str]]:
    """Resource -> the resources CloudFormation must create first (its references and DependsOn)."""
    resources = template.get("Resources") or {}
    graph = {}
    for logical, res in resources.items():
        body = {k: v for k, v in res.items() if k not in ("DependsOn", "Condition", "Type")}
        depends = {d for d in _as_list(res.get("DependsOn")) if isinstance(d, str)}
        graph[logical] = {n for n in referenced_names(body) | depends if n in resources}
    return graph


def _shortest_cycle_through(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str] | None:
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    next_frontier.append(target)
        frontier = next_frontier
    return None


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components (iterative: templates are small, but recursion limits are not ours to test)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def dependency_cycles(template: dict[str, Any]) -> list[str]:
    """Each circular dependency, as "A -> B -> C -> A" (CloudFormation refuses such a template).
    Every resource of a cycle starts one line (its shortest way back), so all of them are named."""
    graph = dependency_graph(template)
    cycles: list[str] = []
    for component in _strongly_connected(graph):
        if len(component) == 1 and not (graph[next(iter(component))] & component):
            continue
        for start in sorted(component):
            cycle = _shortest_cycle_through(graph, start, component)
            if cycle is None:
                continue
            first = cycle.index(min(cycle[:-1]))  # one spelling per cycle: start at its smallest name
            text = " -> ".join(cycle[first:-1] + cycle[:first] + [cycle[first]])
            if text not in cycles:
                cycles.append(text)
    return sorted(cycles)


# ------------------------------------------------------------------ (e) deployability: cfn-lint
SERVERLESS_RULES = "cfn_lint_serverless.rules"  # AWS's serverless rules (PyPI cfn-lint-serverless)
# Template Metadata key naming, for each rule waived template-wide, the resources the waiver is for:
# resources SAM generates (event source mappings, rules, permissions) carry no Metadata of their own.
WAIVER_SCOPE_KEY = "PlayVaultLintWaivers"


def lint_findings(template_text: str, append_rules: Iterable[str] = (SERVERLESS_RULES,),
                  region: str = "us-east-1") -> list[str]:
    """cfn-lint's findings (errors, warnings, informational) on a template (YAML or JSON text), as
    "RULE Resource: message": waivers in the template's Metadata (cfn-lint config) apply."""
    from cfnlint.api import ManualArgs, lint

    config = ManualArgs(regions=[region], append_rules=list(append_rules))
    findings = []
    for match in lint(template_text, config=config):
        path = list(getattr(match, "path", None) or [])
        resource = path[1] if len(path) > 1 and path[0] == "Resources" else "/".join(map(str, path)) or "template"
        findings.append(f"{match.rule.id} {resource}: {match.message}")
    return sorted(set(findings))


def template_waivers(template: dict[str, Any]) -> list[str]:
    """The rules waived for the whole template (its Metadata: cfn-lint: config: ignore_checks)."""
    config = (((template.get("Metadata") or {}).get("cfn-lint") or {}).get("config") or {})
    return [str(rule) for rule in _as_list(config.get("ignore_checks"))]


def waiver_scope_problems(translated: dict[str, Any], append_rules: Iterable[str] = (SERVERLESS_RULES,)) -> list[str]:
    """A rule waived template-wide must find exactly the resources WAIVER_SCOPE_KEY names for it: a
    finding elsewhere is a new problem the waiver would hide; a named resource it no longer finds is
    a stale waiver."""
    waived = template_waivers(translated)
    scope = (translated.get("Metadata") or {}).get(WAIVER_SCOPE_KEY) or {}
    problems = [f"{rule}: waived template-wide without naming its resources in Metadata.{WAIVER_SCOPE_KEY}"
                for rule in waived if rule not in scope]
    problems += [f"Metadata.{WAIVER_SCOPE_KEY}.{rule}: not waived in Metadata.cfn-lint.config.ignore_checks"
                 for rule in scope if rule not in waived]
    unwaived = json.loads(json.dumps(translated))
    unwaived.setdefault("Metadata", {}).setdefault("cfn-lint", {}).setdefault("config", {})["ignore_checks"] = []
    found: dict[str, set[str]] = {rule: set() for rule in waived}
    for finding in lint_findings(json.dumps(unwaived), append_rules):
        rule, rest = finding.split(" ", 1)
        if rule in found:
            resource = rest.split(":", 1)[0]
            found[rule].add(resource)
            if resource not in _as_list(scope.get(rule)):
                problems.append(f"{finding} (waived template-wide, but {resource} is not in its scope)")
    for rule in waived:
        for resource in sorted(set(_as_list(scope.get(rule))) - found[rule]):
            problems.append(f"{rule} no longer finds {resource}: drop it from Metadata.{WAIVER_SCOPE_KEY}.{rule}")
    return problems
