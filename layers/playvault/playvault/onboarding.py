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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aws_lambda_powertools import Logger

from playvault import clock, metrics
from playvault.crypto import SealedTokens, TokenCipher
from playvault.failures import AuthRevoked, CredentialsUnavailable, SpotifyFailure
from playvault.lifecycle import EMAIL
from playvault.spotify import AccountNotAllowListed, Budget, Credentials, SpotifyClient, TokenGrant
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
    public_message = "This sign-in link is unknown, expired or already used. Please sign in again."


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


class NotAllowListed(OnboardingError):
    """/me answered 403: the app is in Spotify's development mode and this account is not on its
    allow-list. Nothing was stored; only the operator can fix it."""

    public_message = (
        "This Spotify account is not on this PlayVault's allow-list. The app is in Spotify's "
        "development mode, which only lets accounts the operator has added sign in. Nothing was stored."
    )


class SeatAvailable(OnboardingError):
    public_message = "A seat is free right now, so there is no waitlist: sign in with Spotify instead."


class DeletionInProgress(OnboardingError):
    """This account's data is being deleted (delete my data): signing in waits until that is done."""

    public_message = (
        "Your PlayVault data is being deleted, as you asked. Nothing was stored: you can sign in again "
        "once the deletion is done (a few minutes), as a new account."
    )


class SpotifyUnavailable(OnboardingError):
    public_message = (
        "Spotify could not be reached to finish signing you in. Nothing was stored; please try again later."
    )


class AppUnavailable(OnboardingError):
    """The app's own Spotify credentials could not be read (SSM throttled, access denied, missing):
    the operator's problem, told without naming any secret or parameter."""

    public_message = ("PlayVault cannot sign you in right now (a problem on our side). Nothing was stored; "
                      "please try again in a minute.")


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


