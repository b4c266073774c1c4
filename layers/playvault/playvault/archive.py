"""archive_user: read the user -> fetch the last 50 plays -> write the missing ones -> record the poll.

Every poll reads Spotify's whole window (the last 50 plays) and compares it with `recent_played`,
the played_at values of the previous poll's page, all archived. Plays not in that set are written,
whatever their played_at: a play that shows up late, after newer ones were archived, is written
when it shows up. The cursor (`cursor_ms`) is now only the newest archived played_at, for display
and gap bounds; it decides nothing.

Order is the guarantee: plays first (keyed by user and played_at, each a conditional put, so a
rewrite finds its row and changes nothing), then, for a user with imports, the merge of the export
rows the identity rule calls the same plays (store/plays.reconcile), then the gap record, then one
conditional UpdateItem of the user that moves `recent_played` on.
A crash anywhere before that update leaves the old set, and the retry writes the same rows again.
The update is conditional on the user's version: a concurrent poll, a reconnect or a deletion in
between makes it fail, and this poll reports the user skipped (its rows are identical to what the
winner wrote; a play only it saw is written and counted by the next poll, which does not find it in
the set).

Requests for a poll with no new play: GetItem (user) + UpdateItem (user, 1 WRU). New plays add an
UpdateItem of the rollups' dirty mark per UTC date they fall on (playvault.rollups), a
conditional PutItem each and the catalog lookups of tracks this container has not met; for a user
with imports (`has_imports`), one Query of the window they span (and a transaction per merge).

Imports: the importer flags the user (`has_imports`, bumping `version`) before its first write. A
poll that read the user before the flag cannot record its poll (the version changed): it reports
the user skipped and the next poll, which sees the flag, writes and merges again. The merge runs
before the user's update, so a crash between them is redone by the next poll.

Failures: a user's own failure (AUTH, AUTH_REVOKED, NETWORK, UNKNOWN) is recorded in the circuit
breaker and returned, never raised. App-level failures (rate limits, rejected or unreadable client
credentials, Spotify failing everyone) close the app-wide gate and defer the user without counting
anything against them. Infrastructure failures (DynamoDB, KMS) are raised so the message is redelivered.
Tokens: access tokens live only in this container's memory (bounded, until expiry); only the sealed
refresh token is stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from playvault import breaker, clock, identity, metrics, rollups
from playvault.crypto import REFRESH_TOKEN, TokenCipher, TokenDecryptError
from playvault.failures import (
    AppFailure,
    AuthFailed,
    AuthRevoked,
    FailureType,
    NetworkFailure,
    RateLimited,
    SpotifyFailure,
    SpotifyUnavailable,
    is_infrastructure_error,
)
from playvault.normalize import Page
from playvault.spotify import MAX_PAGE, Budget, SpotifyClient
from playvault.store import catalog, gaps, plays, state, users

logger = Logger(child=True)

SUCCESS = "success"
SKIPPED = "skipped"
FAILED = "failed"
DEFERRED = "deferred"  # the app cannot poll now (rate limit, credentials, outage): no failure counted

# Use a cached access token only while it has this much life left (Spotify's live 1 h).
TOKEN_MARGIN = timedelta(minutes=5)
# A message this close to a user's next_poll_at still polls them (SQS delays are whole seconds).
DUE_SLACK = timedelta(seconds=60)
# Consecutive polls in this container failing on Spotify server errors before it is an outage.
OUTAGE_STREAK = 3
# The rollups' daily sweep runs after a poll only with this much of the invocation left.
SWEEP_MIN_REMAINING_S = 10.0


@dataclass(frozen=True)
class Cadence:
    """How soon a user is polled again (the dispatcher sends users whose next_poll_at has come)."""

    default_s: int = 3600
    max_s: int = 3600
    min_s: int = 900  # the dispatcher's period: "again at the next run"
    # A gap, or a poll holding this many new plays, means poll again at the next run.
    busy_plays: int = 25
    # ...and a listener who would fill this much of Spotify's window within default_s stays on the
    # next-run cadence: at 70 plays an hour a 15-minute poll holds only ~17 new plays, but an hourly
    # one would lose 20. The rate is measured over the time the new plays span when that is shorter
    # than the time since the last poll (a session that began just before this poll, or a first
    # poll), and over half a run at least.
    stay_busy_plays: int = int(0.8 * MAX_PAGE)

    def next_poll_at(self, user: users.UserModel, now: datetime, new_plays: int, gap: bool,
                     oldest_new_ms: int | None = None) -> datetime:
        elapsed = (now - user.last_polled_at).total_seconds() if user.last_polled_at else self.default_s
        if oldest_new_ms is not None:
            elapsed = min(elapsed, (clock.to_ms(now) - oldest_new_ms) / 1000)
        per_cadence = new_plays * self.default_s / max(elapsed, self.min_s / 2)
        if gap or new_plays >= self.busy_plays or per_cadence >= self.stay_busy_plays:
            interval = self.min_s
        elif new_plays == 0 and user.last_polled_at and user.next_poll_at:
            # Quiet users back off (doubling) up to max_s; with default == max nothing changes.
            previous = (user.next_poll_at - user.last_polled_at).total_seconds()
            interval = min(self.max_s, max(self.default_s, int(previous * 2)))
        else:
            interval = self.default_s
        # A little early: the run that falls just after the due time must pick the user up.
        return now + timedelta(seconds=max(60, min(interval, self.max_s) - 60))


@dataclass
class ArchiveResult:
    user_id: str
    status: str
    plays_archived: int = 0
    late_plays: int = 0
    bad_items: int = 0
    new_tracks: int = 0
    failure_type: str | None = None
    gap_detected: bool = False
    retry_after_s: float | None = None
    quota: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveResult:
        return cls(**data)


class AccessTokens:
    """Access tokens per user, in this container's memory only (never stored), until expiry."""

    def __init__(self, capacity: int = 10_000):
        self._capacity = capacity
        self._tokens: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str, now: datetime) -> str | None:
        with self._lock:
            entry = self._tokens.get(user_id)
            if entry is None:
                return None
            if entry[1] - now <= TOKEN_MARGIN:
                del self._tokens[user_id]
                return None
            self._tokens.move_to_end(user_id)
            return entry[0]

    def put(self, user_id: str, token: str, expires_at: datetime) -> None:
        with self._lock:
            self._tokens[user_id] = (token, expires_at)
            self._tokens.move_to_end(user_id)
            while len(self._tokens) > self._capacity:
                self._tokens.popitem(last=False)

    def drop(self, user_id: str) -> None:
        with self._lock:
            self._tokens.pop(user_id, None)

    def __repr__(self) -> str:
        return f"AccessTokens({len(self._tokens)} cached)"


