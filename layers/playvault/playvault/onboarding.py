"""OAuth onboarding: one-time state + PKCE, code exchange, the seat-taking transaction, the waitlist.

Knows nothing of API Gateway: it takes plain values, returns results and raises OnboardingError
subclasses whose `public_message` is safe to show. The handler maps each error class to a status
code in one place.

Secrets discipline: the authorization code, the PKCE verifier, the tokens and the client secret
never appear in a return value (other than the authorize URL, which holds only the state and the
challenge), a log line or an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aws_lambda_powertools import Logger

from playvault import clock, metrics
from playvault.crypto import SealedTokens, TokenCipher
from playvault.failures import AuthRevoked, SpotifyFailure
from playvault.spotify import Budget, Credentials, SpotifyClient, TokenGrant
from playvault.store import oauth_states, seats, users, waitlist

if TYPE_CHECKING:
    from playvault.config import AuthSettings

logger = Logger(child=True)

MAX_EMAIL_LENGTH = 254
_STATE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_CODE_RE = re.compile(r"[\x21-\x7e]{1,2048}")
_ERROR_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ATOM = r"[A-Za-z0-9!#$%&'*+=?^_~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_RE = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")
_MAX_USER_ID = 256
_MAX_DISPLAY_NAME = 200


# -- errors (the handler maps each class to one status) --------------------------------------------
class OnboardingError(Exception):
    """A sign-in step failed in a way the visitor should be told about, briefly."""

    public_message = "Something went wrong."

    def __init__(self, public_message: str | None = None):
        if public_message is not None:
            self.public_message = public_message
        super().__init__(self.public_message)


class InvalidRequest(OnboardingError):
    public_message = "The request is missing a parameter or has a malformed one."


class InvalidEmail(InvalidRequest):
    public_message = "Please enter a valid email address (at most 254 characters)."


class InvalidState(OnboardingError):
    public_message = "This sign-in link is unknown, expired or already used. Please start again."


class OtherBrowser(InvalidState):
    public_message = (
        "This sign-in was started in another browser, or took longer than 10 minutes. Please start again here."
    )


class AuthorizationDenied(OnboardingError):
    public_message = "You chose not to connect Spotify. Nothing was stored."


class AuthorizationError(OnboardingError):
    public_message = "Spotify did not authorize the sign-in. Nothing was stored; please try again."


class CodeRejected(OnboardingError):
    public_message = "Spotify refused the sign-in (it may have expired). Please start again."


class SpotifyUnavailable(OnboardingError):
    public_message = (
        "Spotify could not be reached to finish signing you in. Nothing was stored; please try again later."
    )


# -- results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoginRedirect:
    """Send the browser to Spotify's consent page. The URL holds the state and the challenge only."""

    url: str

    def __repr__(self) -> str:
        return "LoginRedirect(url=<authorize URL>)"


@dataclass(frozen=True)
class WaitlistRequired:
    """Every seat is taken: offer the waitlist (nothing was written)."""


@dataclass(frozen=True)
class Connected:
    user_id: str
    display_name: str | None
    returning: bool  # True: re-authorized an existing user (no new seat)


@dataclass(frozen=True)
class WaitlistJoined:
    added: bool  # False when the address was already listed (nothing written)


