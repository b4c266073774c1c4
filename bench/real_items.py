"""Item sizes and dispatcher scans from a real local run: `python -m bench.real_items [USERS] [HOURS]`.

Runs the local system (playvault_local's runner, as `make run` does: sign-up through the auth route,
the dispatcher on the template's schedule, the worker on the work queue, the Spotify emulator's
listening) for a few simulated hours, then sizes the items the functions wrote (bench/itemsize.py,
AWS's rules) and prints one JSON line:
- mean bytes of a user, a play, a rollups day item and the rollups' other items per user, the catalog
  bytes per track (tracks + albums + artists + episodes over tracks);
- the dispatcher's Scans: full passes over the users table (a Scan without ExclusiveStartKey starts
  one) per dispatcher run, and the read units one pass costs (items summed per page, / 4 KB, x0.5
  eventually consistent: a projection does not reduce it);
- KMS Decrypt calls per user-poll (the data-key cache ages on the simulated clock).
A separate process: the runner starts its own emulators and binds the environment.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from typing import Any


def _scan_all(client: Any, table: str) -> list[dict[str, Any]]:
    items, start = [], None
    while True:
        page = client.scan(TableName=table, **({"ExclusiveStartKey": start} if start else {}))
        items += page["Items"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def measure(users: int = 5, hours: int = 26) -> dict[str, Any]:
    import boto3

    from bench.instrument import Recorder
    from bench.itemsize import item_size
    from playvault_local import iam
    from playvault_local.runner import RunConfig, Simulation

    recorder = Recorder().install()
    out: dict[str, Any] = {}

    class Measured(Simulation):
        def _hours(self) -> None:
            recorder.reset()
            recorder.captured = []
            runs_before = len(self.dispatch_reports)
            super()._hours()
            captured, recorder.captured = recorder.captured or [], None
            stack, url = self.system.stack, self.system.aws.url
            with iam.unattributed():
                ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=url)
                tables = {logical: _scan_all(ddb, stack.name(logical)) for logical in
                          ("UsersTable", "PlaysTable", "RollupsTable", "TracksTable", "AlbumsTable", "ArtistsTable",
                           "EpisodesTable")}
            sizes = {k: [item_size(i) for i in v] for k, v in tables.items()}
            runs = len(self.dispatch_reports) - runs_before
            passes = sum(1 for op, params in captured if op == "Scan" and not params.get("ExclusiveStartKey"))
            day_items = [i for i in tables["RollupsTable"] if "day#" in i["bucket"]["S"]]
            day = [item_size(i) for i in day_items]
            plays_by_day = Counter((i["user_id"]["S"], i["played_at"]["S"][:10]) for i in tables["PlaysTable"])
            plays_in_day_items = sum(plays_by_day[(i["user_id"]["S"], i["bucket"]["S"][-10:])] for i in day_items)
            calls = Counter(f"{s}:{o}" for (s, o, _), n in recorder.calls.items() for _ in range(n))
            polls = sum(self.polls_by_user.values())
            user_bytes = sum(sizes["UsersTable"])
            tracks = max(1, len(tables["TracksTable"]))
            out.update({
                "users": len(tables["UsersTable"]), "hours": hours, "dispatcher_runs": runs,
                "user_item_bytes": round(user_bytes / max(1, len(sizes["UsersTable"])), 1),
                "play_item_bytes": round(sum(sizes["PlaysTable"]) / max(1, len(sizes["PlaysTable"])), 1),
                "plays": len(tables["PlaysTable"]),
                "rollup_day_item_bytes": round(sum(day) / max(1, len(day)), 1),
                "rollup_day_items": len(day),
                # day items grow with the plays of the day (UTC dates here: an approximation)
                "rollup_day_bytes_per_play": round(sum(day) / max(1, plays_in_day_items), 1),
                "rollup_other_bytes_per_user": round((sum(sizes["RollupsTable"]) - sum(day))
                                                     / max(1, len(tables["UsersTable"])), 1),
                "catalog_bytes_per_track": round(sum(sum(sizes[t]) for t in ("TracksTable", "AlbumsTable",
                                                                               "ArtistsTable", "EpisodesTable"))
                                                 / tracks, 1),
                "tracks": len(tables["TracksTable"]),
                "dispatcher_scans_per_run": round(passes / max(1, runs), 3),
                "scan_rru_per_pass": max(0.5, math.ceil(user_bytes / 4096) * 0.5),
                "polls": polls,
                "kms_decrypts": calls.get("kms:Decrypt", 0),
                "kms_decrypts_per_poll": round(calls.get("kms:Decrypt", 0) / max(1, polls), 3),
                "ssm_get_parameter": calls.get("ssm:GetParameter", 0),
            })

    from playvault_local.report import verdict

    report = Measured(RunConfig(users=users, hours=hours, seed=7)).run()
    # The items sized are those of a correct run: nothing lost or duplicated, nobody charged wrongly.
    out["run_verdict_ok"] = verdict(report)
    return out


def main() -> None:
    users = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    hours = int(sys.argv[2]) if len(sys.argv) > 2 else 26
    print(json.dumps(measure(users, hours)))


if __name__ == "__main__":
    main()