def detect_gap(known: frozenset[int], since_ms: int | None, page: Page) -> tuple[int, int] | None:
    """Spotify keeps 50 plays: a full page whose oldest play is newer than everything seen before
    means plays in between may have fallen out of the window. Returns that window. `since_ms`: the
    newest play seen before (or the last poll, before any play was seen); None on the first poll.
    The page is full by Spotify's count of items: unreadable ones (skipped) fill the window too."""
    if since_ms is None or not page.plays or len(page.plays) + len(page.bad_items) < MAX_PAGE:
        return None
    oldest = min(p.played_at_ms for p in page.plays)
    if known and oldest <= max(known):
        return None
    return (since_ms, oldest) if oldest > since_ms else None


class _Streak:
    """Distinct users failing on Spotify server errors in a row in this container, with no success
    in between: one user's broken history is that user's problem, three users is an outage."""

    def __init__(self) -> None:
        self._users: set[str] = set()
        self._lock = threading.Lock()

    def failed(self, user_id: str) -> int:
        with self._lock:
            self._users.add(user_id)
            return len(self._users)

    def reset(self) -> None:
        with self._lock:
            self._users.clear()


# Spotify calls of an ordinary poll: a token refresh (unless one is cached) and recently-played. (A
# cached token refused with 401 adds two more; those then run on what is left and stop at the
# writes reserve, giving the user up before any write: requeued, never past the deadline.)
SPOTIFY_CALLS_PER_POLL = 2