@dataclass(frozen=True)
class _Authorization:
    """What one sign-in stores on the user, sealed."""

    tokens: SealedTokens
    grant: TokenGrant
    display_name: str | None
    email_enc: bytes | None
    now: datetime
    expires_at: datetime

    def __repr__(self) -> str:
        return "_Authorization(<sealed>)"


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
        authorization_lifetime: timedelta = timedelta(days=182),
    ):
        self.spotify = spotify
        self.cipher = cipher
        self._credentials = credentials
        self.accounts_url = accounts_url.rstrip("/")
        self.redirect_uri = redirect_uri
        self.scopes = scopes
        self.max_users = max_users
        self.authorization_lifetime = authorization_lifetime

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
            authorization_lifetime=timedelta(days=settings.authorization_lifetime_days),
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
        client_id = self._client_id()  # before the state is stored: a failed read stores nothing
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
                "client_id": client_id,
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

    def _client_id(self) -> str:
        try:
            return self._credentials().client_id
        except CredentialsUnavailable as exc:
            logger.error("login failed: the app's Spotify credentials are unreadable", extra={"reason": str(exc)})
            raise AppUnavailable() from None

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
        except CredentialsUnavailable as exc:
            logger.error("sign-in failed: the app's Spotify credentials are unreadable", extra={"reason": str(exc)})
            raise AppUnavailable() from None
        except SpotifyFailure as exc:
            logger.warning("token endpoint failed", extra={"failure_type": str(exc.failure_type), "reason": str(exc)})
            raise SpotifyUnavailable() from None
        if grant.refresh_token is None:
            logger.warning("token endpoint answered without a refresh token")
            raise SpotifyUnavailable()
        try:
            profile = self.spotify.me(grant.access_token, budget)
        except AccountNotAllowListed:
            logger.warning("sign-in refused: the Spotify account is not on the app's allow-list (development mode)")
            raise NotAllowListed() from None
        except SpotifyFailure as exc:
            logger.warning("/me failed", extra={"failure_type": str(exc.failure_type), "reason": str(exc)})
            raise SpotifyUnavailable() from None
        user_id = profile["id"]
        if not user_id or len(user_id) > _MAX_USER_ID:
            logger.warning("/me answered an unusable user id")
            raise SpotifyUnavailable()
        name = profile.get("display_name")
        display_name = name[:_MAX_DISPLAY_NAME] if isinstance(name, str) and name else None
        try:
            email = normalize_email(profile.get("email"))
        except InvalidEmail:
            email = None  # no user-read-email grant, or an address we could not use: no reminders
        return self._store(user_id, display_name, grant, email)

    def _store(self, user_id: str, display_name: str | None, grant: TokenGrant, email: str | None
               ) -> Connected | WaitlistRequired:
        now = clock.now()
        assert grant.refresh_token is not None
        # Only the refresh token is kept at rest: the access token lives an hour, the next poll mints its own.
        tokens = self.cipher.seal_new(user_id, grant.refresh_token, None)
        email_enc = self.cipher.seal(tokens.token_key, email, user_id, EMAIL) if email else None
        sealed = _Authorization(tokens, grant, display_name, email_enc, now, now + self.authorization_lifetime)
        result = self._returning(user_id, sealed)  # None: no such user yet
        if result is not None:
            return self._signed_in(result, email)
        user = users.UserModel(
            user_id,
            display_name=display_name,
            status=users.ACTIVE,
            created_at=now,
            authorized_at=now,
            authorization_expires_at=sealed.expires_at,
            token_key=tokens.token_key,
            refresh_token_enc=tokens.refresh_token_enc,
            email_enc=email_enc,
            consecutive_failures=0,
            plays_archived=0,
            gaps_detected=0,
        )
        outcome = seats.create_user_with_seat(user, self.max_users)
        if outcome is seats.SeatOutcome.CREATED:
            metrics.count(metrics.SIGN_UPS)
            logger.info("user signed up", extra={"user_id": user_id})
            return self._signed_in(Connected(user_id, display_name, returning=False), email)
        if outcome is seats.SeatOutcome.USER_EXISTS:
            # A concurrent callback of the same user created it first: this one re-authorizes.
            result = self._returning(user_id, sealed)
            if result is not None:
                return self._signed_in(result, email)
            raise SpotifyUnavailable("The sign-in collided with another one. Please try again.")
        logger.info("sign-up at cap: waitlist offered", extra={"user_id": user_id, "max_users": self.max_users})
        return WaitlistRequired()

    def _signed_in(self, result: Connected | WaitlistRequired, email: str | None) -> Connected | WaitlistRequired:
        if isinstance(result, Connected) and email:
            waitlist.remove(email)  # holding a seat now: the waitlist keeps no address it cannot use
        return result

    def _returning(self, user_id: str, sealed: _Authorization) -> Connected | WaitlistRequired | None:
        """An existing user: re-authorized (keeps its seat), or lapsed and resumed if a seat is free,
        or offered the waitlist. None when the user vanished meanwhile (take the new-user path)."""
        fields = {"tokens": sealed.tokens, "access_token_expires_at": None,
                  "display_name": sealed.display_name, "now": sealed.now,
                  "authorization_expires_at": sealed.expires_at, "email_enc": sealed.email_enc}
        outcome = seats.reauthorize(user_id, **fields)
        if outcome is seats.ReauthOutcome.GONE:
            return None
        if outcome is seats.ReauthOutcome.DELETING:
            logger.info("sign-in refused: the user's deletion is running", extra={"user_id": user_id})
            raise DeletionInProgress()
        if outcome is seats.ReauthOutcome.LAPSED:
            resumed = seats.resume_lapsed(user_id, self.max_users, **fields)
            if resumed is None and users.deleting(user_id):  # marked deleting since the read
                raise DeletionInProgress()
            if resumed is None:  # reconnected by a concurrent callback, or deleted: start again
                raise SpotifyUnavailable("The sign-in collided with another one. Please try again.")
            if resumed is seats.SeatOutcome.CAP_REACHED:
                logger.info("lapsed user at cap: waitlist offered", extra={"user_id": user_id})
                return WaitlistRequired()
            logger.info("lapsed user resumed with a seat", extra={"user_id": user_id})
        metrics.count(metrics.RE_AUTHORIZATIONS)
        logger.info("user re-authorized", extra={"user_id": user_id})
        return Connected(user_id, sealed.display_name, returning=True)

    # POST /auth/waitlist ------------------------------------------------------------------------
    def join_waitlist(self, email: object) -> WaitlistJoined:
        normalized = normalize_email(email)
        if seats.has_free_seat(self.max_users):
            # The waitlist keeps no address it cannot use: with a seat free, signing in is the answer.
            raise SeatAvailable()
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
