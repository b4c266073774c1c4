"""Checkers for what README.md tells an operator to run, as plain functions over its Markdown text.

Each returns a list of problems (strings quoting what README names); an empty list means every
command, target, parameter and setting it names exists. tests/unit/test_readme_deploy.py runs them on
README.md's Deploy and Development sections and on small bad fragments.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_CODE_BLOCK = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
_CAMEL_NAME = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][A-Za-z0-9]*)+|[A-Z][a-z]+")
_SNAKE_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
_SAMCONFIG_VALUE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+|[A-Z]+(?:_[A-Z]+)+")  # playvault-dev, CAPABILITY_IAM
_SAMCONFIG_SECTION = re.compile(r"\[([a-z0-9_-]+)\.([a-z0-9_-]+)\.parameters\]")


def section(markdown: str, heading: str) -> str:
    """The text under `heading` (e.g. "### Deploy") down to the next heading of its level or higher."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = markdown.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    except StopIteration:
        raise ValueError(f"README has no section {heading!r}") from None
    end = len(lines)
    in_code = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            in_code = not in_code
        match = re.match(r"(#+) ", lines[i])
        if match and not in_code and len(match.group(1)) <= level:
            end = i
            break
    return "\n".join(lines[start:end])


def code(markdown: str) -> list[str]:
    """Every code span and every line of every code block (commands live there)."""
    blocks = [line.strip() for block in _CODE_BLOCK.findall(markdown) for line in block.splitlines() if line.strip()]
    prose = _CODE_BLOCK.sub("", markdown)
    return _CODE_SPAN.findall(prose) + blocks


def paragraphs(markdown: str) -> list[str]:
    """Paragraphs and list items (a numbered or bulleted item with its continuation lines)."""
    chunks: list[list[str]] = [[]]
    for line in _CODE_BLOCK.sub("", markdown).splitlines():
        if not line.strip() or re.match(r"\s*(\d+\.|-) ", line):
            chunks.append([])
        chunks[-1].append(line)
    return [" ".join(chunk).strip() for chunk in chunks if "".join(chunk).strip()]


