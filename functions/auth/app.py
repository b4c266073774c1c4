"""HttpApi (payload 2.0) routes -> playvault.onboarding. Thin: parse, call, render; errors map here.

GET  /auth/login      302 to Spotify's consent page (or the waitlist page when every seat is taken);
                      sets the login cookie that binds the sign-in to this browser; 303 to /me when
                      signed in and archived already (unless reconnect=1)
GET  /auth/callback   consume the one-time state (same browser only), exchange the code, create or
                      re-authorize the user, start a session and 303 to /me (the code leaves the address bar);
                      a used state (the back button to the consent page) 303s to /me, or offers a fresh sign-in
POST /auth/waitlist   form or JSON {"email": ...}
POST /auth/logout     end the session (CSRF-checked)
"""

from __future__ import annotations

import html
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths

from playvault import clock, store
from playvault.aws import LazyClient
from playvault.config import AuthSettings
from playvault.crypto import TokenCipher
from playvault.metrics import metrics
from playvault.onboarding import (
    AppUnavailable,
    AuthorizationDenied,
    AuthorizationError,
    CodeRejected,
    Connected,
    DeletionInProgress,
    InvalidRequest,
    InvalidState,
    LoginRedirect,
    NotAllowListed,
    Onboarding,
    OnboardingError,
    OtherBrowser,
    SeatAvailable,
    SpotifyUnavailable,
    WaitlistRequired,
)
from playvault.spotify import Budget, SpotifyClient, ssm_credentials
from playvault.store import users
from playvault.store.seats import SeatsBusy
from playvault.web import http as web_http
from playvault.web import pages as web_pages
from playvault.web import sessions as web_sessions

settings = AuthSettings.from_env()
store.bind(settings)
logger = Logger()
credentials = ssm_credentials(settings.spotify_client_id_param, settings.spotify_client_secret_param)
spotify = SpotifyClient(
    api_url=settings.spotify_api_url,
    accounts_url=settings.spotify_accounts_url,
    credentials=credentials,
    pool_size=4,
    read_timeout_s=5.0,
)
cipher = TokenCipher(LazyClient("kms"), settings.token_key_id)  # data keys are cached
onboarding = Onboarding.from_settings(settings, spotify=spotify, cipher=cipher, credentials=credentials)
app = APIGatewayHttpResolver()

ROUTES = {"/auth/login": "GET", "/auth/callback": "GET", "/auth/waitlist": "POST", "/auth/logout": "POST",
          "/auth/signed-out": "GET"}
SESSION_IDLE = timedelta(days=settings.session_idle_days)
RESERVE_MS = 1500  # leave time to answer after the Spotify calls

_TEMPLATES = Path(__file__).parent / "templates"
_WAITLIST_FORM = (_TEMPLATES / "waitlist_form.html").read_text()

# One page template and one set of HTML headers for every function (no caching, no script, no
# Referer: the callback URL carries the authorization code).
NO_STORE = web_pages.NO_STORE
page = web_pages.page
message_page = web_pages.message_page


def waitlist_page() -> Response:
    intro = (
        "<p>PlayVault is full for now: every seat is taken. Leave your email address and we will "
        "tell you when one opens.</p>"
    )
    return page(200, "PlayVault is full", "PlayVault is full", intro + _WAITLIST_FORM)


def _wants_json() -> bool:
    headers = app.current_event.headers or {}
    content_type = (headers.get("content-type") or "").lower()
    accept = (headers.get("accept") or "").lower()
    return content_type.startswith("application/json") or ("application/json" in accept and "text/html" not in accept)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if _wants_json():
        return Response(
            status_code=status,
            content_type="application/json",
            body=json.dumps({"error": message}),
            headers={**NO_STORE, **(headers or {})},
        )
    title = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
             413: "Too large", 415: "Unsupported media type", 502: "Spotify is unavailable",
             503: "Busy"}.get(status, "Error")
    return message_page(status, title, message, headers, start_again=status in (400, 500, 502, 503))


