"""python -m playvault_local rebuild-rollups (--user ID | --all) [--endpoint-url URL] [--prefix P]

Rebuilds users' rollups from their plays (playvault.rollups: a new generation in the user's zone, the
old one deleted after), here in this process, against the tables of a local stack: `make serve`
prints its AWS endpoint ("AWS (moto)"), its tables are named <prefix>-<logical id>. The migration of
a deployment that had no rollups, and the repair of one whose rollups are in doubt. On a deployed
stack, send the jobs queue a message per user instead (README, Rollups): the jobs function runs the
same rebuild in bounded steps.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

from playvault.config import TableSettings


def table_settings(prefix: str) -> TableSettings:
    """Every table the models use, named as playvault_local.provision names them."""
    names = {}
    for field in TableSettings.model_fields:
        logical = "".join(part.capitalize() for part in field.removesuffix("_table").split("_")) + "Table"
        names[field] = f"{prefix}-{logical}"
    return TableSettings(**names)


def rebuild_users(user_ids: Iterable[str], report=print) -> int:
    """Rebuild each user to the end (one step after another, each with a generous budget)."""
    from playvault import rollups
    from playvault.spotify import Budget

    done = 0
    for user_id in user_ids:
        gen = rollups.start_rebuild(user_id, None)
        if gen is None:
            report(f"{user_id}: the rollups changed meanwhile (another rebuild began): skipped")
            continue
        steps = 1
        while rollups.rebuild(user_id, gen, Budget.seconds(600)) is not None:
            steps += 1
        report(f"{user_id}: rollups rebuilt (generation {gen}, {steps} step(s))")
        done += 1
    return done


def main(user: str | None, all_users: bool, endpoint_url: str | None, prefix: str) -> int:
    from playvault import store
    from playvault.store import users

    if endpoint_url:
        if not re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\]):\d+/?$", endpoint_url):
            print(f"rebuild-rollups: --endpoint-url {endpoint_url!r} is not a local http://127.0.0.1:PORT",
                  file=sys.stderr)
            return 2
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(name, "testing")  # the local emulator's, never real credentials
    store.bind(table_settings(prefix))
    if all_users:
        ids: Iterable[str] = (u.user_id for u in users.scan_polling_state())
    else:
        if users.get(user or "") is None:
            print(f"rebuild-rollups: no user {user!r}", file=sys.stderr)
            return 1
        ids = [user or ""]
    count = rebuild_users(ids)
    print(f"rebuild-rollups: {count} user(s) rebuilt")
    return 0
