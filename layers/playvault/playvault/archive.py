"""archive_user: cursor -> fetch -> upsert catalog -> write plays -> advance cursor.

The order is the guarantee. Plays are written (idempotently, keyed by user and played_at) before
the cursor moves, so a crash in between loses nothing (the cursor still points before them) and the
retry duplicates nothing (it rewrites the same rows). A user's own failure (AUTH, AUTH_REVOKED,
NETWORK, UNKNOWN) is recorded in the circuit breaker and returned, never raised; an infrastructure
failure (DynamoDB/KMS unavailable, throttled) is raised, so the message is redelivered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from playvault import breaker, clock
from playvault.crypto import ACCESS_TOKEN, REFRESH_TOKEN, TokenCipher, TokenDecryptError
from playvault.failures import (
    AuthFailed,
    AuthRevoked,
    FailureType,
    RateLimited,
    SpotifyFailure,
    is_infrastructure_error,
)
from playvault.normalize import Page
from playvault.spotify import MAX_PAGE, Budget, SpotifyClient
from playvault.store import catalog, plays, state, users

logger = Logger(child=True)

SUCCESS = "success"
SKIPPED = "skipped"
FAILED = "failed"
DEFERRED = "deferred"  # the app is rate limited: the user is tried again later, no failure counted

# Refresh a cached access token this long before it expires (Spotify's live 1 h).
TOKEN_MARGIN = timedelta(minutes=5)


@dataclass
class ArchiveResult:
    user_id: str
    status: str
    plays_archived: int = 0
    new_tracks: int = 0
    failure_type: str | None = None
    gap_detected: bool = False
    retry_after_s: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveResult:
        return cls(**data)


@dataclass
class _Tokens:
    access_token: str
    expires_at: datetime
    access_token_enc: bytes | None = None  # set when refreshed during this poll: to be stored
    refresh_token_enc: bytes | None = None  # set when Spotify rotated the refresh token
    refreshed: bool = False

    def __repr__(self) -> str:
        return f"_Tokens(expires_at={self.expires_at.isoformat()}, refreshed={self.refreshed})"


def detect_gap(cursor_ms: int | None, page: Page) -> tuple[int, int] | None:
    """Spotify keeps 50 plays: a full page whose oldest play is newer than the cursor means plays
    between the cursor and that oldest play may have fallen out of the window. Returns that window.
    With no cursor and no earlier poll (the first poll ever) nothing was promised yet: no gap."""
    if cursor_ms is None or len(page.plays) < MAX_PAGE:
        return None
    oldest = min(p.played_at_ms for p in page.plays)
    return (cursor_ms, oldest) if oldest > cursor_ms else None


class Archiver:
    def __init__(self, spotify: SpotifyClient, cipher: TokenCipher):
        self.spotify = spotify
        self.cipher = cipher

    def archive_user(self, user_id: str, budget: Budget, window: str | None = None) -> ArchiveResult:
        """`window`: the dispatch window (hour key) this poll belongs to, recorded on success."""
        user = users.get(user_id)
        if user is None:
            return ArchiveResult(user_id, SKIPPED, reason="unknown user (deleted?)")
        if user.status != users.ACTIVE:
            return ArchiveResult(user_id, SKIPPED, reason=f"status {user.status}")
        try:
            return self._archive(user, budget, window)
        except Exception as exc:  # noqa: BLE001 - one user's failure must never crash the batch
            if is_infrastructure_error(exc):
                raise
            return self._record_failure(user, exc)

    def _archive(self, user: users.UserModel, budget: Budget, window: str | None) -> ArchiveResult:
        tokens = self._cached_or_refreshed(user, budget)
        try:
            page = self.spotify.recently_played(tokens.access_token, user.cursor_ms, budget)
        except AuthFailed:
            if tokens.refreshed:  # a token minted this very poll is refused: refreshing again cannot help
                raise
            # A 401 means the cached token died early (revoked session, clock skew): refresh once, retry once.
            tokens = self._refresh(user, budget)
            page = self.spotify.recently_played(tokens.access_token, user.cursor_ms, budget)
        new_plays = [p for p in page.plays if user.cursor_ms is None or p.played_at_ms > user.cursor_ms]
        new_tracks = catalog.upsert_tracks(p.track for p in new_plays)
        written = plays.write_plays(user.user_id, new_plays)
        # Before the first archived play there is no cursor: the last poll bounds what may be lost.
        since_ms = user.cursor_ms if user.cursor_ms is not None else (
            clock.to_ms(user.last_polled_at) if user.last_polled_at else None)
        gap = detect_gap(since_ms, page)
        # Only now, with the plays durable, may the cursor move past them.
        users.record_success(
            user,
            users.PollSuccess(
                polled_at=clock.now(),
                cursor_ms=max((p.played_at_ms for p in new_plays), default=None),
                plays_archived=written,
                access_token_enc=tokens.access_token_enc,
                access_token_expires_at=tokens.expires_at if tokens.access_token_enc else None,
                gap_window_ms=gap,
                window=window,
            ),
        )
        if gap:
            logger.warning("play-history gap", extra={"user_id": user.user_id, "gap_ms": list(gap)})
        return ArchiveResult(
            user.user_id, SUCCESS, plays_archived=written, new_tracks=new_tracks, gap_detected=bool(gap)
        )

    # -- tokens ---------------------------------------------------------------------------------
    def _cached_or_refreshed(self, user: users.UserModel, budget: Budget) -> _Tokens:
        expires_at = user.access_token_expires_at
        if user.access_token_enc and expires_at and expires_at - clock.now() > TOKEN_MARGIN:
            access_token = self.cipher.open(user.token_key, user.access_token_enc, user.user_id, ACCESS_TOKEN)
            return _Tokens(access_token, expires_at)
        return self._refresh(user, budget)

    def _refresh(self, user: users.UserModel, budget: Budget) -> _Tokens:
        if not user.refresh_token_enc:
            raise AuthRevoked("no refresh token stored")
        refresh_token = self.cipher.open(user.token_key, user.refresh_token_enc, user.user_id, REFRESH_TOKEN)
        grant = self.spotify.refresh(refresh_token, budget)
        rotated = None
        if grant.refresh_token and grant.refresh_token != refresh_token:
            rotated = self.cipher.seal(user.token_key, grant.refresh_token, user.user_id, REFRESH_TOKEN)
            # Stored at once: after a rotation the old refresh token may already be dead.
            users.store_rotated_refresh_token(user, rotated)
            user.refresh_token_enc = rotated
        return _Tokens(
            grant.access_token,
            grant.expires_at,
            access_token_enc=self.cipher.seal(user.token_key, grant.access_token, user.user_id, ACCESS_TOKEN),
            refresh_token_enc=rotated,
            refreshed=True,
        )

    # -- failures -------------------------------------------------------------------------------
    def _record_failure(self, user: users.UserModel, exc: Exception) -> ArchiveResult:
        now = clock.now()
        if isinstance(exc, TokenDecryptError):
            exc = AuthRevoked("stored token cannot be decrypted")
        failure_type = exc.failure_type if isinstance(exc, SpotifyFailure) else FailureType.UNKNOWN
        reason = str(exc)[:200] if isinstance(exc, SpotifyFailure) else type(exc).__name__
        if isinstance(exc, RateLimited):
            state.close_rate_gate(now + timedelta(seconds=exc.retry_after_s), now)
            return ArchiveResult(user.user_id, DEFERRED, failure_type=failure_type,
                                 retry_after_s=exc.retry_after_s, reason=reason)
        if failure_type == FailureType.AUTH_REVOKED:
            users.mark_needs_reauth(user, now)
        else:
            failures = int(user.consecutive_failures or 0) + 1
            users.record_failure(user, failure_type, now, breaker.cooldown_until(failure_type, failures, now))
        if not isinstance(exc, SpotifyFailure):
            logger.exception("unexpected failure archiving a user", extra={"user_id": user.user_id})
        return ArchiveResult(user.user_id, FAILED, failure_type=failure_type, reason=reason)
