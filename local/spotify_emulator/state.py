"""EmulatorState: all data and rules of the Spotify emulator, guarded by one lock.

Nothing here does I/O; app.py translates HTTP to these calls. Time comes only from
``self.clock`` so tests and the local runner can drive a simulated clock.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import math
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from . import catalog

ACCESS_TOKEN_TTL = timedelta(hours=1)
CODE_TTL = timedelta(minutes=10)
REFRESH_TOKEN_TTL = timedelta(days=183)  # "6 months after the user authorized"
WINDOW = 50  # recently-played only ever exposes the last 50 plays
MIN_PLAY_GAP_S = 31  # a play is listed only once it lasted over 30 s
# Spotify's answer to an account a development-mode app has not allow-listed.
NOT_REGISTERED = "Check settings on developer.spotify.com/dashboard, the user may not be registered."
ENDPOINTS = ("token", "me", "recently_played", "authorize")  # "track" is counted once used


APP = "\x00app"  # the owner of client-credentials tokens: no user


def real_clock() -> datetime:
    return datetime.now(UTC)


class OffsetClock:
    """Real time plus an adjustable offset (used by the CLI so tests can jump ahead)."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (UTC)")
    return int(round(dt.timestamp() * 1000))


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def format_played_at(ms: int, whole_second: bool) -> str:
    dt = from_ms(ms)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}Z" if whole_second else f"{base}.{ms % 1000:03d}Z"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OAuthError(Exception):
    """An accounts-service error: HTTP status plus OAuth error code and description."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description


class ApiError(Exception):
    """A Web API error rendered as ``{"error": {"status", "message"}}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class FaultConfig:
    latency_ms: int = 0
    error_5xx_rate: float = 0.0
    rate_429_rate: float = 0.0
    retry_after_s: int = 1
    timeout_rate: float = 0.0
    timeout_s: float = 5.0
    expire_token_rate: float = 0.0
    # A refresh that rotates the refresh token, and then the answer is lost (held for timeout_s,
    # then 504): the old token is dead and the client never saw the new one.
    lost_rotation_rate: float = 0.0

    def update(self, **kwargs: Any) -> None:
        names = {f.name: f.type for f in fields(self)}
        for key, value in kwargs.items():
            if key not in names:
                raise ValueError(f"unknown fault field {key!r}")
            current = getattr(self, key)
            setattr(self, key, type(current)(value))


