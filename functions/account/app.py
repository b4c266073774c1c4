"""HttpApi (payload 2.0) routes of a signed-in user's account -> playvault.history / export / deletion.

GET  /                              303 to /me when signed in, else the landing page (what is kept, sign in)
GET  /me                            the user's page (status, polls, gaps, and the figures of a period:
                                    ?period=week|month|year|YYYY|all or ?from=&to=, in the user's time zone)
GET  /me/top/{list}                 a top list of a period (tracks, artists, albums, shows), 50 long
GET  /me/history                    every play, newest first, paged: ?before=<cursor>
GET  /me/track?key=, /me/artist?key=  a track's or an artist's page (the key: a Spotify id or "n:" + names)
GET  /me/years/{year}               the year in review (the session's user only, like every /me page)
GET  /me/time-zone                  the time zone form;  POST: set it (CSRF), the figures are recomputed
GET  /me/plays                      JSON, paginated: ?from=&to=&cursor=&limit= (validated by Powertools)
POST /me/exports                    a full export (format=csv|jsonl|listenbrainz|spotify): a job; 303 to its status page
GET  /me/exports/{export_id}        the export's progress; a download link when done
GET  /me/exports/{export_id}/file   303 to a short-lived presigned URL of the file
GET  /me/delete                     confirmation page;  POST: start the deletion job, 303 to its receipt
GET  /deletions/{receipt}           what was deleted (counts), and whether it is done
ANY  /{proxy+}                      every other request: 404 (405 for a known path with a wrong method)

The user id comes from the session cookie and nowhere else; state-changing routes check CSRF.
Routes that answer a Response carry no return annotation: with validation on, Powertools would try
to build a response model from it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, available_timezones

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.logging import correlation_paths
from botocore.config import Config

from playvault import clock, coverage, history, imports, rollups, stats, store
from playvault.aws import LazyClient
from playvault.config import AccountSettings
from playvault.deletion import Deleter
from playvault.export import Exporter
from playvault.failures import CredentialsUnavailable
from playvault.jobs import JobQueue
from playvault.metrics import metrics
from playvault.spotify import ssm_credentials
from playvault.store import deletions, exports, plays, users
from playvault.store import imports as imports_store
from playvault.web import account_pages, stats_pages
from playvault.web import http as web
from playvault.web import sessions as web_sessions
from playvault.web.pages import NO_STORE, csp, page, redirect
from playvault.web.stats_charts import STYLE as CHART_STYLE

settings = AccountSettings.from_env()
store.bind(settings)
logger = Logger()
s3 = LazyClient("s3", config=Config(signature_version="s3v4"))
queue = JobQueue(LazyClient("sqs"), settings.jobs_queue_url)
exporter = Exporter(s3, settings.user_files_bucket, queue)
deleter = Deleter(s3, settings.user_files_bucket, queue, settings.deletion_grace_seconds)  # requests only
# Upload ids carry a MAC keyed from the Spotify client secret (playvault.imports.upload_id_key).
credentials = ssm_credentials(settings.spotify_client_id_param, settings.spotify_client_secret_param)
app = APIGatewayHttpResolver(enable_validation=True)
web.install_error_handlers(app, session_cookie=web_sessions.SESSION_COOKIE)

IDLE = timedelta(days=settings.session_idle_days)
MAX_LIMIT = 500
HISTORY_PAGE = 50
_PLAYED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_EXPORT_ID = re.compile(r"[0-9TZ]{16}-[0-9a-f]{8}")
_RECEIPT = re.compile(r"[A-Za-z0-9_-]{32}")
EPOCH = "0000-01-01T00:00:00.000Z"
END = "9999-12-31T23:59:59.999Z"


class SignedOut(Exception):
    """No live session: pages go to sign-in, the JSON API answers 401."""


@app.exception_handler(SignedOut)
def signed_out(exc: SignedOut) -> Response:
    if web.wants_json(app) or app.current_event.path == "/me/plays":
        return Response(status_code=401, content_type="application/json", headers=NO_STORE,
                        body=json.dumps({"error": "Sign in first: no valid session."}),
                        cookies=[web_sessions.cleared(web_sessions.SESSION_COOKIE)])
    return redirect("/auth/login", cookies=[web_sessions.cleared(web_sessions.SESSION_COOKIE)])


def _current() -> web_sessions.Session | None:
    session = web_sessions.current(app.current_event.cookies, clock.now(), IDLE)
    app.append_context(session=session)  # renew_session_cookie re-issues the cookie if its expiry moved
    return session


def _session() -> web_sessions.Session:
    session = _current()
    if session is None:
        raise SignedOut()
    return session


def renew_session_cookie(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    """Every answer of a request that moved the session's idle expiry carries the cookie's new Max-Age."""
    response = next_middleware(app)
    response.cookies = web_sessions.with_renewal(list(response.cookies or []), app.context.get("session"))
    return response


app.use(middlewares=[renew_session_cookie])


def _user(session: web_sessions.Session) -> users.UserModel:
    user = users.get(session.user_id)
    if user is None:  # deleted: the session is worth nothing
        raise SignedOut()
    return user


def _csrf(session: web_sessions.Session, submitted: str | None) -> None:
    web_sessions.check_csrf(session, web.headers_of(app), submitted)


# -- routes -----------------------------------------------------------------------------------------
@app.get("/")
def root():
    if _current() is not None:
        return redirect("/me")
    return page(200, "PlayVault", "PlayVault: every play you make on Spotify, kept", account_pages.landing())


# A period in the URL: validated by playvault.rollups.resolve_period, whose message names the bad value.
PeriodParam = Annotated[str | None, Query(max_length=40, description="week, month, year, YYYY or all")]
DateParam = Annotated[str | None, Query(max_length=40, description="YYYY-MM-DD, inclusive")]
FromParam = Annotated[str | None, Query(alias="from", max_length=40, description="YYYY-MM-DD, inclusive")]


def _tz(user: users.UserModel) -> str:
    return getattr(user, "time_zone", None) or rollups.DEFAULT_TZ


def _resolve(spec: str | None, from_: str | None, to: str | None, tz: str, now: datetime) -> stats.Period:
    try:
        return rollups.resolve_period(spec, from_, to, tz, now.astimezone(ZoneInfo(tz)).date())
    except rollups.BadPeriod as exc:
        raise web.RequestRejected(400, f"Bad period: {exc}.") from None


def _figures(user: users.UserModel, spec: str | None, from_: str | None, to: str | None,
             now: datetime) -> tuple[stats.Figures | None, str]:
    """(the figures of the period asked for, None while the rollups are rebuilt; its HTML)."""
    state = rollups.rebuild_state(user, now)
    period = _resolve(spec, from_, to, state.tz, now)  # a bad period is a 400 even while rebuilding
    if not state.rebuilding:
        try:
            figures = rollups.figures(user, period, now)
        except rollups.Recomputing:  # a time zone change began since rebuild_state
            pass
        else:
            today = now.astimezone(ZoneInfo(period.tz)).date()
            return figures, stats_pages.figures_section(figures, _years(figures), today)
    state = rollups.rebuild_state(user, now)
    return None, stats_pages.rebuilding(state.tz, state.percent) + stats_pages.time_zone_line(_tz(user))


def _years(figures: stats.Figures) -> list[int]:
    """The years of the archive, from its first play to its last (no extra read)."""
    if figures.first_play is None or figures.last_play is None:
        return []
    return list(range(figures.first_play.year, figures.last_play.year + 1))


@app.get("/me")
def me(period: PeriodParam = None,
       from_: FromParam = None,
       to: DateParam = None,
       welcome: Annotated[str | None, Query(pattern="^(new|back)$")] = None,
       uploaded: Annotated[str | None, Query(pattern="^1$")] = None,
       key: Annotated[str | None, Query(max_length=1024)] = None):
    session = _session()
    user = _user(session)
    if user.status == users.DELETING:
        return page(200, "Being deleted", "Your data is being deleted",
                    "<p id=\"deletion-status\">Your data is being deleted. Nothing more is archived for you.</p>")
    now = clock.now()
    figures, figures_html = _figures(user, period, from_, to, now)
    view = history.overview(user, figures.archive_plays if figures is not None else None)
    try:
        upload_key = imports.upload_id_key(credentials().client_secret)
    except CredentialsUnavailable:  # SSM throttled or unreachable: the page still works, uploading waits a reload
        logger.warning("upload form left out: the Spotify client secret could not be read")
        upload = None
    else:
        upload = imports.presigned_upload(s3, settings.user_files_bucket, user.user_id, now, upload_key=upload_key,
                                          redirect_to=_page_url("/me?uploaded=1"))
    jobs = imports.status_for_user(user.user_id, now)
    # S3 sends the browser back here after an upload (with bucket, key and etag): name the user's own
    # file once its import job has it (the key itself never carries the name).
    received = imports.upload_notice(user.user_id, key, jobs) if uploaded else None
    imports_html = account_pages.imports_section(upload, jobs,
                                                 coverage.render(coverage.timeline(user.user_id, now)),
                                                 received=received)
    content = account_pages.me(view, session.csrf_token, list(exports.for_user(user.user_id, 5)), welcome,
                               imports_html, account_pages.next_poll(user, now, settings.dispatch_period_minutes),
                               figures_html=figures_html)
    bucket_origin = " " + "/".join(upload["url"].split("/")[:3]) if upload else ""  # the form posts straight to S3
    return page(200, "My archive", f"My archive{', ' + user.display_name if user.display_name else ''}", content,
                {"Content-Security-Policy": csp(f"'self'{bucket_origin}")}, wide=True, style=CHART_STYLE)


@app.get("/me/top/<list_name>")
def top_list(list_name: str, period: PeriodParam = None, from_: FromParam = None,
             to: DateParam = None):
    session = _session()
    user = _user(session)
    if list_name not in stats_pages.LISTS:
        raise web.RequestRejected(404, f"There is no list {list_name!r}: choose tracks, artists, albums or shows.")
    figures, html = _figures(user, period, from_, to, clock.now())
    heading = f"Top {stats_pages.LISTS[list_name][0].lower()}"
    if figures is not None:
        html = stats_pages.top_page(figures, list_name)
    return page(200, heading, heading, html, wide=True, style=CHART_STYLE)


def _history_rows(rows: list[plays.PlayModel]) -> list[stats_pages.HistoryRow]:
    out = []
    for play, row in zip(rows, history.Catalog().rows(rows), strict=True):
        played_at = clock.from_ms(int(play.played_at_ms))
        if row.item_type == "episode":
            out.append(stats_pages.HistoryRow(played_at, row.episode_name or "(episode)", None,
                                              ((row.show_name, None),) if row.show_name else (), None, row.source))
            continue
        first_artist = row.artist_names[0] if row.artist_names else None
        track_key = row.track_id or (rollups.name_key(row.track_name, first_artist) if row.track_name else None)
        artists = tuple((name, stats_pages.artist_url(artist_id or rollups.name_key(name)) if artist_id or name
                         else None) for artist_id, name in zip(row.artist_ids, row.artist_names, strict=True))
        out.append(stats_pages.HistoryRow(played_at, row.track_name or "(unnamed)",
                                          stats_pages.track_url(track_key) if track_key else None, artists,
                                          row.album_name, row.source))
    return out


@app.get("/me/history")
def play_history(before: Annotated[str | None, Query(max_length=64, description="the older link's cursor")] = None):
    after = _decode_cursor(before, "before")
    session = _session()
    user = _user(session)
    rows = plays.newest_first(user.user_id, HISTORY_PAGE + 1, after)
    older = (f"/me/history?{urlencode({'before': _encode_cursor(rows[HISTORY_PAGE - 1].played_at)})}"
             if len(rows) > HISTORY_PAGE else None)
    html = stats_pages.history_page(_history_rows(rows[:HISTORY_PAGE]), _tz(user), older, first_page=before is None)
    return page(200, "History", "Every play", html, wide=True)


ItemKey = Annotated[str, Query(min_length=1, max_length=1024, description="a Spotify id, or n: and the names")]


@app.get("/me/track")
def track(key: ItemKey):
    return _item(rollups.track_page, "track", key)


@app.get("/me/artist")
def artist(key: ItemKey):
    return _item(rollups.artist_page, "artist", key)


def _item(read: Any, kind: str, key: str):
    session = _session()
    user = _user(session)
    now = clock.now()
    state = rollups.rebuild_state(user, now)
    if state.rebuilding:
        return page(200, kind.capitalize(), kind.capitalize(), stats_pages.rebuilding(state.tz, state.percent))
    try:
        item = read(user, key, now)
    except rollups.Recomputing:
        return page(200, kind.capitalize(), kind.capitalize(), stats_pages.rebuilding(state.tz, state.percent))
    if item is None:
        raise web.RequestRejected(404, f"There is no {kind} {key!r} in your archive.")
    return page(200, item.name or kind, item.name or f"({kind})", stats_pages.item_page(item), wide=True,
                style=CHART_STYLE)


@app.get("/me/years/<year>")
def year_review(year: Annotated[int, Path(ge=1, le=9999)]):
    session = _session()
    user = _user(session)
    now = clock.now()
    state = rollups.rebuild_state(user, now)
    if state.rebuilding:
        return page(200, str(year), f"{year} in review", stats_pages.rebuilding(state.tz, state.percent))
    try:
        review = rollups.year_review(user, year, now)
    except rollups.Recomputing:
        return page(200, str(year), f"{year} in review", stats_pages.rebuilding(state.tz, state.percent))
    if review.figures.totals.plays == 0:
        raise web.RequestRejected(404, f"Your archive holds no play in {year}.")
    return page(200, f"{year} in review", f"Your {year} in review",
                stats_pages.year_page(review, _years(review.figures)), wide=True, style=CHART_STYLE)


@app.get("/me/time-zone")
def time_zone_form():
    session = _session()
    user = _user(session)
    return page(200, "Time zone", "Time zone",
                stats_pages.time_zone_form(account_pages.csrf_field(session.csrf_token), _tz(user),
                                           sorted(available_timezones() | {"UTC"})))


@app.post("/me/time-zone")
def change_time_zone():
    fields = web.form(app, ("csrf", "zone"))
    session = _session()
    _csrf(session, fields.get("csrf"))
    user = _user(session)
    try:
        rollups.change_time_zone(user.user_id, fields.get("zone") or "", queue)
    except rollups.BadTimeZone as exc:
        raise web.RequestRejected(400, f"Bad time zone: {exc}. Nothing was changed.") from None
    return redirect("/me")


def _page_url(path: str) -> str:
    """This API's own URL for `path` (where S3 sends the browser back after an upload)."""
    headers = web.headers_of(app)
    scheme = headers.get("x-forwarded-proto", "https")
    return f"{scheme}://{headers.get('host', 'localhost')}{path}"


