"""Gaps aggregate: windows of a user's history where plays may have fallen out of Spotify's window.

A poll whose page is full (50 plays) and whose oldest play is newer than everything the previous
poll saw cannot tell what happened in between: that window is a gap. It is recorded here by the
worker before the user item moves on, so a crash right after detection cannot lose it (the retry
detects the same window and writes the same key again).

Access patterns: a user's gaps oldest first (Query); delete all of a user's gaps (Query + batch
delete). Key: user_id + from_at (the window's start as a canonical played_at string).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.models import Model

from playvault.clock import from_ms
from playvault.normalize import canonical_played_at
from playvault.store.base import BaseMeta, table


@table("gaps_table")
class GapModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)
    from_at = UnicodeAttribute(range_key=True)  # canonical ISO 8601 UTC with ms
    to_at = UnicodeAttribute()
    from_ms = NumberAttribute()
    to_ms = NumberAttribute()
    detected_at = UTCDateTimeAttribute(null=True)  # None for windows an import recorded
    plays_lost = NumberAttribute(null=True)  # known only when something else (an import) tells


def record(user_id: str, from_ms_: int, to_ms_: int, detected_at: datetime, plays_lost: int | None = None) -> None:
    """Idempotent: the same window detected again (a retried poll) writes the same row."""
    GapModel(
        user_id,
        canonical_played_at(from_ms(from_ms_)),
        to_at=canonical_played_at(from_ms(to_ms_)),
        from_ms=from_ms_,
        to_ms=to_ms_,
        detected_at=detected_at,
        plays_lost=plays_lost,
    ).save()


def for_user(user_id: str) -> Iterator[GapModel]:
    return GapModel.query(user_id)


def delete_for_user(user_id: str) -> int:
    deleted = 0
    with GapModel.batch_write() as batch:
        for gap in GapModel.query(user_id, attributes_to_get=["user_id", "from_at"], consistent_read=True):
            batch.delete(gap)
            deleted += 1
    return deleted
