"""Rollups aggregate: per-user read models of the plays (playvault.rollups computes them).

Table RollupsTable, key user_id + bucket. Items:
- `g<N>#day#YYYY-MM-DD`, `g<N>#month#YYYY-MM`, `g<N>#year#YYYY`, `g<N>#all`, `g<N>#firsts`: one
  generation N of a user's rollups, in the time zone of that generation (local days). `data` is the
  aggregate as zlib-compressed JSON (a heavy month's per-track map is ~3x smaller so), `version` is
  the optimistic lock of every recompute: a put is conditional on the version read before the
  inputs were read, so a recompute that read older inputs never overwrites a newer one.
- `dirty#YYYY-MM-DD`: a UTC date whose plays a writer is changing (marked before it writes, `marks`
  counts the marks); deleted only by a recompute that read the plays after the mark it saw.
- `state`: the generation in use, its time zone, and the rebuild that fills a new generation.

Access patterns: GetItem/BatchGetItem of the buckets a page shows; Query of a generation's prefix
(a month's days, a year's months); Query of `dirty#`; UpdateItem ADD for a mark.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pynamodb.attributes import BinaryAttribute, NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import DeleteError, PutError, TransactWriteError, UpdateError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from playvault.store.base import BaseMeta, condition_failed, table

DIRTY_PREFIX = "dirty#"
STATE_KEY = "state"
READY = "ready"
REBUILDING = "rebuilding"
PHASE_DAYS, PHASE_LEVELS, PHASE_CLEANUP = "days", "levels", "cleanup"  # a rebuild's phases


@table("rollups_table")
class RollupModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)
    bucket = UnicodeAttribute(range_key=True)
    version = NumberAttribute(null=True)  # rollup items: bumped by every put
    data = BinaryAttribute(null=True, legacy_encoding=False)  # rollup items: zlib(JSON)
    marks = NumberAttribute(null=True)  # dirty items
    # the state item
    gen = NumberAttribute(null=True)
    tz = UnicodeAttribute(null=True)
    status = UnicodeAttribute(null=True)  # READY | REBUILDING
    old_gen = NumberAttribute(null=True)  # deleted once the rebuild is done
    phase = UnicodeAttribute(null=True)
    cursor = UnicodeAttribute(null=True)  # days: the played_at read up to; levels: the last bucket done
    closed_through = UnicodeAttribute(null=True)  # days: every local day up to this one is written
    first_day = UnicodeAttribute(null=True)  # the first and last local day the rebuild wrote
    last_day = UnicodeAttribute(null=True)
    plays_done = NumberAttribute(null=True)
    plays_total = NumberAttribute(null=True)
    updated_at = UTCDateTimeAttribute(null=True)
    # The dirty marks when the rebuild began reading the plays (zlib JSON {date: marks}): it covers
    # them, so they are cleared once it is done (unless marked again meanwhile).
    covered = BinaryAttribute(null=True, legacy_encoding=False)


def bucket_key(gen: int, *parts: str) -> str:
    return "#".join([f"g{gen}", *parts])


def encode(data: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(), 6)


def decode(blob: bytes | None) -> dict[str, Any] | None:
    return None if blob is None else json.loads(zlib.decompress(blob))


# -- rollup items ---------------------------------------------------------------------------------
def get(user_id: str, bucket: str, consistent: bool = False) -> RollupModel | None:
    try:
        return RollupModel.get(user_id, bucket, consistent_read=consistent)
    except RollupModel.DoesNotExist:
        return None


def get_many(user_id: str, buckets: Iterable[str], consistent: bool = False) -> dict[str, RollupModel]:
    """BatchGetItem (100 keys a request); missing buckets are absent from the answer."""
    keys = [(user_id, b) for b in dict.fromkeys(buckets)]
    found: dict[str, RollupModel] = {}
    for start in range(0, len(keys), 100):
        for item in RollupModel.batch_get(keys[start:start + 100], consistent_read=consistent):
            found[item.bucket] = item
    return found


def under(user_id: str, prefix: str, consistent: bool = False) -> Iterator[RollupModel]:
    """The items whose bucket starts with `prefix`, in bucket order."""
    return RollupModel.query(user_id, RollupModel.bucket.startswith(prefix), consistent_read=consistent)


def put_versioned(user_id: str, bucket: str, data: dict[str, Any] | None, read_version: int | None) -> bool:
    """Write (or, data None, delete) the item if its version is still `read_version` (None: absent).
    False when another recompute wrote it meanwhile."""
    condition = (RollupModel.bucket.does_not_exist() if read_version is None
                 else RollupModel.version == read_version)
    try:
        if data is None:
            if read_version is not None:
                RollupModel(user_id, bucket).delete(condition=condition)
            return True
        RollupModel(user_id, bucket, version=(read_version or 0) + 1, data=encode(data)).save(condition=condition)
    except (PutError, DeleteError) as exc:
        if condition_failed(exc):
            return False
        raise
    return True


def put_plain(user_id: str, bucket: str, data: dict[str, Any]) -> None:
    """A rebuild writes its new generation unconditionally (nothing else writes it meanwhile)."""
    RollupModel(user_id, bucket, version=1, data=encode(data)).save()


# -- dirty dates ----------------------------------------------------------------------------------
def mark_dirty(user_id: str, utc_dates: Iterable[str]) -> list[str]:
    """Before a writer changes plays of these UTC dates (YYYY-MM-DD): one UpdateItem ADD per date.
    Returns the dates whose mark is fresh (not dirty before: the first write of a date, or the
    first since it was recomputed)."""
    fresh = []
    for day in sorted(set(utc_dates)):
        item = RollupModel(user_id, DIRTY_PREFIX + day)
        item.update(actions=[RollupModel.marks.add(1)])
        if int(item.marks or 0) == 1:
            fresh.append(day)
    return fresh


def dirty(user_id: str) -> dict[str, int]:
    """UTC date -> marks, strongly consistent (a recompute must see every mark made before it)."""
    return {item.bucket[len(DIRTY_PREFIX):]: int(item.marks or 0)
            for item in RollupModel.query(user_id, RollupModel.bucket.startswith(DIRTY_PREFIX), consistent_read=True)}


def clear_dirty(user_id: str, utc_date: str, marks: int, gen: int) -> bool:
    """Delete the mark if nobody marked the date again since it was read (`marks`) and the
    generation recomputed is still the one in use (a time zone change starts a rebuild that must
    see the date): one transaction. False otherwise (the date stays dirty)."""
    state_condition = (RollupModel.gen == gen) & (RollupModel.status == READY)
    if gen == 0:
        state_condition = RollupModel.bucket.does_not_exist() | state_condition
    try:
        with TransactWrite(connection=RollupModel._get_connection().connection) as transaction:
            transaction.delete(RollupModel(user_id, DIRTY_PREFIX + utc_date), condition=RollupModel.marks == marks)
            transaction.condition_check(RollupModel, user_id, STATE_KEY, condition=state_condition)
    except TransactWriteError as exc:
        reasons = [r.code if r is not None else None for r in (exc.cancellation_reasons or [])]
        if "ConditionalCheckFailed" in reasons or "TransactionConflict" in reasons:
            return False
        raise
    return True


# -- the state item -------------------------------------------------------------------------------
def state(user_id: str) -> RollupModel:
    """The user's state item; a user without one is on generation 0 in UTC, ready."""
    found = get(user_id, STATE_KEY, consistent=True)
    return found or RollupModel(user_id, STATE_KEY, gen=0, tz="UTC", status=READY)


