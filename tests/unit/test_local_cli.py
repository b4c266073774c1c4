"""The local runner's command line and text report as a newcomer reads them."""

from __future__ import annotations

import io

import pytest

from playvault_local import __main__ as cli
from playvault_local.progress import Progress
from playvault_local.report import words


@pytest.mark.parametrize("command", ["run", "serve"])
def test_an_unknown_parameter_is_rejected_with_the_templates_parameters(command, capsys):
    code = cli.main([command, "--parameter", "MaxUser=3", "--parameter", "Stage=dev"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "Parameters: [MaxUser] do not exist in the template" in err
    assert "MaxUsers" in err and "DetailedMetrics" in err  # the list of what exists
    assert "Stage]" not in err  # a known name is not reported


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_parameter_value_the_template_does_not_allow_is_rejected(command, capsys):
    code = cli.main([command, "--parameter", "LogLevel=WARNING", "--parameter", "MaxUsers=0",
                     "--parameter", "Stage=Prod", "--parameter", "BatchSize=many", "--parameter", "Tracing=true"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "LogLevel=WARNING is not one of its AllowedValues: TRACE, DEBUG, INFO, WARN, ERROR, FATAL" in err
    assert "MaxUsers=0 is below its MinValue 1" in err
    assert "Stage=Prod does not match its AllowedPattern" in err
    assert "BatchSize=many is not a Number" in err
    assert "Tracing" not in err  # an allowed value is not reported


def test_dicts_are_printed_as_words():
    assert words({"AUTH_REVOKED": 2, "NETWORK": 1}) == "AUTH_REVOKED 2, NETWORK 1"
    assert words({"deferred_messages": 0, "rate_limited_users": 3}) == "deferred messages 0, rate limited users 3"
    assert words({"invocations": 2, "function_errors": {}}) == "invocations 2"
    assert words({}) == "none"
    assert "{" not in words({"worker": {"function_errors": {"KeyError": 1}}})


def test_progress_names_what_it_counts():
    stream = io.StringIO()
    Progress(24, stream).update(3, {"user polls archived": 300, "plays archived": 1200})
    line = stream.getvalue()
    assert line.startswith("hour   3/24") and "user polls archived: 300, plays archived: 1200" in line
    assert "=" not in line


@pytest.mark.parametrize(("value", "problem"), [("1.5", "must be between 0 and 1, got 1.5"),
                                                ("lots", "not a number: 'lots'")])
def test_a_bad_ssm_throttle_share_is_refused_naming_it(value, problem, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--ssm-throttle", value])
    assert exited.value.code == cli.EXIT_USAGE
    assert f"argument --ssm-throttle: {problem}" in capsys.readouterr().err


def test_the_app_faults_lines_say_who_was_charged():
    from playvault_local.report import app_faults_lines

    faults = {"ssm_throttle_rate": 0.1, "ssm_get_parameter_calls": 40, "ssm_get_parameter_max_per_simulated_second": 2,
              "ssm_throttled": 3, "dynamodb_throttled": 2, "polls_hit": {"ssm": 5, "dynamodb": 1},
              "outcomes_of_polls_hit": {"deferred": 5, "raised:ClientError": 1}, "faults_outside_polls": {},
              "users_charged_for_app_failures": [], "charges": []}
    lines = app_faults_lines({"app_faults": faults})
    assert lines[0] == ("  app faults    : SSM throttled 3 of 40 GetParameter calls (at most 2 in one simulated "
                        "second), DynamoDB throttled 2; worker polls they hit: ssm 5, dynamodb 1 (deferred 5, "
                        "raised:ClientError 1); outside any poll: none")
    assert lines[1] == "  users charged for app failures: 0"
    faults["users_charged_for_app_failures"] = ["u1", "u2"]
    assert app_faults_lines({"app_faults": faults})[1] == "  users charged for app failures: 2 (u1, u2)"
