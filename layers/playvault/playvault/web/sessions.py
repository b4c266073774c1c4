"""Sessions, the sign-in browser binding, CSRF and the cookie rules.

Cookies are `__Host-` cookies: Secure, Path=/, no Domain (the browser refuses them otherwise, so
no sibling host can set or read them), HttpOnly, SameSite=Lax.
- session: a random id (256 bits); the server keeps only its sha256 with the user id and an idle
  expiry (store/sessions.py). The user id of every account route comes from here and nowhere else.
- login: a random value set at /auth/login whose hash is stored with the one-time OAuth state and
  checked at the callback (RFC 9700, 4.7.1): a sign-in link cannot be completed in another browser.
- CSRF: every state-changing request must carry the session's CSRF token (a hidden form field,
  derived one-way from the session id, so a page of another origin cannot know it) and, when the
  browser sends one, an Origin equal to this host; otherwise 403.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from aws_lambda_powertools.shared.cookies import Cookie, SameSite

from playvault.store import sessions as session_store
from playvault.web.http import Forbidden

SESSION_COOKIE = "__Host-playvault_session"
LOGIN_COOKIE = "__Host-playvault_login"
LOGIN_COOKIE_SECONDS = 600  # as long as the one-time OAuth state lives
_VALUE = re.compile(r"[A-Za-z0-9_-]{32,128}")


def _cookie(name: str, value: str, max_age: int) -> Cookie:
    return Cookie(name=name, value=value, path="/", secure=True, http_only=True, max_age=max_age,
                  same_site=SameSite.LAX_MODE)


def cleared(name: str) -> Cookie:
    return _cookie(name, "", 0)


def read_cookie(cookies: list[str] | None, name: str) -> str | None:
    """The value of cookie `name` (HttpApi 2.0 passes cookies as a list); None if absent or malformed."""
    for header in cookies or []:
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value if _VALUE.fullmatch(value) else None
    return None


def hash_value(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- the sign-in browser binding -----------------------------------------------------------------
def new_login_binding() -> tuple[str, Cookie]:
    """A random value for the login cookie, and the cookie. Store hash_value(value) with the state."""
    value = secrets.token_urlsafe(32)
    return value, _cookie(LOGIN_COOKIE, value, LOGIN_COOKIE_SECONDS)


# -- sessions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    user_id: str
    session_id: str = field(repr=False)  # never in a log line or a traceback
    # Set when this request moved the idle expiry: the same cookie with the new Max-Age, so the
    # browser keeps an active session as long as the server does (not 30 days after sign-in).
    renewal: Cookie | None = field(default=None, repr=False, compare=False)

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.session_id)


def csrf_token(session_id: str) -> str:
    return hashlib.sha256(b"playvault-csrf\0" + session_id.encode()).hexdigest()


def start(user_id: str, now: datetime, idle: timedelta) -> Cookie:
    """A new session for the user: stored hashed, returned as the cookie to set."""
    session_id = secrets.token_urlsafe(32)
    session_store.create(session_id, user_id, now, idle)
    return _cookie(SESSION_COOKIE, session_id, int(idle.total_seconds()))


def current(cookies: list[str] | None, now: datetime, idle: timedelta) -> Session | None:
    session_id = read_cookie(cookies, SESSION_COOKIE)
    if session_id is None:
        return None
    found = session_store.find(session_id, now, idle)
    if found is None:
        return None
    renewal = None
    if found.refreshed_at == now:  # find() moved the expiry just now
        renewal = _cookie(SESSION_COOKIE, session_id, int((found.expires_at - now).total_seconds()))
    return Session(found.user_id, session_id, renewal)


def with_renewal(cookies: list[Cookie], session: Session | None) -> list[Cookie]:
    """The response's cookies plus the session's renewal, unless the response sets the session
    cookie itself (sign-out, deletion: ending it wins)."""
    if session is None or session.renewal is None or any(c.name == SESSION_COOKIE for c in cookies):
        return cookies
    return [*cookies, session.renewal]


def end(session: Session) -> Cookie:
    session_store.delete(session.session_id)
    return cleared(SESSION_COOKIE)


# -- CSRF -----------------------------------------------------------------------------------------
def check_same_origin(headers: Mapping[str, str]) -> None:
    """403 unless the request comes from a page of this host.

    Origin names the page's origin, except that our pages say Referrer-Policy: no-referrer, under
    which browsers send `Origin: null`; then Fetch Metadata (Sec-Fetch-Site, which no page can set)
    must say same-origin. A client sending neither (not a browser) still needs the CSRF token."""
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site")
    host = (headers.get("host") or "").lower()
    if origin is not None and origin != "null":
        if not host or urlsplit(origin).netloc.lower() != host:
            raise Forbidden()
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden()
    if origin == "null" and site is None:
        raise Forbidden()


def check_csrf(session: Session, headers: Mapping[str, str], submitted: str | None) -> None:
    check_same_origin(headers)
    if not submitted or not hmac.compare_digest(submitted, session.csrf_token):
        raise Forbidden("This form is out of date or did not come from your PlayVault page. Nothing was changed; "
                        "please reload the page and try again.")
