"""WSGI routing for the Spotify emulator (accounts service + Web API + control API)."""

from __future__ import annotations

import base64
import binascii
import html
import json
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from werkzeug.wrappers import Request, Response

from .state import ApiError, EmulatorState, OAuthError

AUTHORIZE_PARAMS = ("client_id", "response_type", "redirect_uri", "state", "scope",
                    "code_challenge_method", "code_challenge")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _api_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": {"status": status, "message": message}}, status, headers)


def _oauth_error(err: OAuthError) -> Response:
    return _json({"error": err.error, "error_description": err.description}, err.status)


def _html(body: str, status: int = 200) -> Response:
    return Response(f"<!doctype html><html><head><meta charset='utf-8'><title>Spotify (emulator)</title>"
                    f"</head><body>{body}</body></html>", status=status, mimetype="text/html")


def _redirect(uri: str, params: dict[str, str]) -> Response:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    return Response("", status=302, headers={"Location": location})


def _parse_dt(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"datetime {value!r} must carry a timezone")
    return dt


_STATUS_MESSAGES = {
    400: "Bad request", 401: "Invalid access token", 403: "Forbidden", 404: "Not found",
    429: "API rate limit exceeded", 500: "Server error.", 502: "Bad gateway.", 503: "Service unavailable",
    504: "Gateway timeout",
}