# -- helpers ----------------------------------------------------------------------------------------
def pkce_challenge(verifier: str) -> str:
    """S256 code challenge: base64url(sha256(verifier)) without padding (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def new_verifier() -> str:
    # 64 random bytes -> 86 characters of [A-Za-z0-9_-], within RFC 7636's 43..128.
    return secrets.token_urlsafe(64)


def normalize_email(raw: object) -> str:
    """Trimmed, lower-cased address; InvalidEmail if missing, too long or not an address."""
    if not isinstance(raw, str):
        raise InvalidEmail()
    email = raw.strip()
    match = _EMAIL_RE.fullmatch(email) if 0 < len(email) <= MAX_EMAIL_LENGTH else None
    if match is None or len(match["local"]) > 64:
        raise InvalidEmail()
    return email.lower()


def validate_callback(state: str | None, code: str | None, error: str | None) -> None:
    """Shape checks before anything is read or written."""
    if state is None or not _STATE_RE.fullmatch(state):
        raise InvalidRequest("The sign-in answer is missing its state parameter, or it is malformed.")
    if error is not None:
        if not _ERROR_RE.fullmatch(error):
            raise InvalidRequest("The sign-in answer has a malformed error parameter.")
        return
    if code is None or not _CODE_RE.fullmatch(code):
        raise InvalidRequest("The sign-in answer is missing its code parameter, or it is malformed.")


# -- the flow ---------------------------------------------------------------------------------------
class Onboarding:
    def __init__(
        self,
        *,
        spotify: SpotifyClient,
        cipher: TokenCipher,
        credentials: Callable[[], Credentials],
        accounts_url: str,
        redirect_uri: str,
        scopes: str,
        max_users: int,
    ):
        self.spotify = spotify
        self.cipher = cipher
        self._credentials = credentials
        self.accounts_url = accounts_url.rstrip("/")
        self.redirect_uri = redirect_uri
        self.scopes = scopes
        self.max_users = max_users

    @classmethod
    def from_settings(cls, settings: AuthSettings, *, spotify: SpotifyClient, cipher: TokenCipher,
                      credentials: Callable[[], Credentials]) -> Onboarding:
        return cls(
            spotify=spotify,
            cipher=cipher,
            credentials=credentials,
            accounts_url=settings.spotify_accounts_url,
            redirect_uri=settings.redirect_uri,
            scopes=settings.spotify_scopes,
            max_users=settings.max_users,
        )

    # GET /auth/login ----------------------------------------------------------------------------
    def begin_login(self, *, returning: bool = False, browser_hash: str | None = None
                    ) -> LoginRedirect | WaitlistRequired:
        """A one-time state (stored hashed, 10 min) + PKCE verifier (server side), and the authorize URL.

        At the cap a newcomer is offered the waitlist. A returning user (`returning=True`, the
        "reconnect" link) may still sign in: the callback finds it already holds a seat, and a
        newcomer who used that link is still stopped by the seat transaction.
        """
        if not returning and not seats.has_free_seat(self.max_users):
            logger.info("login at cap: waitlist offered", extra={"max_users": self.max_users})
            return WaitlistRequired()
        verifier = new_verifier()
        for attempt in (1, 2):
            state = secrets.token_urlsafe(32)
            try:
                oauth_states.put_state(state, verifier, clock.now(), browser_hash)
                break
            except oauth_states.StateCollision:
                if attempt == 2:
                    raise
        query = urlencode(
            {
                "client_id": self._credentials().client_id,
                "response_type": "code",
                "redirect_uri": self.redirect_uri,
                "scope": self.scopes,
                "state": state,
                "code_challenge_method": "S256",
                "code_challenge": pkce_challenge(verifier),
            }
        )
        logger.info("login started", extra={"returning": returning})
        return LoginRedirect(f"{self.accounts_url}/authorize?{query}")

    # GET /auth/callback -------------------------------------------------------------------------
    def complete_login(
        self, *, state: str | None, code: str | None, error: str | None, budget: Budget,
        browser_hash: str | None = None,
    ) -> Connected | WaitlistRequired:
        validate_callback(state, code, error)
        assert state is not None
        pending = oauth_states.consume_state(state, clock.now())
        if pending is None:
            logger.info("callback with an unknown, replayed or expired state")
            raise InvalidState()
        if pending.browser_hash != browser_hash:
            # Consumed all the same: a link carried to another browser is dead in both.
            logger.info("callback from another browser than the one that started the sign-in")
            raise OtherBrowser()
        if error is not None:
            logger.info("authorization not granted", extra={"oauth_error": error})
            if error == "access_denied":
                raise AuthorizationDenied()
            raise AuthorizationError()
        assert code is not None
        try:
            grant = self.spotify.exchange_code(code, pending.code_verifier, self.redirect_uri, budget)
        except AuthRevoked:
            logger.info("Spotify refused the authorization code (invalid_grant)")
            raise CodeRejected() from None
        except SpotifyFailure as exc:
            logger.warning("token endpoint failed", extra={"failure_type": str(exc.failure_type), "reason": str(exc)})
            raise SpotifyUnavailable() from None
        if grant.refresh_token is None:
            logger.warning("token endpoint answered without a refresh token")
            raise SpotifyUnavailable()
        try:
            profile = self.spotify.me(grant.access_token, budget)
        except SpotifyFailure as exc:
            logger.warning("/me failed", extra={"failure_type": str(exc.failure_type), "reason": str(exc)})
            raise SpotifyUnavailable() from None
        user_id = profile["id"]
        if not user_id or len(user_id) > _MAX_USER_ID:
            logger.warning("/me answered an unusable user id")
            raise SpotifyUnavailable()
        name = profile.get("display_name")
        display_name = name[:_MAX_DISPLAY_NAME] if isinstance(name, str) and name else None
        return self._store(user_id, display_name, grant)

    def _store(self, user_id: str, display_name: str | None, grant: TokenGrant) -> Connected | WaitlistRequired:
        now = clock.now()
        assert grant.refresh_token is not None
        # Only the refresh token is kept at rest: the access token lives an hour, the next poll mints its own.
        tokens = self.cipher.seal_new(user_id, grant.refresh_token, None)
        if users.get(user_id) is not None and self._reauthorize(user_id, display_name, grant, tokens):
            return Connected(user_id, display_name, returning=True)
        user = users.UserModel(
            user_id,
            display_name=display_name,
            status=users.ACTIVE,
            created_at=now,
            authorized_at=now,
            token_key=tokens.token_key,
            refresh_token_enc=tokens.refresh_token_enc,
            consecutive_failures=0,
            plays_archived=0,
            gaps_detected=0,
        )
        outcome = seats.create_user_with_seat(user, self.max_users)
        if outcome is seats.SeatOutcome.CREATED:
            metrics.count(metrics.SIGN_UPS)
            logger.info("user signed up", extra={"user_id": user_id})
            return Connected(user_id, display_name, returning=False)
        if outcome is seats.SeatOutcome.USER_EXISTS:
            # A concurrent callback of the same user created it first: this one re-authorizes.
            if self._reauthorize(user_id, display_name, grant, tokens):
                return Connected(user_id, display_name, returning=True)
            raise SpotifyUnavailable("The sign-in collided with another one. Please try again.")
        logger.info("sign-up at cap: waitlist offered", extra={"user_id": user_id, "max_users": self.max_users})
        return WaitlistRequired()

    def _reauthorize(self, user_id: str, display_name: str | None, grant: TokenGrant, tokens: SealedTokens
                     ) -> bool:
        done = seats.reauthorize(
            user_id,
            tokens=tokens,
            access_token_expires_at=None,
            display_name=display_name,
            now=clock.now(),
        )
        if done:
            metrics.count(metrics.RE_AUTHORIZATIONS)
            logger.info("user re-authorized", extra={"user_id": user_id})
        return done

    # POST /auth/waitlist ------------------------------------------------------------------------
    def join_waitlist(self, email: object) -> WaitlistJoined:
        normalized = normalize_email(email)
        added = waitlist.add(normalized, clock.now())
        key = waitlist.waitlist_key(normalized)
        if added:
            metrics.count(metrics.WAITLISTED)
        # The address is personal data: only (a prefix of) its hash reaches the logs.
        logger.info("waitlist submission", extra={"waitlist_key": key[:24], "added": added})
        return WaitlistJoined(added=added)


def remove_user(user_id: str) -> bool:
    """Operators: delete a user and free its seat (one transaction). False if no such user."""
    removed = seats.remove_user(user_id)
    logger.info("user removal", extra={"user_id": user_id, "removed": removed})
    return removed