def _decode_cursor(cursor: str | None, name: str = "cursor") -> str | None:
    if cursor is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        decoded = ""
    if not _PLAYED_AT.fullmatch(decoded):
        link = "the next_cursor of the previous page" if name == "cursor" else "the link of the previous page"
        raise web.RequestRejected(400, f"Bad query parameter '{name}': use {link}.")
    return decoded


def _encode_cursor(played_at: str) -> str:
    return base64.urlsafe_b64encode(played_at.encode()).decode().rstrip("=")


@app.get("/me/plays")
def my_plays(
    from_: Annotated[datetime | None, Query(alias="from", description="ISO 8601; plays at or after")] = None,
    to: Annotated[datetime | None, Query(description="ISO 8601; plays at or before")] = None,
    cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise web.RequestRejected(400, f"Bad query parameter '{name}': give a time zone (e.g. Z).")
    start = history.iso_ms(from_) if from_ else EPOCH
    end = history.iso_ms(to) if to else END
    if start > end:
        raise web.RequestRejected(400, "Bad query parameters 'from' and 'to': 'from' is after 'to'.")
    after = _decode_cursor(cursor)
    session = _session()
    _user(session)
    rows = plays.page(session.user_id, start, end, limit, after)
    out = [r.as_dict() for r in history.Catalog().rows(rows)]
    next_cursor = _encode_cursor(rows[-1].played_at) if len(rows) == limit else None
    return {"plays": out, "next_cursor": next_cursor}


@app.post("/me/exports")
def start_export():
    fields = web.form(app, ("csrf", "format"))
    session = _session()
    _csrf(session, fields.get("csrf"))
    fmt = fields.get("format")
    if fmt not in exports.FORMATS:
        raise web.RequestRejected(400, f"Bad form field 'format': choose one of {', '.join(exports.FORMATS)}.")
    user = _user(session)
    if user.status == users.DELETING:
        raise web.RequestRejected(400, "Your data is being deleted: there is nothing left to export.")
    job = exporter.start(user.user_id, fmt)
    return redirect(f"/me/exports/{job.export_id}")


def _export(session: web_sessions.Session, export_id: str) -> exports.ExportModel:
    job = exports.get(session.user_id, export_id) if _EXPORT_ID.fullmatch(export_id) else None
    if job is None:  # another user's export id looks exactly like a missing one
        raise web.RequestRejected(404, "There is no such export.")
    return job


@app.get("/me/exports/<export_id>")
def export_status(export_id: str):
    job = _export(_session(), export_id)
    content, running = account_pages.export_status(job)
    refresh = '<meta http-equiv="refresh" content="2">' if running else ""
    return page(200, "Export", "Your export", refresh + content)


@app.get("/me/exports/<export_id>/file")
def export_file(export_id: str):
    job = _export(_session(), export_id)
    if job.status != exports.DONE:
        raise web.RequestRejected(409, "This export is not ready yet.")
    return redirect(exporter.download_url(job))


@app.get("/me/delete")
def confirm_delete():
    session = _session()
    user = _user(session)
    return page(200, "Delete my data", "Delete my data",
                account_pages.delete_confirm(session.csrf_token, plays.count(user.user_id)))


@app.post("/me/delete")
def delete_my_data():
    fields = web.form(app, ("csrf",))
    session = _session()
    _csrf(session, fields.get("csrf"))
    receipt = deleter.request(session.user_id)
    if receipt is None:
        raise SignedOut()
    # This browser is signed out at once; the job ends every other session of the user.
    return redirect(f"/deletions/{receipt}", cookies=[web_sessions.end(session)])


@app.get("/deletions/<receipt>")
def deletion_status(receipt: str):
    found = deletions.get(deletions.receipt_key(receipt)) if _RECEIPT.fullmatch(receipt) else None
    if found is None:
        raise web.RequestRejected(404, "There is no such deletion (receipts are kept for 7 days).")
    now = clock.now()
    # Why it waits: the grace time after the request, then any import of the user still holding its lease.
    lease = (imports_store.lease_held_until(found.user_id, now)
             if found.status == deletions.RUNNING and found.user_id else None)
    content, running = account_pages.deletion_status(found, now, settings.deletion_grace_seconds, lease)
    refresh = '<meta http-equiv="refresh" content="3">' if running else ""
    return page(200, "Deleting your data", "Delete my data", refresh + content)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)