def start_generation(current: RollupModel, tz: str, now: datetime) -> RollupModel | None:
    """A new generation in `tz`, rebuilding, if the state is still `current` (None: changed meanwhile)."""
    new = RollupModel(current.user_id, STATE_KEY, gen=int(current.gen or 0) + 1, tz=tz, status=REBUILDING,
                      old_gen=int(current.gen or 0), phase=PHASE_DAYS, plays_done=0, updated_at=now)
    try:
        new.save(condition=RollupModel.bucket.does_not_exist() | (RollupModel.gen == int(current.gen or 0)))
    except PutError as exc:
        if condition_failed(exc):
            return None
        raise
    return new


def save_progress(current: RollupModel, now: datetime, **fields: Any) -> bool:
    """Checkpoint of a rebuild, on the generation it rebuilds only. False: another generation began."""
    actions = [RollupModel.updated_at.set(now)]
    for name, value in fields.items():
        attribute = getattr(RollupModel, name)
        actions.append(attribute.remove() if value is None else attribute.set(value))
    try:
        current.update(actions=actions, condition=RollupModel.gen == int(current.gen or 0))
    except UpdateError as exc:
        if condition_failed(exc):
            return False
        raise
    return True


# -- deletion -------------------------------------------------------------------------------------
def delete_prefix(user_id: str, prefix: str, limit: int | None = None) -> int:
    """Delete the user's items under `prefix` ("" for all of them); returns how many."""
    deleted = 0
    condition = RollupModel.bucket.startswith(prefix) if prefix else None
    with RollupModel.batch_write() as batch:
        for item in RollupModel.query(user_id, condition, attributes_to_get=["user_id", "bucket"],
                                      consistent_read=True):
            batch.delete(item)
            deleted += 1
            if limit is not None and deleted >= limit:
                break
    return deleted


def delete_for_user(user_id: str) -> int:
    return delete_prefix(user_id, "")
