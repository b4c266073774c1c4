"""README.md's Deploy and Development sections are exercised: every make target, command parameter,
stack parameter, output, samconfig.toml key and section they name exists (tests/readme_rules.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from playvault_local import template as tpl
from tests import readme_rules as rules

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def template():
    return tpl.load()


@pytest.fixture(scope="module")
def samconfig():
    return rules.load_samconfig(ROOT / "samconfig.toml")


def operator_text() -> str:
    return rules.section(README, "### Deploy") + "\n\n" + rules.section(README, "## Development")


def test_every_make_target_readme_names_exists():
    assert rules.make_target_problems(README, MAKEFILE) == []
    commands = {"validate", "deploy", "test", "bench"}
    named = {t for snippet in rules.code(operator_text()) for t in commands if f"make {t}" in snippet}
    assert named == commands, "the sections lost their commands"


def test_every_parameter_setting_and_command_of_the_deploy_section_exists(template, samconfig):
    assert rules.deploy_problems(operator_text(), template, samconfig, ROOT, MAKEFILE) == []


def test_samconfig_overrides_only_template_parameters(template, samconfig):
    assert rules.samconfig_problems(samconfig, template) == []
    assert rules._override_names(samconfig["default"]["deploy"]["parameters"])  # the check has something to read


def test_the_sections_are_found_whole():
    deploy = rules.section(README, "### Deploy")
    assert deploy.startswith("### Deploy") and "#### What the template guarantees" in deploy
    assert "### Dashboard" not in deploy
    with pytest.raises(ValueError, match="no section"):
        rules.section(README, "### Deploy it")


BAD = '''### Deploy
1. **Configure** `samconfig.toml` (`[default.deploy.parameters]`): stack `playvault-staging`, `resolve_s4`.
   ```sh
   make validat   # a typo
   sam deploy --parameter-overrides MaxUser=5 Stage=dev
   aws ssm put-parameter --name /playvault/spotify/secret --type SecureString --value x
   make deploy ARGS="--config-env qa" VERBOSE=1
   aws cloudformation update-stack --parameters ParameterKey=MaxUsrs,ParameterValue=3 ParameterKey=Stage,ParameterValue=
   ```
   Then add `[prod.deploy.parameters]`, `[prod.package.parameters]` and run `make deploy ARGS="--config-env prod"`.
2. The stack output `ApiLink` is the URL; set `AlarmMail`; checks in `tools/cfn_ruls/`.
   `aws cloudformation describe-stacks --stack-name playvault-qa`
'''


def test_the_checkers_catch_a_bad_deploy_section(template, samconfig):
    assert rules.make_target_problems(BAD, MAKEFILE) == ["`make validat`: no target 'validat' in the Makefile"]
    problems = rules.deploy_problems(BAD, template, samconfig, ROOT, MAKEFILE)
    expected = [
        "`sam deploy --parameter-overrides MaxUser=5 Stage=dev`: MaxUser is not a template parameter",
        '`make deploy ARGS="--config-env qa" VERBOSE=1`: VERBOSE is not a variable of the Makefile',
        '`make deploy ARGS="--config-env qa" VERBOSE=1`: no [qa.*] in samconfig.toml, and README names none to add',
        "`aws ssm put-parameter --name /playvault/spotify/secret --type SecureString --value x`: "
        "/playvault/spotify/secret is no template parameter's default",
        "`aws cloudformation update-stack --parameters ParameterKey=MaxUsrs,ParameterValue=3 "
        "ParameterKey=Stage,ParameterValue=`: MaxUsrs is not a template parameter",
        "`[prod.package.parameters]`: samconfig.toml configures no command 'package'",
        "`ApiLink` is not a parameter, output, resource or section of template.yaml",
        "output `ApiLink`: template.yaml has no such output",
        "`AlarmMail` is not a parameter, output, resource or section of template.yaml",
        "`tools/cfn_ruls/` does not exist in the repository",
        "`aws cloudformation describe-stacks --stack-name playvault-qa`: stack playvault-qa is not "
        "samconfig.toml's stack_name ['playvault-dev']",
        "`resolve_s4` (about samconfig.toml) is not a samconfig.toml key",
        "`playvault-staging` (about samconfig.toml) is no value set there",
    ]
    assert sorted(problems) == sorted(expected)
    # --config-env prod is fine: the text names the [prod.deploy.parameters] to add.
    assert not any("[prod.*]" in p for p in problems)


def test_samconfig_checker_catches_an_unknown_override(template):
    bad = {"default": {"deploy": {"parameters": {"parameter_overrides": ["Stage=dev", "LogLvl=INFO"]}}},
           "prod": {"deploy": {"parameters": {"parameter_overrides": "Stage=prod MaxUser=3"}}}}
    assert rules.samconfig_problems(bad, template) == [
        "samconfig.toml [default.deploy.parameters] parameter_overrides: 'LogLvl' is not a template parameter",
        "samconfig.toml [prod.deploy.parameters] parameter_overrides: 'MaxUser' is not a template parameter",
    ]