class EmulatorApp:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except Exception as exc:  # noqa: BLE001 - an emulator bug must still answer
            response = _api_error(500, f"emulator error: {type(exc).__name__}: {exc}")
        return response(environ, start_response)

    # ------------------------------------------------------------------ routing
    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/_emulator/"):
            return self.control(request)
        endpoint = {"/authorize": "authorize", "/api/token": "token", "/v1/me": "me",
                    "/v1/me/player/recently-played": "recently_played"}.get(path)
        if endpoint:
            self.state.count(endpoint)
        is_api = path.startswith("/v1/")

        injected = self.state.take_injection(path)
        if injected is not None:
            if injected.delay_s:
                time.sleep(injected.delay_s)
            if injected.status is not None:
                return self._injected_response(injected, is_api)

        if is_api:
            remaining = self.state.rate_limit_remaining_s()
            if remaining is not None:
                if self.state.quota_exceeded:  # since July 2026 a quota 429 says so in its body
                    return _json({"error": {"status": 429, "message": "Quota exceeded"}, "reason": "QUOTA_EXCEEDED"},
                                 429, {"Retry-After": str(remaining)})
                return _api_error(429, "API rate limit exceeded", {"Retry-After": str(remaining)})
        if is_api or path == "/api/token":
            faulted = self._random_faults(is_api)
            if faulted is not None:
                return faulted

        if path == "/authorize":
            return self.authorize(request)
        if path == "/api/token":
            if request.method != "POST":
                return Response("Method not allowed", status=405, headers={"Allow": "POST"})
            return self.token(request)
        if is_api:
            if request.method != "GET":
                return _api_error(405, "Method not allowed")
            if path == "/v1/me":
                return self.with_user(request, self.me)
            if path == "/v1/me/player/recently-played":
                return self.with_user(request, self.recently_played)
            return _api_error(404, "Service not found")
        return Response("Not found", status=404, mimetype="text/plain")

    def _injected_response(self, inj: Any, is_api: bool) -> Response:
        status = int(inj.status)
        headers = {"Retry-After": str(inj.retry_after)} if inj.retry_after is not None else {}
        if inj.body is not None:
            body = inj.body if isinstance(inj.body, str) else json.dumps(inj.body)
            mimetype = "text/plain" if isinstance(inj.body, str) else "application/json"
            resp = Response(body, status=status, mimetype=mimetype)
            resp.headers.update(headers)
            return resp
        if is_api:
            return _api_error(status, _STATUS_MESSAGES.get(status, "Error"), headers)
        error = ("server_error" if status >= 500 else "temporarily_unavailable" if status == 429
                 else "invalid_grant" if status == 400 else "invalid_client" if status == 401 else "invalid_request")
        return _json({"error": error, "error_description": f"injected {status}"}, status, headers)

    def _random_faults(self, is_api: bool) -> Response | None:
        faults = self.state.faults
        if faults.latency_ms > 0:
            time.sleep(faults.latency_ms / 1000.0)
        if faults.timeout_rate > 0 and self.state.draw() < faults.timeout_rate:
            time.sleep(faults.timeout_s)  # then answer normally: the client should have given up
        if faults.error_5xx_rate > 0 and self.state.draw() < faults.error_5xx_rate:
            status = 502 if self.state.draw() < 0.3 else 503 if self.state.draw() < 0.5 else 500
            if is_api:
                return _api_error(status, _STATUS_MESSAGES[status])
            return _json({"error": "server_error", "error_description": "Server error"}, status)
        if is_api and faults.rate_429_rate > 0 and self.state.draw() < faults.rate_429_rate:
            return _api_error(429, "API rate limit exceeded", {"Retry-After": str(int(faults.retry_after_s))})
        return None

    # ------------------------------------------------------------------ accounts service
    def authorize(self, request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            return Response("Method not allowed", status=405)
        params = request.form if request.method == "POST" else request.args
        p = {k: params.get(k) for k in AUTHORIZE_PARAMS}
        try:
            self.state.validate_authorize(p["client_id"], p["redirect_uri"], p["response_type"],
                                          p["code_challenge_method"], p["code_challenge"])
        except ValueError as exc:
            return _html(f"<h1>Oops! Something went wrong</h1><p class='error'>{html.escape(str(exc))}</p>", 400)
        extra = {"state": p["state"]} if p["state"] is not None else {}
        redirect_uri = p["redirect_uri"] or ""

        if request.method == "POST":
            action = request.form.get("action", "")
            if action == "cancel":
                return _redirect(redirect_uri, {"error": "access_denied", **extra})
            if action != "agree":
                return _html("<h1>Oops!</h1><p class='error'>unknown action</p>", 400)
            user_id = (request.form.get("user_id") or "").strip()
            if not user_id:
                return _html("<h1>Oops!</h1><p class='error'>user id required</p>", 400)
            return self._consent(p, user_id, extra)

        if params.get("deny") in ("1", "true"):
            return _redirect(redirect_uri, {"error": "access_denied", **extra})
        login_as = params.get("login_as")
        if login_as:
            return self._consent(p, login_as, extra)

        hidden = "".join(
            f"<input type='hidden' name='{k}' value='{html.escape(v, quote=True)}'>"
            for k, v in p.items() if v is not None
        )
        new_id = "user" + secrets.token_hex(4)
        scope = html.escape(p["scope"] or "")
        return _html(
            "<h1>Spotify (emulator)</h1>"
            f"<p>The app <b>{html.escape(p['client_id'] or '')}</b> asks for access to your account "
            f"(scopes: <code>{scope}</code>).</p>"
            "<form method='post' action='/authorize'>"
            f"{hidden}"
            f"<label>User id <input type='text' name='user_id' id='user_id' value='{new_id}'></label>"
            "<button type='submit' name='action' value='agree' id='agree'>Agree</button>"
            "<button type='submit' name='action' value='cancel' id='cancel'>Cancel</button>"
            "</form>"
        )

    def _consent(self, p: dict, user_id: str, extra: dict) -> Response:
        code = self.state.issue_code(p["client_id"], p["redirect_uri"], p["scope"] or "",
                                     p["code_challenge"], user_id)
        return _redirect(p["redirect_uri"], {"code": code, **extra})

    def token(self, request: Request) -> Response:
        form = request.form
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
                client_id, _, client_secret = decoded.partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return _json({"error": "invalid_client", "error_description": "Invalid client"}, 401)
        if not client_id:
            return _json({"error": "invalid_client", "error_description": "Invalid client"}, 401)
        try:
            client = self.state.authenticate_client(client_id, client_secret)
            grant = form.get("grant_type")
            if grant == "authorization_code":
                body = self.state.exchange_code(client, form.get("code"), form.get("redirect_uri"),
                                                form.get("code_verifier"), client_secret is not None)
            elif grant == "refresh_token":
                body = self.state.refresh(client, form.get("refresh_token"))
            elif not grant:
                raise OAuthError(400, "invalid_request", "grant_type must be supplied")
            else:
                raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant} is not supported")
        except OAuthError as err:
            return _oauth_error(err)
        return _json(body)

    # ------------------------------------------------------------------ Web API
    def with_user(self, request: Request, handler: Any) -> Response:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return _api_error(401, "No token provided")
        if not auth.startswith("Bearer "):
            return _api_error(400, "Only valid bearer authentication supported")
        token = auth[7:].strip()
        try:
            user_id = self.state.check_access_token(token)
        except ApiError as err:
            return _api_error(err.status, err.message, err.headers)
        faults = self.state.faults
        if faults.expire_token_rate > 0 and self.state.draw() < faults.expire_token_rate:
            self.state.expire_access_token(token)
            return _api_error(401, "The access token expired")
        return handler(request, user_id)

    def me(self, request: Request, user_id: str) -> Response:
        return _json(self.state.user_profile(user_id))

    def recently_played(self, request: Request, user_id: str) -> Response:
        args = request.args
        try:
            limit = int(args.get("limit", "20"))
        except ValueError:
            return _api_error(400, "Invalid limit")
        if not 1 <= limit <= 50:
            return _api_error(400, "Invalid limit")
        after = before = None
        try:
            if "after" in args:
                after = int(args["after"])
            if "before" in args:
                before = int(args["before"])
        except ValueError:
            return _api_error(400, "Invalid cursor: after/before must be Unix milliseconds")
        if after is not None and before is not None:
            return _api_error(400, "Only one of after or before may be specified")
        if (after is not None and after < 0) or (before is not None and before < 0):
            return _api_error(400, "Invalid cursor")
        items, cursors, next_mode, next_value = self.state.recently_played(user_id, limit, after, before)
        base = request.host_url.rstrip("/") + request.path
        next_url = f"{base}?{urlencode({next_mode: next_value, 'limit': limit})}" if next_mode else None
        body = {
            "items": items,
            "next": next_url,
            # The schema types `cursors` as an object (not nullable) and lists only `next: null`
            # as a documented exception, so an empty page sends an empty cursor object.
            "cursors": cursors if cursors is not None else {},
            "limit": limit,
            "href": request.url,
        }
        return _json(body)

    # ------------------------------------------------------------------ control API
    def control(self, request: Request) -> Response:
        st = self.state
        path = request.path[len("/_emulator/"):]
        data = (request.get_json(silent=True) or {}) if request.method == "POST" else {}
        try:
            if path == "clients" and request.method == "POST":
                st.register_client(data["client_id"], data["client_secret"], list(data["redirect_uris"]))
                return _json({"ok": True})
            if path == "users" and request.method == "POST":
                st.add_user(data["user_id"], data.get("display_name"),
                            bool(data.get("rotate_refresh_tokens", False)))
                return _json({"ok": True})
            if path == "listen" and request.method == "POST":
                kwargs = {k: float(data[k]) for k in ("local_share", "whole_second_share") if k in data}
                count = st.simulate_listening(data["user_id"], _parse_dt(data["start"]), _parse_dt(data["end"]),
                                              float(data["plays_per_hour"]), **kwargs)
                return _json({"count": count})
            if path == "plays" and request.method == "POST":
                item = st.add_play(data["user_id"], _parse_dt(data["played_at"]), local=bool(data.get("local")),
                                   track_index=data.get("track_index"),
                                   whole_second=bool(data.get("whole_second")),
                                   visible_after_s=data.get("visible_after_s"), bad_kind=data.get("bad_kind"),
                                   episode=bool(data.get("episode")))
                return _json(item)
            if path == "listening" and request.method == "POST":
                st.listening.update(**data)
                return _json({"ok": True})
            if path.startswith("truth/") and request.method == "GET":
                return _json(st.ground_truth(path[len("truth/"):]))
            if path.startswith("exposed/") and request.method == "GET":
                return _json(sorted(st.exposed_play_ms(path[len("exposed/"):])))
            if path.startswith("revoke/") and request.method == "POST":
                st.revoke(path[len("revoke/"):])
                return _json({"ok": True})
            if path == "faults" and request.method == "POST":
                st.faults.update(**data)
                return _json({"ok": True})
            if path == "inject" and request.method == "POST":
                st.inject(data["path_prefix"], data.get("status"), int(data.get("times", 1)),
                          data.get("retry_after"), data.get("body"), data.get("delay_s"))
                return _json({"ok": True})
            if path == "rate-limit" and request.method == "POST":
                st.rate_limit_app(_parse_dt(data["until"]))
                st.quota_exceeded = bool(data.get("quota_exceeded", False))
                return _json({"ok": True})
            if path == "counts" and request.method == "GET":
                return _json(st.request_counts())
            if path == "counts/reset" and request.method == "POST":
                st.reset_counts()
                return _json({"ok": True})
            if path == "clock" and request.method == "GET":
                return _json({"now": st.now().isoformat()})
            if path == "clock/advance" and request.method == "POST":
                advance = getattr(st.clock, "advance", None)
                if advance is None:
                    return _json({"error": "clock cannot be advanced"}, 409)
                advance(float(data["seconds"]))
                return _json({"now": st.now().isoformat()})
        except KeyError as exc:
            return _json({"error": f"missing or unknown: {exc}"}, 400)
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"error": "not found"}, 404)
