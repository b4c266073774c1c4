"""`python -m playvault_local run|serve` as a developer runs it: a subprocess, its exit code, its files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from playvault_local.report import REQUIRED_KEYS
from tests.e2e._helpers import ROOT, cli, cli_env, servers_started_by


def test_a_small_run_exits_0_and_writes_the_report_and_the_dashboard(tmp_path):
    report, dashboard = tmp_path / "report.json", tmp_path / "dashboard.svg"
    done = cli("run", "--users", "10", "--hours", "3", "--report", str(report), "--dashboard", str(dashboard))
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    missing = [key for key in REQUIRED_KEYS if key not in data]
    assert not missing, f"report lacks {missing}"
    assert data["users"] == 10 and data["hours"] == 3
    assert data["plays_archived"] > 0 and data["plays_lost"] == 0 and data["plays_duplicated"] == 0
    assert data["spotify_requests"] > 0 and data["dynamodb_requests"] > 0
    assert data["iam"]["checked_calls"] > 0 and data["iam"]["denied"] == []  # every call checked, none refused
    svg = dashboard.read_text()
    assert svg.startswith("<svg") and "Plays archived" in svg and "<script" not in svg
    assert "lost" in done.stdout and "hour" in done.stderr  # the report, and the progress bar


def test_a_days_run_shows_a_seat_reclaimed_reused_and_refused(tmp_path):
    """--days: a user who revoked access lapses after ReclaimSeatAfterDays, a newcomer takes the
    seat, and the lapsed user signing in again meets the waitlist; nothing lost or duplicated."""
    report = tmp_path / "report.json"
    # A 5-day ReclaimSeatAfterDays (30 by default) fits the revoke, the lapse, the newcomer and the
    # sign-in again at the cap into 24 days.
    done = cli("run", "--days", "24", "--users", "5", "--parameter", "ReclaimSeatAfterDays=5", "--quiet",
               "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    life = data["lifecycle"]
    assert data["hours"] == 24 * 24 and life["tick_hours"] == 24 and data["dispatches"] == 24
    assert (life["lapsed"], life["late_sign_ups"], life["waitlisted_on_sign_in"]) == (1, 1, 1)
    assert data["users_by_status"] == {"active": 5, "lapsed": 1}  # 5 at the start, 1 lapsed, 1 newcomer
    assert data["plays_lost"] == 0 and data["plays_duplicated"] == 0
    assert life["reminders_sent"] == {} and life["emails_captured"] == 0  # nobody's 6 months end in 24 days
    assert "lapsed 1" in done.stdout


@pytest.mark.parametrize("args, words", [
    (["run", "--users", "0"], "--users"),
    (["run", "--hours", "many"], "--hours"),
    (["run", "--faults", "meteor"], "--faults"),
    (["run", "--time-scale", "-1"], "--time-scale"),
    (["run", "--report", "/no/such/dir/r.json"], "does not exist"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--spotify-api-url", "http://127.0.0.1:9/v1"], "--spotify-accounts-url"),
    (["fly"], "invalid choice"),
])
def test_bad_options_exit_2_with_a_message(args, words):
    done = cli(*args, timeout=60)  # a hang fails the test: failing fast is bounded, not timed
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr


def test_help_describes_the_options():
    done = cli("run", "--help", timeout=60)
    assert done.returncode == 0
    for option in ("--users", "--hours", "--days", "--tick-hours", "--seed", "--report", "--dashboard", "--faults",
                   "--time-scale"):
        assert option in done.stdout


@pytest.mark.parametrize("content", [None, "Resources: [unclosed\n", "Description: no resources\n"])
def test_a_broken_template_fails_fast_and_leaves_nothing_running(tmp_path, content):
    path = tmp_path / "template.yaml"
    if content is not None:
        path.write_text(content)
    for command in ("run", "serve"):
        process = subprocess.Popen([sys.executable, "-m", "playvault_local", command, "--template", str(path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 2, out + err
        assert "template" in err
        assert servers_started_by(process.pid) == []


def test_serve_on_an_occupied_port_fails_fast_and_leaves_no_server():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = subprocess.Popen([sys.executable, "-m", "playvault_local", "serve", "--port", str(port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 2, out + err
    assert str(port) in err
    assert servers_started_by(process.pid) == []
