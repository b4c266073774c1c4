"""template.yaml as data: CloudFormation tags parsed, intrinsics resolved against local names.

The local runner and the tests read resources and functions from here, so template.yaml stays the
only list of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"


class TemplateError(ValueError):
    """template.yaml cannot be read or resolved; names the place."""


# libyaml's parser when PyYAML has it (about 10x faster: every provisioning of a test's stack parses
# template.yaml), the pure-Python one otherwise; the constructors below are the same for both.
class _CfnLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _tag(name: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return construct


for _short in ("Ref", "Condition"):
    _CfnLoader.add_constructor(f"!{_short}", _tag(_short))
for _fn in ("GetAtt", "Sub", "Join", "If", "Not", "Equals", "And", "Or", "Select", "Split", "FindInMap",
            "ImportValue", "GetAZs", "Base64", "Cidr"):
    _CfnLoader.add_constructor(f"!{_fn}", _tag(f"Fn::{_fn}"))


def load(path: Path | str = TEMPLATE_PATH) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"{path}: no Resources section")
    return document


@dataclass
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    events: dict[str, dict[str, Any]] = field(default_factory=dict)


NO_VALUE = object()  # !Ref AWS::NoValue: the property or list item is left out


class Resolver:
    """Resolves Ref / GetAtt / Sub / If / Join / Select / FindInMap against parameters and local physical ids
    (AWS::NoValue removes the property or list item it stands for)."""

    def __init__(self, template: dict[str, Any], physical: dict[str, dict[str, str]],
                 parameters: dict[str, str] | None = None, region: str = "us-east-1",
                 account: str = "123456789012"):
        self.template = template
        self.physical = physical  # logical id -> {"Ref": ..., "Arn": ..., other attributes}
        self.parameters = {name: str(spec.get("Default", "")) for name, spec in
                           (template.get("Parameters") or {}).items()}
        self.parameters.update(parameters or {})
        self.pseudo = {"AWS::Region": region, "AWS::AccountId": account, "AWS::Partition": "aws",
                       "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "playvault-local"}

    def condition(self, name: str) -> bool:
        return bool(self.value((self.template.get("Conditions") or {})[name]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.physical:
            return self.physical[name]["Ref"]
        raise TemplateError(f"!Ref {name}: not a parameter or a provisioned resource")

    def get_att(self, logical: str, attribute: str) -> str:
        try:
            return self.physical[logical][attribute]
        except KeyError:
            raise TemplateError(f"!GetAtt {logical}.{attribute}: not provisioned locally") from None

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical, attribute)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                return str(arg[0]).join(str(self.value(v)) for v in self.value(arg[1]))
            if key == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::FindInMap":
                mapping, top, second = (str(self.value(part)) for part in arg)
                try:
                    return self.template["Mappings"][mapping][top][second]
                except KeyError:
                    raise TemplateError(f"!FindInMap [{mapping}, {top}, {second}]: no such entry") from None
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::Equals":
                return self.value(arg[0]) == self.value(arg[1])
            if key == "Fn::Select":
                return self.value(arg[1])[int(self.value(arg[0]))]
            if key == "Condition":
                return self.condition(arg)
        resolved = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.value(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name:
                return self.get_att(*name.split(".", 1))
            return self.ref(name)

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


def parameter_problems(template: dict[str, Any], values: dict[str, str]) -> list[str]:
    """Each value that CloudFormation would refuse for its parameter (AllowedValues, AllowedPattern,
    MinLength/MaxLength, MinValue/MaxValue of a Number), named with the constraint."""
    problems = []
    for name, value in values.items():
        spec = (template.get("Parameters") or {}).get(name) or {}
        allowed = [str(v) for v in spec.get("AllowedValues") or []]
        if allowed and value not in allowed:
            problems.append(f"{name}={value} is not one of its AllowedValues: {', '.join(allowed)}")
        pattern = spec.get("AllowedPattern")
        if pattern is not None and not re.fullmatch(str(pattern), value):
            problems.append(f"{name}={value} does not match its AllowedPattern {pattern}")
        if "MinLength" in spec and len(value) < int(spec["MinLength"]):
            problems.append(f"{name}={value} is shorter than its MinLength {spec['MinLength']}")
        if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
            problems.append(f"{name}={value} is longer than its MaxLength {spec['MaxLength']}")
        if spec.get("Type") == "Number":
            try:
                number = float(value)
            except ValueError:
                problems.append(f"{name}={value} is not a Number")
                continue
            if "MinValue" in spec and number < float(spec["MinValue"]):
                problems.append(f"{name}={value} is below its MinValue {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                problems.append(f"{name}={value} is above its MaxValue {spec['MaxValue']}")
    return problems


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v.get("Type") == resource_type}


def functions(template: dict[str, Any], resolver: Resolver, root: Path = ROOT) -> dict[str, FunctionSpec]:
    """Every AWS::Serverless::Function with Globals applied and its environment resolved."""
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    specs = {}
    for logical, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        props = resource.get("Properties") or {}
        env = dict(((globals_.get("Environment") or {}).get("Variables")) or {})
        env.update(((props.get("Environment") or {}).get("Variables")) or {})
        specs[logical] = FunctionSpec(
            logical_id=logical,
            code_uri=root / props.get("CodeUri", globals_.get("CodeUri", "")),
            handler=props.get("Handler", globals_.get("Handler", "app.handler")),
            timeout_s=int(props.get("Timeout", globals_.get("Timeout", 3))),
            memory_mb=int(props.get("MemorySize", globals_.get("MemorySize", 128))),
            environment={k: str(resolver.value(v)) for k, v in env.items()},
            events=props.get("Events") or {},
        )
    return specs


def layer_paths(template: dict[str, Any], root: Path = ROOT) -> list[Path]:
    return [root / layer["Properties"]["ContentUri"]
            for layer in resources_of_type(template, "AWS::Serverless::LayerVersion").values()]


def rate_seconds(expression: str) -> float | None:
    """Seconds between two runs of a `rate(N unit)` schedule expression; None for anything else."""
    match = re.fullmatch(r"rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not match:
        return None
    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
    return float(int(match.group(1)) * unit)


def schedule_period_s(expression: str) -> float:
    """Seconds between two runs of a `rate(N unit)` schedule (cron(...): hourly, close enough locally)."""
    return rate_seconds(expression) or 3600.0
