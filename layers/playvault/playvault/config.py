"""Settings from the environment, one validated model per function.

Each handler builds its model at import, so a missing or malformed setting fails the cold start
with a message naming the variable (never its value: some values are parameter names of secrets).
template.yaml is the only place that sets these variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from playvault import identity


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names it."""


class EnvSettings(BaseModel):
    # defer_build: a handler builds the validator of its own model only, not of all six.
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        values = {name: env[name.upper()] for name in cls.model_fields if name.upper() in env}
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from None


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


class TableSettings(EnvSettings):
    users_table: str = Field(min_length=3)
    artists_table: str = Field(min_length=3)
    albums_table: str = Field(min_length=3)
    tracks_table: str = Field(min_length=3)
    plays_table: str = Field(min_length=3)
    state_table: str = Field(min_length=3)
    gaps_table: str = Field(min_length=3)
    episodes_table: str = Field(min_length=3)
    rollups_table: str = Field(min_length=3)


class SpotifySettings(EnvSettings):
    spotify_api_url: str = "https://api.spotify.com/v1"
    spotify_accounts_url: str = "https://accounts.spotify.com"
    # SSM Parameter Store names (SecureString for the secret), read through Powertools Parameters.
    spotify_client_id_param: str = Field(pattern=r"^/[\w./-]+$")
    spotify_client_secret_param: str = Field(pattern=r"^/[\w./-]+$")

    _urls = field_validator("spotify_api_url", "spotify_accounts_url")(_http_url)


class MetricsSettings(EnvSettings):
    # Off: only playvault.metrics.CORE is emitted (at most 10 custom metrics, the always-free
    # allowance); on: the full CATALOG. template.yaml sets it from the DetailedMetrics parameter.
    detailed_metrics: bool = False


class TokenSettings(EnvSettings):
    token_key_id: str = Field(min_length=1)


class DispatchSettings(EnvSettings):
    # The dispatcher runs every this many minutes and spreads what it sends over that period.
    dispatch_period_minutes: int = Field(default=15, ge=2, le=1440)


class LifecycleSettings(EnvSettings):
    """The authorization lifecycle (playvault.lifecycle): Spotify's 6-month refresh-token expiry."""

    authorization_lifetime_days: int = Field(default=182, ge=1, le=3650)


