"""`make run ARGS="--import"`: every emulated user imports a data export consistent with the
emulator's history; the report's figures are checked against what the export holds."""

from __future__ import annotations

import json

from playvault_local.report import import_verdict
from tests.e2e._helpers import cli


def test_a_run_with_imports_adds_the_history_and_duplicates_nothing(tmp_path):
    report = tmp_path / "report.json"
    done = cli("run", "--users", "8", "--hours", "5", "--import", "--quiet", "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    section = json.loads(report.read_text())["import"]
    assert section["jobs_by_state"] == {"done": 8}
    assert section["plays_added"] == section["plays_added_expected"] > 0
    assert section["duplicates_avoided"] == section["overlap_with_polling"] > 0
    assert section["plays_duplicated"] == 0
    assert section["polled_period_plays_filled"] > 0  # the revoked user's plays, gap plays
    assert section["plays_in_table_after"] - section["plays_in_table_before"] == section["plays_added"]
    assert {"too_short", "incognito"} <= set(section["skipped_by_reason"])
    assert "newer_than_polling" not in section["skipped_by_reason"]  # nothing is left to polling
    assert section["episodes_added"] > 0 and section["tracks_still_to_resolve"] == 0
    assert "duplicates avoided" in done.stdout
    # One more poll of everyone after the import: the rows after the last poll, imported too, are
    # merged into the plays that poll writes: nothing twice, nothing missing.
    after = section["after_poll"]
    assert (after["plays_duplicated"], after["plays_lost"]) == (0, 0)
    assert after["polled_plays_holding_an_import"] > section["duplicates_avoided"]


def test_the_import_verdict_fails_on_a_duplicate_or_a_missed_overlap():
    good = {"plays_duplicated": 0, "plays_added": 5, "plays_added_expected": 5, "duplicates_avoided": 3,
            "overlap_with_polling": 3, "jobs_by_state": {"done": 2}}
    assert import_verdict({"import": good}) and import_verdict({})
    for change in ({"plays_duplicated": 1}, {"plays_added": 4}, {"duplicates_avoided": 2},
                   {"jobs_by_state": {"done": 1, "paused": 1}}, {"after_poll": {"plays_duplicated": 1}},
                   {"after_poll": {"plays_lost": 1}}):
        assert not import_verdict({"import": {**good, **change}})
