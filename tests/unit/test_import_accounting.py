"""The --import run's accounting (local/playvault_local/import_run.py): from the emulator's truth, the
uploads' provenance and the table, every qualifying stream once, and every imported play named
through history.best_names. Checked here on a hand-made table, so each count has a known answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from playvault_local.import_run import AFTER_THE_HOURS, BEFORE_FIRST_POLL, ExportFile, Imports, Upload
from playvault_local.report import import_verdict, verdict_words

CATALOG = {
    "TracksTable": [{"track_id": "t1", "name": "Catalog Song", "album_id": "a1", "artist_ids": ["r1"]}],
    "AlbumsTable": [{"album_id": "a1", "name": "Catalog Album"}],
    "ArtistsTable": [{"artist_id": "r1", "name": "Catalog Artist"}],
    "EpisodesTable": [],
}


class FakeEmulator:
    """What the accounting asks the emulator: every play, those Spotify showed, those still in its window."""

    def __init__(self, truth: list[int], exposed: set[int], window: set[int]):
        self.truth, self.exposed, self.window = truth, exposed, window

    def ground_truth(self, user_id: str) -> list[dict[str, Any]]:
        return [{"played_at_ms": m} for m in self.truth]

    def exposed_play_ms(self, user_id: str) -> set[int]:
        return set(self.exposed)

    def visible_window_ms(self, user_id: str) -> set[int]:
        return set(self.window)


class FakeAws:
    def table_items(self, table: str, attributes: list[str]) -> list[dict[str, Any]]:
        return [{a: item[a] for a in attributes if a in item} for item in CATALOG[table]]


def imports_of(emulator: FakeEmulator, *uploads: Upload) -> Imports:
    system = SimpleNamespace(emulator_state=emulator, aws=FakeAws(), stack=SimpleNamespace(name=lambda n: n))
    imports = Imports(SimpleNamespace(system=system, population=[SimpleNamespace(user_id="u1")]))
    for upload in uploads:
        imports.uploads.append(upload)
        imports.by_job[upload.job_id] = upload
    return imports


def export(*provenance: tuple[tuple[str, int], bool]) -> list[ExportFile]:
    return [ExportFile("Streaming_History_Audio_0.json", [{} for _ in provenance], list(provenance))]


def row(ms: int, source: str = "api", ref: str | None = None, **names: Any) -> dict[str, Any]:
    return {"user_id": "u1", "played_at": f"t{ms}", "played_at_ms": ms, "source": source, "item_type": "track",
            **({"import_ref": ref} if ref else {}), **names}


def test_each_stream_once_with_a_name_is_a_clean_account():
    # Polled 1000.123 and 2000.456; the export reports 1000.123 (merged into the polled row), 3000.789
    # (imported at its whole second, named by the catalog) and one stream before sign-up.
    upload = Upload("u1", BEFORE_FIRST_POLL, "j1", export(
        (("play", 1_000_123), True), (("play", 3_000_789), True), (("history", 500_000), True),
        (("history", 600_000), False)))
    imports = imports_of(FakeEmulator([1_000_123, 2_000_456, 3_000_789], {1_000_123, 2_000_456}, set()), upload)
    rows = [row(1_000_123, ref="j1:0:0", track_name="Song"), row(2_000_456, track_id="t1"),
            row(3_000_000, "export", "j1:0:1", track_id="t1"),
            row(500_000, "export", "j1:0:2", track_name="Old Song", artist_name="Old Artist")]
    account = imports.accounting(rows)
    assert (account["streams_expected"], account["streams_archived"]) == (4, 4)
    assert (account["plays_lost"], account["plays_duplicated"]) == (0, 0)
    assert (account["imported_plays"], account["imported_plays_without_name"]) == (3, 0)
    assert account["by_scenario"][BEFORE_FIRST_POLL] == {"users": 1, "streams": 4, "lost": 0, "duplicated": 0}
    assert import_verdict({"import": {**account, "jobs_by_state": {"done": 1}}})


def test_a_duplicate_a_lost_play_a_dropped_stream_and_a_nameless_play_are_each_counted():
    upload = Upload("u1", AFTER_THE_HOURS, "j1", export(
        (("play", 1_000_123), True), (("play", 3_000_789), True), (("history", 500_000), True),
        (("history", 600_000), False)))
    emulator = FakeEmulator([1_000_123, 2_000_456, 3_000_789, 4_000_001], {1_000_123, 2_000_456, 4_000_001},
                            {4_000_001})
    rows = [row(1_000_123), row(1_000_000, "export", "j1:0:0", track_name="Song"),  # one stream, two rows
            # 2000.456 (polled, out of Spotify's window) and 3000.789 (exported): no row, lost
            row(500_000, "export", "j1:0:2", track_id="gone"),  # no stored name, not in the catalog
            row(600_000, "export", "j1:0:3", track_name="Skipped")]  # a stream the listening rule drops
    account = imports_of(emulator, upload).accounting(rows)
    assert account["plays_lost"] == 2 and account["plays_recoverable"] == 1  # 4000.001: the next poll has it
    assert account["plays_duplicated"] == 2
    assert (account["imported_plays"], account["imported_plays_without_name"]) == (3, 1)
    assert account["by_scenario"][AFTER_THE_HOURS]["lost"] == 2
    assert any("1970-01-01T00:16:40.123Z" in e and "(export," in e for e in account["examples"]["duplicated"])
    section = {**account, "jobs_by_state": {"done": 1}}
    assert not import_verdict({"import": section})
    for change, problem in (({"plays_lost": 0, "plays_duplicated": 0}, "imported plays without a name"),
                            ({"imported_plays_without_name": 0}, "plays lost or duplicated")):
        report = {"plays_lost": 0, "plays_duplicated": 0, "import": {**section, **change}}
        assert not import_verdict(report) and problem in verdict_words(report)