# -- the one mapping from errors to responses -----------------------------------------------------
_STATUS: list[tuple[type[OnboardingError], int]] = [
    (AuthorizationDenied, 200),  # the visitor said no: a normal outcome, told kindly
    (InvalidState, 400),
    (InvalidRequest, 400),
    (AuthorizationError, 400),
    (CodeRejected, 400),
    (NotAllowListed, 403),
    (SeatAvailable, 409),
    (DeletionInProgress, 409),
    (SpotifyUnavailable, 502),
    (AppUnavailable, 503),
]


def not_allow_listed_page(exc: NotAllowListed) -> Response:
    """Spotify answered 403 to /me: development mode, account not allow-listed. Say what the
    operator must do; the visitor can only pass it on."""
    operator = (
        "<p><b>If you run this PlayVault:</b> open the Spotify developer dashboard "
        "(developer.spotify.com/dashboard), choose this app, then <i>User Management</i>, and add this "
        "person's name and the e-mail address of their Spotify account. A development-mode app allows "
        "5 users; more need Spotify's extended quota. Then they sign in again here.</p>"
    )
    more = '<p><a href="/auth/login">Sign in with Spotify</a> (once you have been added)</p>'
    return page(403, "Not on the allow-list", "This Spotify account is not on the allow-list",
                f"<p>{html.escape(exc.public_message)}</p>{operator}{more}")


@app.exception_handler(OnboardingError)
def onboarding_error(exc: OnboardingError) -> Response:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
    if isinstance(exc, AuthorizationDenied):
        return message_page(200, "Not connected", exc.public_message, start_again=True)
    if isinstance(exc, NotAllowListed) and not _wants_json():
        return not_allow_listed_page(exc)
    if isinstance(exc, SeatAvailable) and not _wants_json():
        return message_page(409, "A seat is free", exc.public_message, start_again=True)
    if isinstance(exc, AppUnavailable):  # SSM throttled or misconfigured: worth another try in a minute
        return error_response(status, exc.public_message, {"Retry-After": "60"})
    return error_response(status, exc.public_message)


@app.exception_handler(web_http.RequestRejected)
def web_request_rejected(exc: web_http.RequestRejected) -> Response:
    return error_response(exc.status, exc.message, exc.headers)


@app.exception_handler(SeatsBusy)
def seats_busy(exc: SeatsBusy) -> Response:
    logger.warning("seat counter contended")
    return error_response(503, "We are busy signing people in. Please try again in a moment.", {"Retry-After": "2"})


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")  # the message and trace go to the log, never to the visitor
    return error_response(500, "Something went wrong on our side. Nothing was stored; please try again.")


@app.not_found
def not_found(exc: NotFoundError) -> Response:
    path = app.current_event.path
    allowed = ROUTES.get(path)
    if allowed is not None:
        return error_response(405, f"{path} accepts {allowed} only.", {"Allow": allowed})
    return error_response(404, "There is nothing here.")


# -- input helpers ----------------------------------------------------------------------------------
def _budget() -> Budget:
    context = app.lambda_context
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        return Budget(context.get_remaining_time_in_millis, reserve_ms=RESERVE_MS)
    return Budget.seconds(10)


def _waitlist_email() -> object:
    body, content_type = web_http.small_body(app)
    if content_type == "application/json":
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise web_http.RequestRejected(400, "The request body is not valid JSON.") from None
        if not isinstance(data, dict) or "email" not in data:
            raise InvalidRequest("Send a JSON object with an email field.")
        return data["email"]
    if content_type in ("application/x-www-form-urlencoded", ""):
        try:
            fields = parse_qs(body, keep_blank_values=True, max_num_fields=10, strict_parsing=False)
        except ValueError:
            raise web_http.RequestRejected(400, "The form has too many fields.") from None
        values = fields.get("email") or []
        if len(values) != 1:
            raise InvalidRequest("The form needs exactly one email field.")
        return values[0]
    raise web_http.RequestRejected(415, "Send the form (application/x-www-form-urlencoded) or JSON.")


