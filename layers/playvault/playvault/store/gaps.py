"""Gaps aggregate: windows in which plays may have fallen out of Spotify's 50-play window.

Minimal shape of the polling issue's contract (GapsTable, key user_id + from_at); the poll path
writes them, the coverage timeline reads them.
"""

from __future__ import annotations

from collections.abc import Iterator

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.models import Model

from playvault.store.base import BaseMeta, table


@table("gaps_table")
class GapModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)
    from_at = UnicodeAttribute(range_key=True)  # ISO 8601 UTC with ms
    to_at = UnicodeAttribute()
    from_ms = NumberAttribute()
    to_ms = NumberAttribute()
    detected_at = UTCDateTimeAttribute(null=True)
    plays_lost = NumberAttribute(null=True)


def for_user(user_id: str) -> Iterator[GapModel]:
    """A user's gaps, oldest first."""
    return GapModel.query(user_id)


def delete_for_user(user_id: str) -> int:
    deleted = 0
    with GapModel.batch_write() as batch:
        for gap in GapModel.query(user_id, attributes_to_get=["user_id", "from_at"]):
            batch.delete(gap)
            deleted += 1
    return deleted