def makefile_targets(makefile: str) -> set[str]:
    targets = set()
    for line in makefile.splitlines():
        match = re.match(r"^([A-Za-z0-9_./$()-][A-Za-z0-9_./$() -]*):(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def make_target_problems(markdown: str, makefile: str) -> list[str]:
    """Every `make TARGET` README names is a target of the Makefile."""
    targets = makefile_targets(makefile)
    named = {m for snippet in code(markdown) for m in re.findall(r"(?:^|[\s;(&|])make\s+([a-z][\w.-]*)", snippet)}
    return [f"`make {name}`: no target {name!r} in the Makefile" for name in sorted(named - targets)]


TEMPLATE_SECTIONS = {"Parameters", "Mappings", "Conditions", "Globals", "Resources", "Outputs", "Metadata"}
# CloudFormation's own words (intrinsic functions, resource attributes) README may name in code.
CLOUDFORMATION_WORDS = {"Ref", "GetAtt", "Sub", "Join", "If", "FindInMap", "DependsOn", "Condition",
                        "DeletionPolicy", "UpdateReplacePolicy"}


def _template_names(template: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """(parameters, outputs, other names: resources, sections, Metadata keys (the template's and its
    resources'), CloudFormation's words)."""
    resources = template.get("Resources") or {}
    resource_metadata = {key for res in resources.values() for key in ((res or {}).get("Metadata") or {})}
    return (set(template.get("Parameters") or {}), set(template.get("Outputs") or {}),
            set(resources) | TEMPLATE_SECTIONS | CLOUDFORMATION_WORDS
            | set(template.get("Metadata") or {}) | resource_metadata)


def _samconfig_sections(samconfig: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """"env.command.parameters" -> its keys and values."""
    return {f"{env}.{command}.{table}": values for env, commands in samconfig.items() if isinstance(commands, dict)
            for command, tables in commands.items() if isinstance(tables, dict)
            for table, values in tables.items() if isinstance(values, dict)}


def _override_names(values: dict[str, Any]) -> list[str]:
    overrides = values.get("parameter_overrides") or []
    if isinstance(overrides, str):
        overrides = re.findall(r"([A-Za-z0-9]+)=", overrides)
    return [str(item).split("=", 1)[0] for item in overrides]


def samconfig_problems(samconfig: dict[str, Any], template: dict[str, Any]) -> list[str]:
    """samconfig.toml's parameter_overrides name template parameters only (sam deploy would fail)."""
    parameters, _, _ = _template_names(template)
    return [f"samconfig.toml [{name}] parameter_overrides: {override!r} is not a template parameter"
            for name, values in _samconfig_sections(samconfig).items()
            for override in _override_names(values) if override not in parameters]


def deploy_problems(markdown: str, template: dict[str, Any], samconfig: dict[str, Any], root: Path,
                    makefile: str = "") -> list[str]:
    """What README's operator text names exists:
    - `Name=Value` in a command (sam/aws/make ARGS, parameter_overrides): Name is a template parameter
      (an upper-case NAME= is a make variable: the Makefile uses it);
    - a CamelCase name in code: a template parameter, output, resource, section or Metadata key
      ("... output": an output);
    - `--config-env E`: samconfig.toml has E, or README names the `[E.command.parameters]` to add, and
      every such section has the shape SAM reads (`[default.command.parameters]` exists);
    - in a paragraph about samconfig.toml: each snake_case name is a samconfig key, each setting
      (`playvault-dev`, `CAPABILITY_IAM`) a value there;
    - an SSM parameter name (`/playvault/...`) is the default of a template parameter;
    - `--stack-name S`: samconfig.toml's stack_name; a repository path (`tools/...`, `tests/...`) exists.
    """
    problems = []
    parameters, outputs, resources = _template_names(template)
    sections = _samconfig_sections(samconfig)
    snippets = code(markdown)
    environments = {name.split(".", 1)[0] for name in sections}

    for snippet in snippets:
        # aws cloudformation's form names the parameter as a value: ParameterKey=Name,ParameterValue=...
        keys = re.findall(r"ParameterKey=([A-Za-z0-9]+)", snippet)
        for name in keys + re.findall(r"(?:^|[\s\"',=(])([A-Z][A-Za-z0-9_]+)=", snippet):
            if name in ("ParameterKey", "ParameterValue", "UsePreviousValue"):
                continue
            if re.fullmatch(r"[A-Z_]+", name):
                if f"$({name})" not in makefile:
                    problems.append(f"`{snippet}`: {name} is not a variable of the Makefile")
            elif name not in parameters:
                problems.append(f"`{snippet}`: {name} is not a template parameter")
        if re.fullmatch(_CAMEL_NAME, snippet) and snippet not in parameters | outputs | resources:
            problems.append(f"`{snippet}` is not a parameter, output, resource or section of template.yaml")
        for name in re.findall(r"/playvault/[\w./-]+", snippet):
            defaults = {str(spec.get("Default")) for spec in (template.get("Parameters") or {}).values()}
            if name not in defaults:
                problems.append(f"`{snippet}`: {name} is no template parameter's default")
        for stack in re.findall(r"--stack-name\s+([\w-]+)", snippet):
            names = {str(values.get("stack_name")) for values in sections.values() if "stack_name" in values}
            if stack not in names:
                problems.append(f"`{snippet}`: stack {stack} is not samconfig.toml's stack_name {sorted(names)}")
        if re.fullmatch(r"(tools|tests|local|layers|functions)/[\w./-]*", snippet) and not (root / snippet).exists():
            problems.append(f"`{snippet}` does not exist in the repository")

    for match in re.finditer(r"`([A-Z][A-Za-z0-9]+)`\s+output|output\s+`([A-Z][A-Za-z0-9]+)`", markdown):
        name = match.group(1) or match.group(2)
        if name not in outputs:
            problems.append(f"output `{name}`: template.yaml has no such output")

    named_sections = {m.group(0)[1:-1]: m for snippet in snippets for m in [_SAMCONFIG_SECTION.fullmatch(snippet)] if m}
    for name, match in sorted(named_sections.items()):
        if f"default.{match.group(2)}.parameters" not in sections:
            problems.append(f"`[{name}]`: samconfig.toml configures no command {match.group(2)!r}")
    offered = environments | {m.group(1) for m in named_sections.values()}
    for snippet in snippets:
        for env in re.findall(r"--config-env[ =]+([\w-]+)", snippet):
            if env not in offered:
                problems.append(f"`{snippet}`: no [{env}.*] in samconfig.toml, and README names none to add")

    for paragraph in paragraphs(markdown):
        if "samconfig.toml" not in paragraph:
            continue
        keys = {key for values in sections.values() for key in values}
        values_text = " ".join(str(v) for values in sections.values() for v in values.values())
        for span in _CODE_SPAN.findall(paragraph):
            if re.fullmatch(_SNAKE_NAME, span) and span not in keys:
                problems.append(f"`{span}` (about samconfig.toml) is not a samconfig.toml key")
            elif re.fullmatch(_SAMCONFIG_VALUE, span) and span not in values_text:
                problems.append(f"`{span}` (about samconfig.toml) is no value set there")
    return problems


def load_samconfig(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))
