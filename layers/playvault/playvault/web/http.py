"""The HttpApi's route table and the one mapping from errors to responses.

`API_ROUTES` lists every route of the HttpApi (template.yaml's HttpApi events; a unit test keeps
them equal). A request no route takes reaches the catch-all route (`ANY /{proxy+}`), whose
not-found handler answers 405 with `Allow` for a known path and a wrong method, 404 otherwise:
an HTML page, or JSON for clients that ask for it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from playvault.web.pages import NO_STORE, message_page

logger = Logger(child=True)

# path (template syntax) -> methods. Kept equal to template.yaml's HttpApi events by a unit test.
API_ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET",),
    "/auth/login": ("GET",),
    "/auth/callback": ("GET",),
    "/auth/waitlist": ("POST",),
    "/auth/logout": ("POST",),
    "/auth/signed-out": ("GET",),
    "/me": ("GET",),
    "/me/plays": ("GET",),
    "/me/exports": ("POST",),
    "/me/exports/{export_id}": ("GET",),
    "/me/exports/{export_id}/file": ("GET",),
    "/me/delete": ("GET", "POST"),
    "/me/top/{list_name}": ("GET",),
    "/me/history": ("GET",),
    "/me/track": ("GET",),
    "/me/artist": ("GET",),
    "/me/years/{year}": ("GET",),
    "/me/time-zone": ("GET", "POST"),
    "/deletions/{receipt}": ("GET",),
}
CATCH_ALL = "/{proxy+}"
MAX_BODY = 4096
MAX_QUERY = 4096

_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 413: "Too large",
           415: "Unsupported media type", 500: "Something went wrong", 502: "Spotify is unavailable", 503: "Busy"}


def _pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")


_PATTERNS = [(_pattern(path), methods) for path, methods in API_ROUTES.items()]


def allowed_methods(path: str) -> tuple[str, ...] | None:
    for pattern, methods in _PATTERNS:
        if pattern.match(path):
            return methods
    return None


class RequestRejected(Exception):
    """The request is unacceptable (size, media type, CSRF, parameters); nothing was done."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Forbidden(RequestRejected):
    def __init__(self, message: str = "This request did not come from a PlayVault page. Nothing was changed."):
        super().__init__(403, message)


def wants_json(app: APIGatewayHttpResolver) -> bool:
    headers = app.current_event.headers or {}
    content_type = (headers.get("content-type") or "").lower()
    accept = (headers.get("accept") or "").lower()
    return content_type.startswith("application/json") or ("application/json" in accept and "text/html" not in accept)


def error_response(app: APIGatewayHttpResolver, status: int, message: str,
                   headers: dict[str, str] | None = None, *, session_cookie: str | None = None) -> Response:
    """JSON or an HTML page. A page for a request carrying `session_cookie` links back to /me (a
    signed-in user is never asked to sign in), else to sign-in."""
    if wants_json(app):
        return Response(status_code=status, content_type="application/json", body=json.dumps({"error": message}),
                        headers={**NO_STORE, **(headers or {})})
    signed_in = session_cookie is not None and any(
        c.split("=", 1)[0].strip() == session_cookie for c in app.current_event.cookies or [])
    return message_page(status, _TITLES.get(status, "Error"), message, headers,
                        start_again=status in (400, 500, 502, 503) and not signed_in, home=signed_in)


def _parameter_problem(exc: RequestValidationError) -> str:
    """Which parameter, the value given, and what is wanted in words (a pattern's regular expression
    means nothing to a person)."""
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        name = location[-1] if location else "request"
        where = location[0] if location else ""
        kind = {"query": "query parameter", "path": "path parameter", "body": "body"}.get(where, "parameter")
        given = error.get("input")
        value = f" {str(given)[:80]!r}" if isinstance(given, str | int | float) else ""
        why = ("is not one of the values this page offers" if error.get("type") == "string_pattern_mismatch"
               else error.get("msg", "invalid"))
        problems.append(f"{kind} '{name}'{value}: {why}")
    return "Bad " + "; ".join(problems or ["request"]) + "."


def install_error_handlers(app: APIGatewayHttpResolver, *, session_cookie: str | None = None) -> None:
    """Register the mapping every HTTP function shares (404/405, validation 400, rejections, 500)."""

    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return error_response(app, status, message, headers, session_cookie=session_cookie)

    @app.exception_handler(RequestRejected)
    def _rejected(exc: RequestRejected) -> Response:
        return answer(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(exc: RequestValidationError) -> Response:
        return answer(400, _parameter_problem(exc))

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unexpected error")  # the message and trace go to the log, never to the visitor
        return answer(500, "Something went wrong on our side. Nothing was changed; please try again.")

    @app.not_found
    def _not_found(exc: NotFoundError) -> Response:
        path = app.current_event.path
        methods = allowed_methods(path)
        if methods is not None:
            allow = ", ".join(methods)
            return answer(405, f"{path} accepts {allow} only.", {"Allow": allow})
        return answer(404, "There is nothing here.")


def query(app: APIGatewayHttpResolver) -> dict[str, str]:
    event = app.current_event
    if len(event.raw_event.get("rawQueryString") or "") > MAX_QUERY:
        raise RequestRejected(400, "The query string is too long.")
    return dict(event.query_string_parameters or {})


def small_body(app: APIGatewayHttpResolver) -> tuple[str, str]:
    """The request's body (decoded, at most MAX_BODY) and its media type (lower case, no parameters)."""
    event = app.current_event
    raw = event.body or ""
    if len(raw) > MAX_BODY * 2:
        raise RequestRejected(413, "The request body is too large.")
    try:
        body = event.decoded_body or ""
    except (ValueError, UnicodeDecodeError):
        raise RequestRejected(400, "The request body could not be decoded.") from None
    if len(body) > MAX_BODY:
        raise RequestRejected(413, "The request body is too large.")
    content_type = ((event.headers or {}).get("content-type") or "").split(";")[0].strip().lower()
    return body, content_type


def form(app: APIGatewayHttpResolver, fields: tuple[str, ...]) -> dict[str, str]:
    """A small urlencoded form: each named field at most once; anything else is a 400/413/415."""
    body, content_type = small_body(app)
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise RequestRejected(415, "Send the form (application/x-www-form-urlencoded).")
    try:
        parsed = parse_qs(body, keep_blank_values=True, max_num_fields=10)
    except ValueError:
        raise RequestRejected(400, "The form has too many fields.") from None
    values: dict[str, str] = {}
    for name in fields:
        got = parsed.get(name) or []
        if len(got) > 1:
            raise RequestRejected(400, f"The form has more than one {name} field.")
        if got:
            values[name] = got[0]
    return values


def headers_of(app: APIGatewayHttpResolver) -> dict[str, Any]:
    return dict(app.current_event.headers or {})