class DispatcherSettings(TableSettings, LifecycleSettings, DispatchSettings):
    work_queue_url: str = Field(min_length=1)
    batch_size: int = Field(default=50, ge=1, le=500)
    # Reminder e-mails (SES) go out only when a sender is set; the address opens with the token key.
    notification_sender: str = Field(default="", pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$")
    token_key_id: str = ""
    public_api_url: str = "https://example.invalid"  # the reconnect link is <this>/auth/login?reconnect=1
    reclaim_seat_after_days: int = Field(default=30, ge=1, le=3650)

    _url = field_validator("public_api_url")(_http_url)

    @model_validator(mode="after")
    def _sender_needs_key(self) -> DispatcherSettings:
        if self.notification_sender and not self.token_key_id:
            raise ValueError("TOKEN_KEY_ID is required when NOTIFICATION_SENDER is set")
        return self


class WorkerSettings(TableSettings, SpotifySettings, TokenSettings, DispatchSettings):
    work_queue_url: str = Field(min_length=1)
    dead_letter_queue_url: str = Field(min_length=1)
    idempotency_table: str = Field(min_length=3)
    # A user's next poll: after poll_cadence_minutes normally; at the next run after a gap or
    # busy_plays new plays; quiet users back off, never beyond max_poll_cadence_minutes.
    poll_cadence_minutes: int = Field(default=60, ge=2, le=1440)
    max_poll_cadence_minutes: int = Field(default=60, ge=2, le=1440)
    busy_plays: int = Field(default=25, ge=1, le=50)
    user_concurrency: int = Field(default=50, ge=1, le=64)
    # Stop starting users when less than this remains: a started user must finish its writes.
    min_remaining_ms: int = Field(default=20_000, ge=1_000)
    # Kept back from a user's Spotify calls for the writes after the last one (plays, catalog, the
    # user's record or its failure, then the requeue): a call answering at its timeout never pushes
    # them past the deadline. A user starts only with its Spotify worst case plus this left.
    writes_reserve_ms: int = Field(default=10_000, ge=100)
    # The importer's tolerance: a poll merges the export rows that are the plays it wrote (same rule).
    dedup_tolerance_s: int = Field(default=identity.DEFAULT_TOLERANCE_S, ge=0, le=identity.MAX_TOLERANCE_S)


class WebSettings(TableSettings):
    """What every HTTP function needs for sessions (playvault.web)."""

    sessions_table: str = Field(min_length=3)
    session_idle_days: int = Field(default=30, ge=1, le=365)


class JobSettings(TableSettings):
    """The account jobs (export, delete): where they keep status and files, and their queue."""

    exports_table: str = Field(min_length=3)
    sessions_table: str = Field(min_length=3)
    imports_table: str = Field(min_length=3)  # deletion removes the user's import jobs
    user_files_bucket: str = Field(min_length=3)
    jobs_queue_url: str = Field(min_length=1)
    # A deletion waits this long after marking the user `deleting` before it deletes plays: a poll
    # that checked the user just before the mark may still write plays until the worker times out.
    deletion_grace_seconds: int = Field(default=150, ge=0, le=900)


class JobsFunctionSettings(JobSettings):
    # Import continuations travel on the jobs queue; a due one is handed to the importer (async invoke).
    importer_function_name: str = Field(min_length=1)


class AccountSettings(WebSettings, JobSettings, SpotifySettings, DispatchSettings):
    imports_table: str = Field(min_length=3)  # the user's import jobs, shown on /me
    # DispatchSettings: /me says when the next poll comes (a user not yet due waits for the next run).
    # SpotifySettings: the client secret keys the MAC of upload ids (playvault.imports.upload_id_key).


class AuthSettings(WebSettings, SpotifySettings, TokenSettings, LifecycleSettings):
    max_users: int = Field(ge=1)
    redirect_uri: str
    # user-read-email: the address the 6-month expiry reminders go to (stored sealed).
    spotify_scopes: str = "user-read-recently-played user-read-email"

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        # Spotify accepts only HTTPS redirect URIs, or http on a loopback address.
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "[::1]", "::1")
        if not parts.netloc or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise ValueError("must be an https URL, or http on 127.0.0.1/[::1]")
        return value


class UserFilesSettings(EnvSettings):
    """The bucket of user uploads (imports/) and downloads (exports/); shared with the account pages."""

    user_files_bucket: str = Field(min_length=3)


class ImportStatusSettings(EnvSettings):
    """What a page needs to show imports and coverage (playvault.imports.status_for_user, coverage)."""

    imports_table: str = Field(min_length=3)
    gaps_table: str = Field(min_length=3)


class ImporterSettings(TableSettings, SpotifySettings, UserFilesSettings):
    imports_table: str = Field(min_length=3)
    episodes_table: str = Field(min_length=3)
    # Its continuations (the jobs function hands each back when due) and, after an import that looked
    # tracks up (names, albums, artists now known), the rebuild of the rollups: both are jobs messages.
    jobs_queue_url: str = Field(min_length=1)
    import_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    # The listening rule and the de-duplication tolerance (README, Import).
    min_ms_played: int = Field(default=30_000, ge=0, le=600_000)
    skip_incognito: bool = True
    dedup_tolerance_s: int = Field(default=identity.DEFAULT_TOLERANCE_S, ge=0, le=identity.MAX_TOLERANCE_S)
    import_chunk_rows: int = Field(default=1000, ge=10, le=20_000)
    resolve_interval_ms: int = Field(default=200, ge=0, le=60_000)
    min_remaining_ms: int = Field(default=30_000, ge=1_000)
