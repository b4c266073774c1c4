"""Rollups (playvault.rollups): what a page view costs by history size, and what the rollups add to
the write cost of an archived play.

Users with 1,000, 20,000 and 200,000 plays spread over ten years (a catalog of 2,000 tracks) on
moto_server, their plays in the plays table. Their rollups: up to REBUILD_MAX plays by the rebuild
from the plays table (the migration path; `rebuild_seconds`); above it moto's Query (it walks the
whole partition per page) makes that take hours, so `seed_in_process` builds the same generation
from the plays in memory with the rebuild's own code: day_aggregate per local day, written by
put_plain, then the rebuild itself for the months, years, the all item and the ready state
(tests/unit/test_bench_rollups.py checks both give the same items). Then, per user and period,
one page view as functions/account makes it: `default` (this month, /me), `all` (all time) and `year`
(the year in review of the last whole year), with nothing dirty: DynamoDB read units from item sizes
(bench.instrument.Recorder, AWS's rules) and the handler-side time of the call.

`rollup_wru_per_play`: the 20,000-play user then listens 16 hours a day, 15 plays an hour, polled
hourly, for three days: each poll marks its dates dirty before writing its plays and the first poll
of a UTC day settles the days before (the worker's sweep), as the worker does; the last day is
settled at the end. The rollups table's write units over the plays written is the figure (the
plays' own units are not in it).
Standalone: `python -m bench.rollups --sizes 1000,20000,200000`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

TRACKS = 2_000
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
YEARS = 10
SIZES = (1_000, 20_000, 200_000)
REBUILD_MAX = 1_000  # larger histories are seeded in process (seed_in_process)


class _Unlimited:
    def remaining_s(self) -> float:
        return 1e9


def _seed_catalog() -> None:
    from bench import catalog

    catalog.seed(TRACKS, first_artist=lambda i: i % 500)  # 500 artists: each recurs across tracks


def synthetic_plays(user_id: str, plays: int, now: datetime = NOW) -> list[Any]:
    """`plays` plays spread evenly over the YEARS before `now`, in played_at order."""
    from playvault.store.plays import PlayModel

    start = now - timedelta(days=365 * YEARS)
    step = (now - start) / plays
    out = []
    for i in range(plays):
        at = start + step * i
        at = at.replace(microsecond=0)
        # A skewed choice of tracks (some played often, most rarely), as people listen.
        track = (i * 31) % 200 if i % 3 else (i * 7919) % TRACKS
        out.append(PlayModel(user_id, at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                             played_at_ms=int(at.timestamp() * 1000), track_id=f"track{track:05d}",
                             source="export" if i % 2 else "api", ms_played=150_000 if i % 2 else None))
    return out


def _write_plays(rows: list[Any]) -> None:
    from playvault.store.plays import PlayModel

    with PlayModel.batch_write() as batch:
        for play in rows:
            batch.save(play)


def seed_in_process(user_id: str, rows: list[Any], now: datetime, tz: str | None = None) -> int:
    """What the rebuild from the plays table writes, from `rows` (the user's plays, as stored) in
    memory: a new generation (start_rebuild), each local day's item by day_aggregate over the
    catalog's PlayRows (history.Catalog, as the rebuild names them) written by put_plain, the days
    phase's checkpoint as _rebuild_days leaves it, then the rebuild itself (months, years, the all
    and firsts items, ready, cleanup). Returns the generation."""
    from playvault import history, rollups
    from playvault.store import rollups as store

    gen = rollups.start_rebuild(user_id, None, tz, now)
    if gen is None:
        raise RuntimeError(f"{user_id}: another generation began")
    state = store.state(user_id)
    where = rollups.Where(user_id, gen, state.tz or rollups.DEFAULT_TZ)
    where_zone = where.zone
    ordered = sorted(rows, key=lambda p: p.played_at)
    store.save_progress(state, now, plays_total=len(ordered), covered=store.encode(store.dirty(user_id)))
    by_day: dict[Any, list[Any]] = {}
    for play in ordered:
        by_day.setdefault(rollups.local_day(int(play.played_at_ms), where_zone), []).append(play)
    catalog = history.Catalog()
    for day, plays_of_day in sorted(by_day.items()):
        store.put_plain(user_id, where.day(day), rollups.day_aggregate(
            list(zip(plays_of_day, catalog.rows(plays_of_day), strict=True)), where_zone))
    days = sorted(by_day)
    edge = {"closed_through": days[-1].isoformat(), "first_day": days[0].isoformat(),
            "last_day": days[-1].isoformat()} if days else {}
    store.save_progress(state, now, plays_done=len(ordered), phase=store.PHASE_LEVELS, cursor=None, **edge)
    while rollups.rebuild(user_id, gen, _Unlimited(), now=lambda: now) is not None:
        pass
    return gen


def _view(recorder: Any, call: Any) -> dict[str, Any]:
    recorder.reset()
    began = time.perf_counter()
    call()
    ms = (time.perf_counter() - began) * 1000
    snapshot = recorder.snapshot()
    return {"read_units": round(sum(snapshot["rru"].values()), 1), "ms": round(ms, 1),
            "requests": sum(snapshot["calls"].values())}


def run(recorder: Any, aws_url: str, sizes: tuple[int, ...] = SIZES, days: int = 3) -> dict[str, Any]:
    from playvault import clock, rollups, store
    from playvault.config import AccountSettings
    from playvault.normalize import Play, canonical_played_at
    from playvault.store import catalog, plays, users
    from playvault.store import rollups as rollup_store
    from playvault_local.provision import provision

    stack = provision(endpoint_url=aws_url, prefix="bench-rollups", parameters={"Stage": "rollups"})
    os.environ.update(stack.env)
    store.bind(AccountSettings.from_env())
    for model in store.ALL_MODELS.values():  # moto walks the whole partition per Query page
        model.Meta.read_timeout_seconds = 600
        model._connection = None
    recorder.probe = recorder.uncounted_client("dynamodb", endpoint_url=aws_url, region_name="us-east-1")
    clock.set_clock(lambda: NOW)
    out: dict[str, Any] = {"page_view": {}, "rebuild_seconds": {}, "seed_in_process_seconds": {},
                           "seed_plays_seconds": {}, "first_and_last_play_ms": {}, "item_bytes": {}}
    with recorder.paused():
        _seed_catalog()
    try:
        for size in sizes:
            user_id = f"bench-rollups-{size}"
            with recorder.paused():
                users.UserModel(user_id, status=users.ACTIVE, created_at=NOW - timedelta(days=400)).save()
                rows = synthetic_plays(user_id, size)
                began = time.perf_counter()
                _write_plays(rows)
                out["seed_plays_seconds"][str(size)] = round(time.perf_counter() - began, 1)
                began = time.perf_counter()
                if size <= REBUILD_MAX:
                    gen = rollups.start_rebuild(user_id, None)
                    while rollups.rebuild(user_id, gen, _Unlimited()) is not None:
                        pass
                    out["rebuild_seconds"][str(size)] = round(time.perf_counter() - began, 1)
                else:
                    gen = seed_in_process(user_id, rows, NOW)
                    out["seed_in_process_seconds"][str(size)] = round(time.perf_counter() - began, 1)
                del rows
                print(f"rollups: {size} plays seeded: plays {out['seed_plays_seconds'][str(size)]} s, rollups "
                      f"{time.perf_counter() - began:.1f} s", flush=True)
            user = users.get(user_id)
            today = NOW.date()
            month = rollups.resolve_period(None, None, None, "UTC", today)
            everything = rollups.resolve_period("all", None, None, "UTC", today)
            views = {
                "default": lambda u=user, p=month: rollups.figures(u, p, NOW),
                "all": lambda u=user, p=everything: rollups.figures(u, p, NOW),
                "year": lambda u=user, y=today.year - 1: rollups.year_review(u, y, NOW),
            }
            out["page_view"][str(size)] = {name: _view(recorder, call) for name, call in views.items()}
            # The year page's coverage reads the first and last play (two Query, Limit 1): moto sorts the
            # whole partition for each, DynamoDB reads one item. Timed alone to tell moto's part.
            with recorder.paused():
                began = time.perf_counter()
                plays.first_and_last(user_id)
                out["first_and_last_play_ms"][str(size)] = round((time.perf_counter() - began) * 1000, 1)
            sizes_of = {}
            for bucket in (f"g{gen}#year#{today.year - 1}", f"g{gen}#month#{today:%Y-%m}", f"g{gen}#all"):
                item = rollup_store.get(user_id, bucket)
                sizes_of[bucket.split("#", 1)[1]] = len(item.data) if item is not None else 0
            out["item_bytes"][str(size)] = sizes_of
            print(f"rollups: {size} plays: {json.dumps(out['page_view'][str(size)])}", flush=True)

        # The write cost: three days of hourly polls of a 20,000-play user (or the largest measured).
        listener = f"bench-rollups-{20_000 if 20_000 in sizes else sizes[-1]}"
        track = catalog.TrackModel.get("track00001")
        from playvault.normalize import Album, Artist, Track

        artist = Artist("artist00001", "Artist 1", None)
        normalized = Track(track.track_id, track.name, None, int(track.duration_ms), False, False,
                           Album(track.album_id, "Album 1", None, None, None, None, (artist,)), (artist,))
        recorder.reset()
        written = 0
        start = datetime(NOW.year, NOW.month, NOW.day, 7, tzinfo=UTC)
        for day in range(days):
            for hour in range(16):
                polled_at = start + timedelta(days=day, hours=hour)
                clock.set_clock(lambda at=polled_at: at)
                new = [Play(canonical_played_at(at), int(at.timestamp() * 1000), normalized)
                       for at in (polled_at - timedelta(minutes=4 * k + 1) for k in range(15))]
                fresh = rollups.mark(listener, [p.played_at_ms for p in new])
                written += plays.write_plays(listener, new)
                rollups.sweep(listener, fresh, polled_at)
        rollups.settle(listener)  # the last day too (a page view, or the next day's sweep)
        snapshot = recorder.snapshot()
        rollup_wru = sum(n for table, n in snapshot["wru"].items() if "Rollups" in table)
        play_wru = sum(n for table, n in snapshot["wru"].items() if "Plays" in table)
        out["rollup_wru_per_play"] = round(rollup_wru / written, 3)
        out["rollup_write_scenario"] = {"plays": written, "days": days, "polls": days * 16,
                                        "rollups_wru": rollup_wru, "plays_wru": play_wru,
                                        "history_plays": int(listener.rsplit("-", 1)[1])}
        print(f"rollups: {out['rollup_wru_per_play']} rollup WRU per archived play", flush=True)
    finally:
        clock.reset_clock()
    return out


def summary(results: dict[str, Any]) -> str:
    lines = ["== rollups: page views (read units, ms) by history size"]
    for size, views in results["page_view"].items():
        lines.append(f"  {int(size):>7,} plays: " + ", ".join(
            f"{name} {v['read_units']} RU {v['ms']:.0f} ms" for name, v in views.items()))
    lines.append(f"  rollups' extra write units per archived play: {results['rollup_wru_per_play']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollups", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="history sizes (plays)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--merge-into", default=None, metavar="RESULTS",
                        help="merge the rollup keys into this results file (bench/results.json) as `make bench` does")
    args = parser.parse_args(argv)
    from bench.__main__ import LAYER, ROOT, _start_moto
    from bench.instrument import Recorder

    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"})
    for path in (str(LAYER), str(ROOT / "local"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    moto, aws_url = _start_moto()
    recorder = Recorder().install()
    try:
        results = run(recorder, aws_url, tuple(int(s) for s in args.sizes.split(",") if s.strip()))
    finally:
        recorder.uninstall()
        moto.stop()
    print(summary(results))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    if args.merge_into:
        with open(args.merge_into) as handle:
            merged = json.load(handle)
        merged.update(results_keys(results))
        with open(args.merge_into, "w") as handle:
            json.dump(merged, handle, indent=2)
            handle.write("\n")
    return 0


def results_keys(measured: dict[str, Any]) -> dict[str, Any]:
    """The keys of bench/results.json this benchmark owns."""
    return {"page_view": measured["page_view"], "rollup_wru_per_play": measured["rollup_wru_per_play"],
            "rollups": {k: v for k, v in measured.items() if k not in ("page_view", "rollup_wru_per_play")}}


if __name__ == "__main__":
    sys.exit(main())