# -- routes -----------------------------------------------------------------------------------------
def _to_my_archive(session: web_sessions.Session) -> Response:
    """303 to /me, carrying the session cookie's new Max-Age if reading the session moved its expiry."""
    return web_pages.redirect("/me", cookies=web_sessions.with_renewal([], session))


def _archiving_session() -> web_sessions.Session | None:
    """A live session of a user PlayVault archives (signing in again has nothing to do), else None."""
    session = web_sessions.current(app.current_event.cookies, clock.now(), SESSION_IDLE)
    if session is None:
        return None
    user = users.get(session.user_id)
    return session if user is not None and user.status == users.ACTIVE else None


@app.get("/auth/login")
def login() -> Response:
    returning = web_http.query(app).get("reconnect") in ("1", "true", "yes")
    session = None if returning else _archiving_session()
    if session is not None:  # e.g. back to the sign-in link after signing in
        return _to_my_archive(session)
    binding, login_cookie = web_sessions.new_login_binding()
    result = onboarding.begin_login(returning=returning, browser_hash=web_sessions.hash_value(binding))
    if isinstance(result, WaitlistRequired):
        return waitlist_page()
    assert isinstance(result, LoginRedirect)
    return web_pages.redirect(result.url, status=302, cookies=[login_cookie])


@app.get("/auth/callback")
def callback() -> Response:
    query = web_http.query(app)
    binding = web_sessions.read_cookie(app.current_event.cookies, web_sessions.LOGIN_COOKIE)
    try:
        result = onboarding.complete_login(
            state=query.get("state"), code=query.get("code"), error=query.get("error"), budget=_budget(),
            browser_hash=web_sessions.hash_value(binding) if binding else None,
        )
    except InvalidState as exc:
        # The browser's back button to Spotify's consent page, and on again: a used state. Nothing
        # is signed in by it; a signed-in browser goes back to its archive, any other is offered a
        # fresh sign-in (a page, not an error: never an OAuth round trip nobody asked for).
        # A link carried from another browser stays refused (OtherBrowser says why).
        if isinstance(exc, OtherBrowser):
            raise
        session = web_sessions.current(app.current_event.cookies, clock.now(), SESSION_IDLE)
        if session is not None:
            return _to_my_archive(session)
        return message_page(200, "Sign in again", exc.public_message + " Nothing was stored.", start_again=True)
    if isinstance(result, WaitlistRequired):
        return waitlist_page()
    assert isinstance(result, Connected)
    # A session, and 303 to /me: the code leaves the address bar, so a reload cannot replay it.
    session_cookie = web_sessions.start(result.user_id, clock.now(), SESSION_IDLE)
    welcome = "?welcome=back" if result.returning else "?welcome=new"
    return web_pages.redirect(f"/me{welcome}", cookies=[session_cookie,
                                                        web_sessions.cleared(web_sessions.LOGIN_COOKIE)])


@app.post("/auth/logout")
def logout() -> Response:
    fields = web_http.form(app, ("csrf",))
    session = web_sessions.current(app.current_event.cookies, clock.now(), SESSION_IDLE)
    if session is None:  # already signed out: nothing to end, same destination
        return web_pages.redirect("/auth/signed-out", cookies=[web_sessions.cleared(web_sessions.SESSION_COOKIE)])
    web_sessions.check_csrf(session, web_http.headers_of(app), fields.get("csrf"))
    return web_pages.redirect("/auth/signed-out", cookies=[web_sessions.end(session)])


@app.get("/auth/signed-out")
def signed_out() -> Response:
    return message_page(200, "Signed out", "You are signed out of PlayVault. Archiving goes on.", start_again=True)


@app.post("/auth/waitlist")
def join_waitlist() -> Response:
    web_sessions.check_same_origin(web_http.headers_of(app))  # no session to hold a CSRF token: Origin
    onboarding.join_waitlist(_waitlist_email())
    if _wants_json():
        return Response(
            status_code=200, content_type="application/json", body=json.dumps({"status": "listed"}), headers=NO_STORE
        )
    # Same answer whether the address was new or already listed: nothing to learn by probing.
    return message_page(200, "You're on the list", "You're on the list. We will write to you when a seat opens.")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
