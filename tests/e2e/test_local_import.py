"""`make run ARGS="--import"`: emulated users import data exports consistent with the emulator's
history in three orders (before their first poll, right after a reconnect, after the hours); the
report's accounting is checked against the emulator's truth."""

from __future__ import annotations

import json

from playvault_local.report import import_verdict
from tests.e2e._helpers import cli


def test_a_run_with_imports_in_every_order_keeps_each_play_once_with_its_names(tmp_path):
    report = tmp_path / "report.json"
    done = cli("run", "--users", "8", "--hours", "5", "--import", "--quiet", "--report", str(report))
    section = json.loads(report.read_text())["import"]
    assert section["uploads_by_scenario"] == {"before_first_poll": 2, "after_reconnect": 1, "after_the_hours": 5}
    assert list(section["reconnects"].values()) == ["reconnected"]
    assert section["jobs_by_state"] == {"done": 8}
    assert {"too_short", "incognito"} <= set(section["skipped_by_reason"])
    assert section["episodes_added"] > 0 and section["tracks_still_to_resolve"] == 0
    assert section["imported_plays"] > 0 and section["imported_plays_without_name"] == 0
    assert "names present on" in done.stdout
    # Every stream polling saw or an export holds, once: whatever the order of polls and imports.
    assert (section["plays_lost"], section["plays_duplicated"]) == (0, 0), (section["by_scenario"],
                                                                            section["examples"])
    assert section["streams_archived"] == section["streams_expected"] > 0
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_import_verdict_fails_on_a_lost_duplicated_or_nameless_play_or_an_unfinished_job():
    good = {"plays_lost": 0, "plays_duplicated": 0, "imported_plays_without_name": 0, "jobs_by_state": {"done": 2}}
    assert import_verdict({"import": good}) and import_verdict({})
    for change in ({"plays_lost": 1}, {"plays_duplicated": 1}, {"imported_plays_without_name": 1},
                   {"jobs_by_state": {"done": 1, "paused": 1}}):
        assert not import_verdict({"import": {**good, **change}})