@dataclass
class ListeningConfig:
    """How the simulated feed departs from an ideal one (all off by default).

    - late_share: share of plays that show up in recently-played only late_min_s..late_max_s after
      their played_at (offline devices syncing; out of order);
    - bad_share: share of plays served damaged, one of BAD_KINDS each (as seen in the wild);
    - episode_share: share of plays that are podcast episodes (an EpisodeObject as `track`). Like
      Spotify (shared notes: "Podcast episodes never appear in recently-played; only the data export
      has them"), they are never listed in recently-played and take no place among its 50;
    - episodes_in_feed: 1 lists them anyway, as an EpisodeObject in `track` (off by default: only for
      tests of the worker's handling of such an item, should Spotify ever send one).
    """

    late_share: float = 0.0
    late_min_s: float = 60.0
    late_max_s: float = 5400.0
    bad_share: float = 0.0
    episode_share: float = 0.0
    episodes_in_feed: float = 0.0

    def update(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if key not in {f.name for f in fields(self)}:
                raise ValueError(f"unknown listening field {key!r}")
            setattr(self, key, float(value))


# Damaged items: the first is unreadable (no track object), the others still name a play.
BAD_KINDS = ("track_null", "artists_null", "images_null", "duration_not_numeric")
UNREADABLE_KINDS = frozenset({"track_null"})


@dataclass
class Injection:
    path_prefix: str
    status: int | None
    times: int
    retry_after: int | None = None
    body: Any = None
    delay_s: float | None = None


@dataclass
class _Play:
    ms: int
    whole_second: bool
    is_local: bool
    track_index: int
    track: dict
    context: dict | None
    visible_ms: int | None = None  # when it shows up in recently-played (None: at once)
    bad_kind: str | None = None  # served damaged (BAD_KINDS)

    @property
    def shown_ms(self) -> int:
        return self.ms if self.visible_ms is None else max(self.ms, self.visible_ms)

    def history_object(self) -> dict:
        item = {
            "track": copy.deepcopy(self.track),
            "played_at": format_played_at(self.ms, self.whole_second),
            "context": copy.deepcopy(self.context),
        }
        return _damage(item, self.bad_kind) if self.bad_kind else item


def _damage(item: dict, kind: str) -> dict:
    """An item as the real service has sent it now and then (not schema-valid, on purpose)."""
    track = item["track"]
    if kind == "track_null":
        item["track"] = None
    elif kind == "artists_null":
        track["artists"] = [None]
    elif kind == "images_null":  # a track's album images; an episode (no album) its own
        (track["album"] if "album" in track else track)["images"] = [None]
    elif kind == "duration_not_numeric":
        track["duration_ms"] = "unknown"
    return item


@dataclass
class _User:
    user_id: str
    display_name: str
    rotate_refresh_tokens: bool
    plays: list[_Play] = field(default_factory=list)  # sorted by ms
    exposed: set[int] = field(default_factory=set)


@dataclass
class _Client:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    # Development mode: only these Spotify accounts may use the app (403 on the Web API otherwise);
    # None: every account (extended quota).
    allow_list: set[str] | None = None


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    user_id: str
    issued_at: datetime
    used: bool = False


@dataclass
class _RefreshToken:
    user_id: str
    client_id: str
    scope: str
    authorized_at: datetime
    valid: bool = True
    parent: str | None = None  # the token this one was rotated from (still valid until this is used)
    child: str | None = None  # the latest token rotated from this one


@dataclass
class _AccessToken:
    user_id: str
    client_id: str
    scope: str
    expires_at: datetime
    valid: bool = True


class EmulatorState:
    def __init__(self, clock: Callable[[], datetime] | None = None, seed: int = 0) -> None:
        self.clock: Callable[[], datetime] = clock or real_clock
        self.seed = seed
        self.faults = FaultConfig()
        self.listening = ListeningConfig()
        self.quota_exceeded = False  # the app-wide 429 window is a quota one (its body says so)
        self.default_rotate_refresh_tokens = False  # for users created by a sign-in
        self._lock = threading.RLock()
        self._fault_rng = random.Random(f"faults:{seed}")
        self._sim_rng = random.Random(f"listening:{seed}")
        self._clients: dict[str, _Client] = {}
        self._users: dict[str, _User] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._access: dict[str, _AccessToken] = {}
        self._injections: list[Injection] = []
        self._rate_limited_until: datetime | None = None
        self._counts: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self._lose_rotations = 0  # the next n rotating refreshes lose their answer
        self._track_index: dict[str, int] | None = None
        self._held = threading.local()  # exposures of the answer this thread is preparing (hold_exposures)

    # ------------------------------------------------------------------ setup
    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("clock must return an aware datetime")
        return now.astimezone(UTC)

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        with self._lock:
            self._clients[client_id] = _Client(client_id, client_secret, list(redirect_uris))

    def rotate_client_secret(self, client_id: str, client_secret: str) -> None:
        """The operator rotated the secret in Spotify's dashboard: the old one answers invalid_client."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                raise KeyError(f"unknown client {client_id!r}")
            client.client_secret = client_secret

    def set_allow_list(self, client_id: str, user_ids: list[str] | None) -> None:
        """Development mode: only these users may use the client's tokens (None: everyone)."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                raise KeyError(f"unknown client {client_id!r}")
            client.allow_list = None if user_ids is None else set(user_ids)

    def lose_rotation_responses(self, times: int = 1) -> None:
        with self._lock:
            self._lose_rotations += int(times)

    def take_lost_rotation(self) -> bool:
        """Whether the answer of a refresh that just rotated is to be lost."""
        with self._lock:
            if self._lose_rotations > 0:
                self._lose_rotations -= 1
                return True
        rate = self.faults.lost_rotation_rate
        return rate > 0 and self.draw() < rate

    def add_user(self, user_id: str, display_name: str | None = None,
                 rotate_refresh_tokens: bool = False) -> None:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                self._users[user_id] = _User(user_id, display_name or user_id, rotate_refresh_tokens)
            else:
                if display_name:
                    user.display_name = display_name
                user.rotate_refresh_tokens = rotate_refresh_tokens

    def user_ids(self) -> list[str]:
        with self._lock:
            return list(self._users)

    def has_user(self, user_id: str) -> bool:
        with self._lock:
            return user_id in self._users

    def _user(self, user_id: str) -> _User:
        user = self._users.get(user_id)
        if user is None:
            raise KeyError(f"unknown user {user_id!r}")
        return user

    # ------------------------------------------------------------------ plays
    def add_play(self, user_id: str, played_at: datetime, *, local: bool = False,
                 track_index: int | None = None, whole_second: bool = False,
                 visible_after_s: float | None = None, bad_kind: str | None = None,
                 episode: bool = False) -> dict:
        """`visible_after_s`: the play shows up that long after played_at (a late play)."""
        if bad_kind is not None and bad_kind not in BAD_KINDS:
            raise ValueError(f"unknown bad item kind {bad_kind!r}; one of {BAD_KINDS}")
        with self._lock:
            user = self._user(user_id)
            ms = to_ms(played_at)
            if whole_second:
                ms -= ms % 1000
            if track_index is None:
                track_index = self._sim_rng.randrange(catalog.CATALOG_SIZE)
            if episode:
                track = catalog.episode(self.seed, track_index)
                context = None
            elif local:
                track = catalog.local_track(self.seed, track_index)
                context = None
            else:
                track = catalog.track(self.seed, track_index)
                alb = track["album"]
                context = {"type": "album", "href": alb["href"], "external_urls": dict(alb["external_urls"]),
                           "uri": alb["uri"]}
            if context is None:
                # Local files are played from a playlist; the schema has no null context.
                pid = catalog.base62_id(random.Random(f"playlist:{self.seed}:{user_id}"))
                context = {"type": "playlist", "href": f"{catalog.API_BASE}/playlists/{pid}",
                           "external_urls": {"spotify": f"{catalog.OPEN_BASE}/playlist/{pid}"},
                           "uri": f"spotify:playlist:{pid}"}
            visible = None if visible_after_s is None else ms + int(visible_after_s * 1000)
            play = _Play(ms, whole_second, local, track_index, track, context, visible, bad_kind)
            # keep sorted by time, stable for equal timestamps
            pos = len(user.plays)
            while pos > 0 and user.plays[pos - 1].ms > ms:
                pos -= 1
            user.plays.insert(pos, play)
            return play.history_object()

    def simulate_listening(self, user_id: str, start: datetime, end: datetime, plays_per_hour: float, *,
                           local_share: float = 0.05, whole_second_share: float = 0.3) -> int:
        with self._lock:
            self._user(user_id)
            rng = self._sim_rng
            if plays_per_hour <= 0 or end <= start:
                return 0
            mean_gap = 3600.0 / plays_per_hour
            extra = max(mean_gap - MIN_PLAY_GAP_S, 0.001)
            count = 0
            t = start + timedelta(seconds=rng.uniform(0, min(mean_gap, (end - start).total_seconds())))
            last: datetime | None = None
            feed = self.listening
            while t < end:
                if last is None or (t - last).total_seconds() >= MIN_PLAY_GAP_S:
                    late = feed.late_share > 0 and rng.random() < feed.late_share
                    bad = feed.bad_share > 0 and rng.random() < feed.bad_share
                    self.add_play(user_id, t, local=rng.random() < local_share,
                                  track_index=rng.randrange(catalog.CATALOG_SIZE),
                                  whole_second=rng.random() < whole_second_share,
                                  visible_after_s=rng.uniform(feed.late_min_s, feed.late_max_s) if late else None,
                                  bad_kind=rng.choice(BAD_KINDS) if bad else None,
                                  episode=feed.episode_share > 0 and rng.random() < feed.episode_share)
                    count += 1
                    last = t
                gap = MIN_PLAY_GAP_S + 1 + rng.expovariate(1.0 / extra) + rng.randrange(1000) / 1000.0
                t = t + timedelta(seconds=gap)
            return count

    def ground_truth(self, user_id: str) -> list[dict]:
        with self._lock:
            user = self._user(user_id)
            now_ms = to_ms(self.now())
            return [
                {"played_at_ms": p.ms, "track_id": p.track["id"], "track_uri": p.track["uri"],
                 "is_local": p.is_local, "late_s": (p.shown_ms - p.ms) / 1000 if p.visible_ms else 0.0,
                 "bad_kind": p.bad_kind, "episode": p.track.get("type") == "episode",
                 "in_feed": self._in_feed(p)}
                for p in user.plays if p.ms <= now_ms
            ]

    def hold_exposures(self) -> None:
        """Until `take_held_exposures`, recently-played answers prepared by this thread expose nothing:
        a server that knows when its answer was received (playvault_local.spotify) exposes it then."""
        self._held.pending = []

    def take_held_exposures(self) -> list[tuple[Any, list[int]]]:
        """What this thread's held answers listed (for `expose_held`), and stop holding."""
        pending, self._held.pending = getattr(self._held, "pending", None) or [], None
        return pending

    def expose_held(self, held: list[tuple[Any, list[int]]]) -> None:
        with self._lock:
            for user, played_ms in held:
                user.exposed.update(played_ms)

    def _expose(self, user: _User, played_ms: list[int]) -> None:
        pending = getattr(self._held, "pending", None)
        if pending is None:
            user.exposed.update(played_ms)
        else:
            pending.append((user, played_ms))

    def exposed_play_ms(self, user_id: str) -> set[int]:
        with self._lock:
            return set(self._user(user_id).exposed)

    def _in_feed(self, play: _Play) -> bool:
        """Whether recently-played ever lists the play (never a podcast episode, unless told to)."""
        return play.track.get("type") != "episode" or bool(self.listening.episodes_in_feed)

    def _window(self, user: _User) -> list[_Play]:
        """The last 50 plays, by played_at, among those that have shown up by now."""
        now_ms = to_ms(self.now())
        visible = [p for p in user.plays if p.ms <= now_ms and p.shown_ms <= now_ms and self._in_feed(p)]
        return visible[-WINDOW:]

    def visible_window_ms(self, user_id: str) -> set[int]:
        with self._lock:
            return {p.ms for p in self._window(self._user(user_id))}

    def recently_played(self, user_id: str, limit: int, after: int | None, before: int | None
                        ) -> tuple[list[dict], dict | None, str | None, int | None]:
        """Returns (items newest first, cursors, next_mode ('after'|'before'|None), next_value)."""
        with self._lock:
            user = self._user(user_id)
            window = self._window(user)
            self._expose(user, [p.ms for p in window])
            if after is not None:
                newer = [p for p in window if p.ms > after]
                page = newer[:limit]
                more = len(newer) > limit
                mode = "after"
            else:
                older = [p for p in window if before is None or p.ms < before]
                page = older[-limit:] if older else []
                more = len(older) > limit
                mode = "before"
            if not page:
                return [], None, None, None
            cursors = {"after": str(page[-1].ms), "before": str(page[0].ms)}
            next_value = (page[-1].ms if mode == "after" else page[0].ms) if more else None
            items = [p.history_object() for p in reversed(page)]
            return items, cursors, (mode if more else None), next_value

    def user_profile(self, user_id: str, scope: str = "user-read-email") -> dict:
        """The /me payload; `email` only with the user-read-email scope, as Spotify does."""
        with self._lock:
            user = self._user(user_id)
            uid = user.user_id
            profile = {
                "country": "SE",
                "display_name": user.display_name,
                "email": f"{uid}@example.com",
                "explicit_content": {"filter_enabled": False, "filter_locked": False},
                "external_urls": {"spotify": f"{catalog.OPEN_BASE}/user/{uid}"},
                "followers": {"href": None, "total": 0},
                "href": f"{catalog.API_BASE}/users/{uid}",
                "id": uid,
                "images": [],
                "product": "premium",
                "type": "user",
                "uri": f"spotify:user:{uid}",
            }
            if "user-read-email" not in scope.split():
                del profile["email"]
            return profile

    # ------------------------------------------------------------------ OAuth
    def validate_authorize(self, client_id: str | None, redirect_uri: str | None, response_type: str | None,
                           code_challenge_method: str | None, code_challenge: str | None) -> None:
        """Raises ValueError with a human-readable reason when the request is unacceptable."""
        with self._lock:
            if not client_id:
                raise ValueError("INVALID_CLIENT: Missing client_id")
            client = self._clients.get(client_id)
            if client is None:
                raise ValueError("INVALID_CLIENT: Invalid client")
            if not redirect_uri or redirect_uri not in client.redirect_uris:
                raise ValueError("INVALID_CLIENT: Invalid redirect URI")
            if response_type != "code":
                raise ValueError("unsupported_response_type: response_type must be 'code'")
            if code_challenge_method != "S256":
                raise ValueError("invalid_request: code_challenge_method must be S256")
            if not code_challenge or not (43 <= len(code_challenge) <= 128):
                raise ValueError("invalid_request: code_challenge missing or malformed")

    def issue_code(self, client_id: str, redirect_uri: str, scope: str, code_challenge: str,
                   user_id: str) -> str:
        with self._lock:
            if user_id not in self._users:
                self.add_user(user_id, rotate_refresh_tokens=self.default_rotate_refresh_tokens)
            code = secrets.token_urlsafe(48)
            self._codes[code] = _Code(client_id, redirect_uri, scope, code_challenge, user_id, self.now())
            return code

    def authenticate_client(self, client_id: str | None, client_secret: str | None) -> _Client:
        with self._lock:
            if not client_id:
                raise OAuthError(400, "invalid_client", "Invalid client")  # pragma: no cover - see app
            client = self._clients.get(client_id)
            if client is None:
                raise OAuthError(401, "invalid_client", "Invalid client")
            if client_secret is not None and not secrets.compare_digest(client_secret, client.client_secret):
                raise OAuthError(401, "invalid_client", "Invalid client secret")
            return client

    def _new_access(self, user_id: str, client_id: str, scope: str) -> str:
        token = "BQ" + secrets.token_urlsafe(90)
        self._access[token] = _AccessToken(user_id, client_id, scope, self.now() + ACCESS_TOKEN_TTL)
        return token

    def _new_refresh(self, user_id: str, client_id: str, scope: str, authorized_at: datetime,
                     parent: str | None = None) -> str:
        token = "AQ" + secrets.token_urlsafe(96)
        self._refresh[token] = _RefreshToken(user_id, client_id, scope, authorized_at, parent=parent)
        return token

    def exchange_code(self, client: _Client, code: str | None, redirect_uri: str | None,
                      code_verifier: str | None, client_secret_given: bool) -> dict:
        with self._lock:
            if not code:
                raise OAuthError(400, "invalid_request", "code must be supplied")
            entry = self._codes.get(code)
            if entry is None or entry.used:
                if entry is not None:
                    entry.used = True
                raise OAuthError(400, "invalid_grant", "Invalid authorization code")
            if entry.client_id != client.client_id:
                raise OAuthError(400, "invalid_grant", "Invalid authorization code")
            if self.now() >= entry.issued_at + CODE_TTL:
                entry.used = True
                raise OAuthError(400, "invalid_grant", "Authorization code expired")
            if redirect_uri != entry.redirect_uri:
                raise OAuthError(400, "invalid_grant", "Invalid redirect URI")
            if not code_verifier:
                if not client_secret_given:
                    raise OAuthError(400, "invalid_request", "code_verifier required")
                raise OAuthError(400, "invalid_grant", "code_verifier required")
            if not secrets.compare_digest(s256(code_verifier), entry.code_challenge):
                entry.used = True
                raise OAuthError(400, "invalid_grant", "code_verifier was incorrect")
            entry.used = True
            now = self.now()
            return {
                "access_token": self._new_access(entry.user_id, client.client_id, entry.scope),
                "token_type": "Bearer",
                "scope": entry.scope,
                "expires_in": int(ACCESS_TOKEN_TTL.total_seconds()),
                "refresh_token": self._new_refresh(entry.user_id, client.client_id, entry.scope, now),
            }

    def refresh(self, client: _Client, refresh_token: str | None) -> dict:
        with self._lock:
            if not refresh_token:
                raise OAuthError(400, "invalid_request", "refresh_token must be supplied")
            entry = self._refresh.get(refresh_token)
            if entry is None or entry.client_id != client.client_id:
                raise OAuthError(400, "invalid_grant", "Invalid refresh token")
            if not entry.valid:
                raise OAuthError(400, "invalid_grant", "Refresh token revoked")
            if self.now() >= entry.authorized_at + REFRESH_TOKEN_TTL:
                entry.valid = False
                raise OAuthError(400, "invalid_grant", "Refresh token expired")
            body = {
                "access_token": self._new_access(entry.user_id, client.client_id, entry.scope),
                "token_type": "Bearer",
                "scope": entry.scope,
                "expires_in": int(ACCESS_TOKEN_TTL.total_seconds()),
            }
            # Rotation: the new token replaces this one once it is used; until then this one still works
            # and a refresh with it answers that same new token again (so an answer lost on the way,
            # or two refreshes at once, are not fatal).
            if entry.parent is not None and entry.parent in self._refresh:
                self._refresh[entry.parent].valid = False
                entry.parent = None
            user = self._users.get(entry.user_id)
            if user is not None and user.rotate_refresh_tokens:
                child = self._refresh.get(entry.child or "")
                if child is None or not child.valid or child.parent is None:  # none yet, or already used
                    entry.child = self._new_refresh(entry.user_id, client.client_id, entry.scope,
                                                    entry.authorized_at, parent=refresh_token)
                body["refresh_token"] = entry.child
            return body

    def app_token(self, client: _Client) -> dict:
        """Client credentials: an access token for the app itself (catalog endpoints, no user)."""
        with self._lock:
            return {"access_token": self._new_access(APP, client.client_id, ""), "token_type": "Bearer",
                    "expires_in": int(ACCESS_TOKEN_TTL.total_seconds())}

    def track_by_id(self, track_id: str) -> dict | None:
        """The catalog's TrackObject with this id (the catalog is derived from the seed)."""
        with self._lock:
            if self._track_index is None:
                self._track_index = {catalog.track(self.seed, i)["id"]: i for i in range(catalog.CATALOG_SIZE)}
            index = self._track_index.get(track_id)
            return None if index is None else catalog.track(self.seed, index)

    def check_access_token(self, token: str | None, app_tokens: bool = False) -> str:
        """Returns the user id for a usable access token or raises ApiError(401), or ApiError(403)
        for an account not on a development-mode client's allow-list. An app token (client
        credentials) is usable only where `app_tokens` allows it (catalog endpoints)."""
        with self._lock:
            entry = self._access.get(token or "")
            if entry is None or not entry.valid or (entry.user_id == APP and not app_tokens):
                raise ApiError(401, "Invalid access token")
            if self.now() >= entry.expires_at:
                raise ApiError(401, "The access token expired")
            client = self._clients.get(entry.client_id)
            if (client is not None and client.allow_list is not None and entry.user_id != APP
                    and entry.user_id not in client.allow_list):
                raise ApiError(403, NOT_REGISTERED)
            return entry.user_id

    def token_scope(self, token: str | None) -> str:
        with self._lock:
            entry = self._access.get(token or "")
            return entry.scope if entry is not None else ""

    def expire_access_token(self, token: str) -> None:
        with self._lock:
            entry = self._access.get(token)
            if entry is not None:
                entry.expires_at = min(entry.expires_at, self.now())

    def revoke(self, user_id: str) -> None:
        with self._lock:
            for entry in self._refresh.values():
                if entry.user_id == user_id:
                    entry.valid = False
            for access in self._access.values():
                if access.user_id == user_id:
                    access.valid = False

    # ------------------------------------------------------------------ faults & counters
    def inject(self, path_prefix: str, status: int | None = None, times: int = 1, retry_after: int | None = None,
               body: Any = None, delay_s: float | None = None) -> None:
        if status is None and delay_s is None:
            raise ValueError("inject needs a status or a delay_s")
        with self._lock:
            self._injections.append(Injection(path_prefix, status, int(times), retry_after, body, delay_s))

    def take_injection(self, path: str) -> Injection | None:
        with self._lock:
            for inj in self._injections:
                if path.startswith(inj.path_prefix) and inj.times > 0:
                    inj.times -= 1
                    if inj.times <= 0:
                        self._injections.remove(inj)
                    return copy.copy(inj)
            return None

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    def rate_limit_app(self, until: datetime) -> None:
        with self._lock:
            self._rate_limited_until = until

    def rate_limit_remaining_s(self) -> int | None:
        """Seconds left in the app-wide 429 window (rounded up), or None when not limited."""
        with self._lock:
            if self._rate_limited_until is None:
                return None
            remaining = (self._rate_limited_until - self.now()).total_seconds()
            if remaining <= 0:
                self._rate_limited_until = None
                return None
            return max(1, math.ceil(remaining))

    def draw(self) -> float:
        with self._lock:
            return self._fault_rng.random()

    def count(self, endpoint: str) -> None:
        with self._lock:
            self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(ENDPOINTS, 0)
