"""The local IAM check in `make run`: a role that lacks a permission the run needs fails the run
(exit 3), naming the function, the action, the resource and the closest statement."""

from __future__ import annotations

import json

from tests.e2e._helpers import ROOT, cli

# The worker's grant to write plays (template.yaml, WorkerFunction's Policies).
GRANT = ("              Action: [dynamodb:PutItem, dynamodb:GetItem, dynamodb:Query, dynamodb:UpdateItem, "
         "dynamodb:DeleteItem]\n              Resource: !GetAtt PlaysTable.Arn\n")
WITHOUT_PUT = GRANT.replace("dynamodb:PutItem, ", "")


def test_a_worker_role_without_put_on_plays_fails_the_run_naming_it(tmp_path):
    source = (ROOT / "template.yaml").read_text()
    assert source.count(GRANT) == 1, "the worker's grant on the plays table moved: update GRANT"
    template = tmp_path / "template.yaml"
    template.write_text(source.replace(GRANT, WITHOUT_PUT))
    report = tmp_path / "report.json"
    done = cli("run", "--template", str(template), "--users", "2", "--hours", "1", "--report", str(report))
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    denied = json.loads(report.read_text())["iam"]["denied"]
    (entry,) = denied  # one entry, however many times the worker tried
    assert (entry["function"], entry["action"]) == ("WorkerFunction", "dynamodb:PutItem") and entry["count"] > 0
    assert entry["resource"].endswith(":table/playvault-local-PlaysTable")
    # the worker puts into other tables: the closest statement says so
    assert entry["closest"].endswith("(same action, another resource)"), entry["closest"]
    assert f"DENIED      : WorkerFunction may not dynamodb:PutItem on {entry['resource']}" in done.stdout
    assert "IAM verdict   : FAILED" in done.stdout
