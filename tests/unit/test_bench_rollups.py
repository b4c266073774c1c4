"""The rollups benchmark seeds large histories in process (bench.rollups.seed_in_process) instead of
rebuilding them from the plays table: that seeding must write exactly what the rebuild writes, or
the page views it measures are not the code's."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench import rollups as bench_rollups
from playvault import clock, rollups
from playvault.store import rollups as store
from playvault.store import users

STATE_FIELDS = ("gen", "tz", "status", "old_gen", "phase", "cursor", "closed_through", "first_day", "last_day",
                "plays_done", "plays_total", "covered")


def _items(user_id: str, gen: int) -> dict[str, tuple[int, dict]]:
    return {item.bucket.split("#", 1)[1]: (int(item.version), store.decode(item.data))
            for item in store.under(user_id, store.bucket_key(gen, ""), consistent=True)}


def _state(user_id: str) -> dict:
    state = store.state(user_id)
    return {name: getattr(state, name) for name in STATE_FIELDS}


@pytest.mark.parametrize("tz", ["America/St_Johns"])  # a half-hour zone with DST: local days are not UTC days
def test_seeding_in_process_writes_what_the_rebuild_from_the_plays_writes(aws_env, tz):
    now = bench_rollups.NOW
    clock.set_clock(lambda: now)
    bench_rollups._seed_catalog()
    by_rebuild, in_process = "bench-rebuilt", "bench-seeded"
    for user_id in (by_rebuild, in_process):
        users.UserModel(user_id, status=users.ACTIVE, created_at=now - timedelta(days=400)).save()
    # 400 plays over ten years: days near midnight, both sources (kept small: make test runs it).
    rebuilt_rows = bench_rollups.synthetic_plays(by_rebuild, 400)
    bench_rollups._write_plays(rebuilt_rows)
    gen = rollups.start_rebuild(by_rebuild, None, tz, now)
    while rollups.rebuild(by_rebuild, gen, bench_rollups._Unlimited(), now=lambda: now) is not None:
        pass

    seeded_gen = bench_rollups.seed_in_process(in_process, bench_rollups.synthetic_plays(in_process, 400), now, tz)

    assert seeded_gen == gen
    rebuilt, seeded = _items(by_rebuild, gen), _items(in_process, seeded_gen)
    assert sum(1 for bucket in rebuilt if bucket.startswith("day#")) > 300
    assert {"all", "firsts", "year#2020", "month#2020-02"} <= set(rebuilt)
    assert rebuilt["all"][1]["plays"] == 400
    assert seeded == rebuilt
    assert _state(in_process) == _state(by_rebuild)
    assert _state(in_process)["status"] == store.READY
