"""Gaps aggregate: windows of a user's listening that fell out of Spotify's last-50 list between two
polls (detected, not recoverable). Table GapsTable, key user_id + from_at (ISO 8601 UTC with ms).

Access patterns: a user's gaps oldest first (Query); delete all of a user's gaps (account deletion).
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
    from_at = UnicodeAttribute(range_key=True)  # canonical ISO 8601 UTC with milliseconds
    to_at = UnicodeAttribute()
    from_ms = NumberAttribute()
    to_ms = NumberAttribute()
    detected_at = UTCDateTimeAttribute()
    plays_lost = NumberAttribute(null=True)  # unknown unless an import filled the gap


def for_user(user_id: str) -> Iterator[GapModel]:
    """The user's gaps, oldest first."""
    return GapModel.query(user_id)


def delete_for_user(user_id: str) -> int:
    """Delete every gap of the user (BatchWriteItem); returns how many were deleted."""
    deleted = 0
    with GapModel.batch_write() as batch:
        for gap in GapModel.query(user_id, attributes_to_get=["user_id", "from_at"]):
            batch.delete(gap)
            deleted += 1
    return deleted