class Archiver:
    def __init__(self, spotify: SpotifyClient, cipher: TokenCipher, cadence: Cadence | None = None,
                 dedup_tolerance_s: int = identity.DEFAULT_TOLERANCE_S):
        self.spotify = spotify
        self.cipher = cipher
        self.cadence = cadence or Cadence()
        self.dedup_tolerance_ms = dedup_tolerance_s * 1000  # the importer's DEDUP_TOLERANCE_S
        self.access_tokens = AccessTokens()
        self._server_errors = _Streak()

    def poll_worst_case_s(self) -> float:
        """How long a poll's Spotify calls may take, each answering at its timeout."""
        return SPOTIFY_CALLS_PER_POLL * self.spotify.call_timeout_s

    def archive_user(self, user_id: str, budget: Budget, run_id: str | None = None,
                     due_by: datetime | None = None) -> ArchiveResult:
        """`run_id`: the dispatch run that sent the user; `due_by`: the message's not_before. A user
        already polled in this run, or polled since and not due again by then, is skipped."""
        user = users.get(user_id)
        if user is None:
            return ArchiveResult(user_id, SKIPPED, reason="unknown user (deleted?)")
        if user.status != users.ACTIVE:
            return ArchiveResult(user_id, SKIPPED, reason=f"status {user.status}")
        if run_id is not None and user.last_run == run_id:
            return ArchiveResult(user_id, SKIPPED, reason="already archived in this run")
        if due_by is not None and user.next_poll_at is not None and user.next_poll_at > due_by + DUE_SLACK:
            return ArchiveResult(user_id, SKIPPED, reason="polled since this message was sent")
        try:
            return self._archive(user, budget, run_id)
        except Exception as exc:  # noqa: BLE001 - one user's failure must never crash the batch
            if is_infrastructure_error(exc):
                raise
            return self._record_failure(user, exc)

    def _archive(self, user: users.UserModel, budget: Budget, run_id: str | None) -> ArchiveResult:
        now = clock.now()
        access_token = self.access_tokens.get(user.user_id, now)
        refreshed = access_token is None
        if access_token is None:
            access_token = self._refresh(user, budget)
        try:
            page = self.spotify.recently_played(access_token, budget)
        except AuthFailed:
            self.access_tokens.drop(user.user_id)
            if refreshed:  # a token minted this very poll is refused: refreshing again cannot help
                raise
            # A 401 means the cached token died early (revoked session): refresh once, retry once.
            page = self.spotify.recently_played(self._refresh(user, budget), budget)
        self._server_errors.reset()

        known = users.decode_played(user.recent_played)
        new_plays = [p for p in page.plays if p.played_at_ms not in known]
        newest_known = max(known) if known else None
        late = sum(1 for p in new_plays if newest_known is not None and p.played_at_ms < newest_known)
        for bad in page.bad_items:
            logger.warning("bad recently-played item skipped",
                           extra={"user_id": user.user_id, "played_at": bad.played_at, "reason": bad.reason})
        new_tracks = catalog.upsert_tracks(p.track for p in new_plays if p.track is not None)
        catalog.upsert_episodes(p.episode for p in new_plays if p.episode is not None)
        # Rollups: the dates these plays change are marked dirty before any is written (recomputed
        # from the plays later: a replayed poll can never count twice, a crash leaves them dirty).
        fresh = rollups.mark(user.user_id, [p.played_at_ms for p in new_plays]) if new_plays else []
        written = plays.write_plays(user.user_id, new_plays)
        if user.has_imports and new_plays:
            # Export rows an import wrote for these plays (before, or while, this poll wrote them).
            plays.reconcile(user.user_id, min(p.played_at_ms for p in new_plays),
                            max(p.played_at_ms for p in new_plays), self.dedup_tolerance_ms)

        since_ms = newest_known if newest_known is not None else (
            user.cursor_ms if user.cursor_ms is not None else (
                clock.to_ms(user.last_polled_at) if user.last_polled_at else None))
        gap = detect_gap(known, since_ms, page)
        if gap:
            # Durable before anything else can fail: the record, then the log line the alarm counts.
            gaps.record(user.user_id, gap[0], gap[1], now)
            logger.warning(metrics.GAP_LOG_MESSAGE, extra={"user_id": user.user_id, "gap_ms": list(gap)})

        recorded = users.record_success(
            user,
            users.PollSuccess(
                polled_at=now,
                run_id=run_id,
                # The session's span: from the oldest new play newer than those known (a late play
                # from long ago says nothing about how fast the user listens now).
                next_poll_at=self.cadence.next_poll_at(user, now, written, bool(gap), min(
                    (p.played_at_ms for p in new_plays if newest_known is None or p.played_at_ms > newest_known),
                    default=None)),
                plays_archived=written,
                recent_played=frozenset(p.played_at_ms for p in page.plays),
                cursor_ms=max((p.played_at_ms for p in page.plays), default=None),
                gap_detected=bool(gap),
            ),
        )
        if not recorded:
            return ArchiveResult(user.user_id, SKIPPED, reason="changed meanwhile (concurrent poll, reconnect "
                                 "or deletion): not recorded", bad_items=len(page.bad_items))
        if fresh and budget.remaining_s() >= SWEEP_MIN_REMAINING_S:
            # A date marked for the first time since it was recomputed: a new day for this user, so
            # the days before its local today are settled now (about once a day), keeping views cheap.
            # Only with time to spare: a page view settles whatever is left.
            try:
                rollups.sweep(user.user_id, fresh, now)
            except rollups.Contended:
                pass  # recomputed by others meanwhile: left dirty, the page view settles them
        return ArchiveResult(user.user_id, SUCCESS, plays_archived=written, late_plays=late,
                             bad_items=len(page.bad_items), new_tracks=new_tracks, gap_detected=bool(gap))

    # -- tokens ---------------------------------------------------------------------------------
    def _refresh(self, user: users.UserModel, budget: Budget) -> str:
        """A new access token from the stored refresh token. On invalid_grant the user is read
        again: if another poll or a reconnect stored a different refresh token meanwhile, that one
        is tried once; only a token that is still the stored one is really dead."""
        refresh_token = self._open_refresh_token(user)
        try:
            grant = self.spotify.refresh(refresh_token, budget)
        except AuthRevoked:
            current = users.get(user.user_id)
            if current is None or current.status != users.ACTIVE or (
                    current.refresh_token_enc == user.refresh_token_enc and current.token_key == user.token_key):
                raise
            logger.info("refresh token changed meanwhile: retrying with the stored one",
                        extra={"user_id": user.user_id})
            _adopt(user, current)
            refresh_token = self._open_refresh_token(user)
            grant = self.spotify.refresh(refresh_token, budget)
        if grant.refresh_token and grant.refresh_token != refresh_token:
            self._store_rotated(user, grant.refresh_token)
        self.access_tokens.put(user.user_id, grant.access_token, grant.expires_at)
        return grant.access_token

    def _open_refresh_token(self, user: users.UserModel) -> str:
        if not user.refresh_token_enc:
            raise AuthRevoked("no refresh token stored")
        try:
            return self.cipher.open(user.token_key, user.refresh_token_enc, user.user_id, REFRESH_TOKEN)
        except TokenDecryptError:
            # A reconnect may have replaced key and token between our read and now: read again once.
            current = users.get(user.user_id)
            if current is None or (current.token_key == user.token_key
                                   and current.refresh_token_enc == user.refresh_token_enc):
                raise
            _adopt(user, current)
            return self.cipher.open(user.token_key, user.refresh_token_enc, user.user_id, REFRESH_TOKEN)

    def _store_rotated(self, user: users.UserModel, refresh_token: str) -> None:
        """Stored at once (the old token may be dead now), sealed with the user's own data key and
        conditional on the version read, so a reconnect's token is never overwritten."""
        sealed = self.cipher.seal(user.token_key, refresh_token, user.user_id, REFRESH_TOKEN)
        if users.store_rotated_refresh_token(user, sealed):
            return
        current = users.get(user.user_id)
        if current is None or current.status != users.ACTIVE or current.token_key != user.token_key:
            # Deleted, or reconnected with a new key and token: theirs wins; this poll records nothing.
            logger.info("user changed during a refresh: rotated token not stored", extra={"user_id": user.user_id})
            return
        _adopt(user, current)  # a concurrent poll wrote the item: store ours on top of its version
        users.store_rotated_refresh_token(user, sealed)

    # -- failures -------------------------------------------------------------------------------
    def _record_failure(self, user: users.UserModel, exc: Exception) -> ArchiveResult:
        now = clock.now()
        if isinstance(exc, TokenDecryptError):
            exc = AuthRevoked("stored refresh token cannot be opened")
        outage = isinstance(exc, NetworkFailure) and exc.server_error
        if outage and self._server_errors.failed(user.user_id) >= OUTAGE_STREAK:
            exc = SpotifyUnavailable(f"Spotify is failing every user ({exc})")
        failure_type = exc.failure_type if isinstance(exc, SpotifyFailure) else FailureType.UNKNOWN
        reason = str(exc)[:200] if isinstance(exc, SpotifyFailure) else type(exc).__name__
        if isinstance(exc, RateLimited):
            state.close_rate_gate(now + timedelta(seconds=exc.retry_after_s), now,
                                  reason="QUOTA_EXCEEDED" if exc.quota else "RATE_LIMITED")
            return ArchiveResult(user.user_id, DEFERRED, failure_type=failure_type, quota=exc.quota,
                                 retry_after_s=exc.retry_after_s, reason=reason)
        if isinstance(exc, AppFailure):
            state.close_rate_gate(now + timedelta(seconds=exc.defer_s), now, reason=type(exc).__name__)
            logger.error("Spotify app-level failure: work deferred, no user charged",
                         extra={"user_id": user.user_id, "failure": type(exc).__name__, "reason": reason})
            return ArchiveResult(user.user_id, DEFERRED, failure_type=failure_type,
                                 retry_after_s=exc.defer_s, reason=reason)
        if failure_type == FailureType.AUTH_REVOKED:
            users.mark_needs_reauth(user, now)
            self.access_tokens.drop(user.user_id)
        else:
            failures = int(user.consecutive_failures or 0) + 1
            users.record_failure(user, failure_type, now, breaker.cooldown_until(failure_type, failures, now))
        if not isinstance(exc, SpotifyFailure):
            logger.exception("unexpected failure archiving a user", extra={"user_id": user.user_id})
        return ArchiveResult(user.user_id, FAILED, failure_type=failure_type, reason=reason)


def _adopt(user: users.UserModel, current: users.UserModel) -> None:
    """Continue this poll with the freshly read item (its tokens and version)."""
    for name in ("token_key", "refresh_token_enc", "version", "status"):
        setattr(user, name, getattr(current, name))
