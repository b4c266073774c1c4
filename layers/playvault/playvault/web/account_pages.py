"""The account pages (HTML): /me, export status, delete confirmation, deletion status."""

from __future__ import annotations

from datetime import datetime, timedelta

from playvault import history
from playvault.imports import MAX_UPLOAD_BYTES
from playvault.imports.formats import Skip
from playvault.store import deletions, exports, users
from playvault.store import imports as imports_store
from playvault.store.exports import ExportModel
from playvault.web.pages import esc

STATUS_TEXT = {
    users.ACTIVE: ("Archiving", "PlayVault archives every play you make on Spotify."),
    users.NEEDS_REAUTH: ("Needs reconnect", "Spotify no longer lets PlayVault read your plays. Reconnect to resume."),
    users.LAPSED: ("Waiting for a seat", "Your Spotify authorization ended and your seat was given back. "
                   "Reconnect to take a seat again (when one is free) and resume archiving."),
    users.DELETING: ("Being deleted", "Your data is being deleted."),
}


def _when(moment: datetime | str | None) -> str:
    if moment is None:
        return '<span class="muted">never</span>'
    text = moment if isinstance(moment, str) else moment.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(moment, str):
        text = text.replace("T", " ")[:16] + " UTC"
    return esc(text)


def landing() -> str:
    """The page a signed-out visitor meets at /: what PlayVault keeps, and the way in."""
    return """<p class="lead">Spotify remembers only your last 50 plays. PlayVault keeps every play you make,
for as long as you want it, and shows you your listening.</p>
<p><a class="button" id="sign-in" href="/auth/login">Sign in with Spotify</a></p>
<h2>What PlayVault keeps</h2>
<ul id="what-is-kept">
<li>Every play: the track (or podcast episode), its artists and album, and when you played it. PlayVault
asks Spotify for your recent plays about every hour, more often while you listen a lot.</li>
<li>The years before you signed up, from Spotify's data export, if you import it.</li>
<li>Your Spotify user id, your display name and your e-mail address (sealed, only to remind you before
Spotify's six-month authorization ends), and the authorization itself (encrypted).</li>
</ul>
<h2>What you can do with it</h2>
<ul>
<li>See your plays per day, your top artists and tracks, and which periods your archive covers.</li>
<li>Export everything, any time, as CSV or JSON Lines.</li>
<li>Delete everything: your plays, imports, exports and the authorization, in one step.</li>
</ul>
<p class="muted">PlayVault reads only your recently played tracks and your e-mail address from Spotify.
It never plays, changes or shares anything.</p>"""


def next_poll(user: users.UserModel, now: datetime, dispatch_period_minutes: int) -> str:
    """When PlayVault next asks Spotify for the user's plays: the user's due time, or (not due yet
    known, or overdue) the dispatcher's next run, which comes within its period."""
    if user.status != users.ACTIVE:
        return '<span class="muted">not polled until you reconnect Spotify</span>'
    due = getattr(user, "next_poll_at", None)
    cooldown = getattr(user, "cooldown_until", None)
    if cooldown is not None and cooldown > now and (due is None or due < cooldown):  # the dispatcher skips it
        return f"about {_when(cooldown)} (polls pause after failed ones)"
    if due is None or due <= now:
        return f"within {dispatch_period_minutes} minutes (the next scheduled run)"
    return f"about {_when(due)}"


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(token)}">'


# An import job's state and a skipped row's reason, as the page says them (keys: store/imports.py's
# states, imports/formats.Skip).
IMPORT_STATES = {
    imports_store.QUEUED: "Waiting to start",
    imports_store.RUNNING: "Importing",
    imports_store.PAUSED: "Paused: Spotify asked to wait; resumes by itself",
    imports_store.DONE: "Done",
    imports_store.FAILED: "Stopped",
}
SKIP_WORDS = {
    Skip.TOO_SHORT: "too short to count as a play",
    Skip.INCOGNITO: "in a private session",
    Skip.NOT_AN_OBJECT: "not a stream record",
    Skip.MISSING_TIME: "without a time",
    Skip.BAD_TIME: "with an unreadable time",
    Skip.IMPLAUSIBLE_TIME: "with a time before Spotify existed or in the future",
    Skip.BAD_MS_PLAYED: "with an unreadable listening time",
    Skip.BAD_URI: "with an unreadable Spotify link",
    Skip.MISSING_NAME: "without a track or episode name",
    Skip.NO_ITEM: "neither a track nor an episode",
    Skip.AUDIOBOOK: "audiobook chapters (not imported)",
    Skip.OTHER_ACCOUNT: "from another Spotify account",
}


def _import_state(job: dict) -> str:
    state = job["state"]
    words = IMPORT_STATES.get(state, state)
    if state == imports_store.RUNNING and job.get("phase") == imports_store.PHASE_RESOLVE:
        words = "Looking up tracks at Spotify"
    if state in (imports_store.RUNNING, imports_store.PAUSED):
        words += f", {int(100 * (job.get('progress') or 0))} %"
        if job.get("eta_s"):
            words += f", about {int(job['eta_s'] // 60) + 1} min left"
    return words


def _skipped(job: dict) -> str:
    counts = sorted((job.get("skipped") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{int(n)} {SKIP_WORDS.get(reason, reason.replace('_', ' '))}" for reason, n in counts) or "none"


def imports_section(upload: dict | None, jobs: list[dict], coverage_svg: str, received: str | None = None,
                    max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """Import Spotify's data export: the upload form (a presigned POST straight to S3: no file passes
    through the API; None when it could not be signed just now), the import jobs with their progress,
    and the coverage timeline. `received`: the browser is back from an upload ("" when the file's name
    is unknown)."""
    if upload is None:
        form = ('<p id="import-unavailable" class="danger">Uploading is unavailable for a moment: reload this '
                "page to upload.</p>")
    else:
        hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(str(v))}">'
                         for k, v in upload["fields"].items())
        form = (f'<form id="import-form" method="post" action="{esc(upload["url"])}" '
                f'enctype="multipart/form-data">{hidden}\n<label for="import-file">Your Spotify data export (the ZIP, '
                'or one of its JSON files)</label><input type="file" name="file" id="import-file" '
                'accept=".zip,.json,application/zip,application/json" required>\n'
                '<button type="submit" id="import-upload">Upload</button></form>')
        max_bytes = upload["max_bytes"]
    rows = []
    columns = ("File", "State", "Rows read", "Plays added", "Already archived", "Skipped", "Tracks to look up")
    for job in jobs[:5]:
        error = job.get("error") or {}
        problem = (f' <span class="danger">{esc(str(error.get("message", "")))}'
                   f'{" (" + esc(str(error.get("file"))) + ")" if error.get("file") else ""}</span>' if error else "")
        counts = [str(int(job.get(name) or 0)) for name in ("rows_read", "plays_added", "duplicates")]
        cells = (esc(job.get("file_name") or ""), esc(_import_state(job)) + problem, *counts, esc(_skipped(job)),
                 str(int(job.get("tracks_to_resolve") or 0)))
        classes = (' class="file"', ' class="import-state"', "", ' class="import-added"', "", "", "")
        # data-label: on a narrow screen each row is a card of "label: value" lines (page.html's CSS).
        rows.append(f'<tr class="import" data-state="{esc(job["state"])}">'
                    + "".join(f'<td{cls} data-label="{label}">{cell}</td>'
                              for label, cls, cell in zip(columns, classes, cells, strict=True)) + "</tr>")
    table = ('<table id="imports" class="cards"><thead><tr>' + "".join(f'<th scope="col">{c}</th>' for c in columns)
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
             if rows else '<p id="imports" class="muted">No import yet.</p>')
    notice = ""
    if received is not None:
        named = f"{esc(received)} is uploaded" if received else "Your file is uploaded"
        notice = (f'<p id="upload-received">{named}: the import starts within a minute; reload this page to '
                  "follow it below.</p>")
    return f"""<h2>Import your Spotify data export</h2>
{notice}
<p class="muted">Spotify's privacy page sends every stream since the account was created ("Extended
streaming history", a ZIP). Upload it as it came (or its JSON files one by one, up to
{max_bytes // (1024 * 1024)} MB each): plays already archived are not added twice. Reload this
page to follow the import.</p>
{form}
{table}
<h3>Coverage</h3>
<p class="muted">Which periods your archive covers: by polling, by import, or by neither (gaps).</p>
<div id="coverage">{coverage_svg}</div>"""


def me(view: history.Overview, csrf: str, recent_exports: list[ExportModel], welcome: str | None,
       imports_html: str = "", next_poll_html: str = "", figures_html: str = "") -> str:
    """`figures_html`: the figures of the period shown (web.stats_pages.figures_section)."""
    user = view.user
    label, explanation = STATUS_TEXT.get(user.status, (user.status, ""))
    reconnect = ('<form class="inline" method="get" action="/auth/login"><input type="hidden" name="reconnect" '
                 'value="1"><button type="submit" id="reconnect">Reconnect Spotify</button></form>'
                 if user.status in (users.NEEDS_REAUTH, users.LAPSED) else "")
    greeting = ""
    if welcome == "new":
        greeting = "<p id=\"welcome\">You're in! PlayVault now archives every song you play on Spotify.</p>"
    elif welcome == "back":
        greeting = '<p id="welcome">Welcome back! Your Spotify account is reconnected.</p>'
    gap_rows = "".join(
        f"<tr><td>{_when(g.from_at)}</td><td>{_when(g.to_at)}</td>"
        f"<td>{'unknown' if g.plays_lost is None else int(g.plays_lost)}</td></tr>" for g in view.gaps)
    gaps_html = (f'<table id="gaps"><tr><th>from</th><th>to</th><th>plays lost</th></tr>{gap_rows}</table>'
                 if view.gaps else '<p id="gaps" class="muted">No gaps: every play was archived.</p>')
    export_rows = "".join(
        f'<li><a href="/me/exports/{esc(e.export_id)}">{esc(exports.LABELS.get(e.format, e.format))} export of '
        f"{_when(e.created_at)}</a> ({esc(e.status)})</li>" for e in recent_exports)
    return f"""{greeting}
<nav><a href="/me">My archive</a><a href="/me/plays">JSON</a>
<form class="inline" method="post" action="/auth/logout">{csrf_field(csrf)}
<button type="submit" id="sign-out">Sign out</button></form></nav>
<table id="summary">
<tr><th>Status</th><td><span class="status" id="status">{esc(label)}</span> {esc(explanation)} {reconnect}</td></tr>
<tr><th>Last poll</th><td id="last-poll">{_when(user.last_polled_at)}</td></tr>
<tr><th>Next poll</th><td id="next-poll">{next_poll_html}</td></tr>
<tr><th>Plays archived</th><td id="plays-total">{view.plays_total}</td></tr>
<tr><th>First play</th><td id="first-play">{_when(view.first_play)}</td></tr>
<tr><th>Last play</th><td id="last-play">{_when(view.last_play)}</td></tr>
</table>
{figures_html}
<h2>Gaps</h2>
<p class="muted">Spotify remembers only your last 50 plays: when more happen between two polls, the oldest are lost.</p>
{gaps_html}
<h2>Your data</h2>
<form method="post" action="/me/exports">{csrf_field(csrf)}
<button type="submit" name="format" value="csv" id="export-csv">Export everything as CSV</button>
<button type="submit" name="format" value="jsonl" id="export-jsonl">Export everything as JSON Lines</button>
<button type="submit" name="format" value="listenbrainz" id="export-listenbrainz">Export for ListenBrainz</button>
<button type="submit" name="format" value="spotify" id="export-spotify">Export as Spotify streaming history</button>
</form>
{f'<ul id="exports">{export_rows}</ul>' if export_rows else ""}
{imports_html}
<p><a href="/me/delete" id="delete-link" class="danger">Delete my data</a></p>"""


def export_status(job: ExportModel) -> tuple[str, bool]:
    """(content, still running)."""
    if job.status == exports.DONE:
        return (f'<p id="export-status">Ready: {int(job.rows)} plays, {int(job.size_bytes):,} bytes.</p>'
                f'<p><a id="download" href="/me/exports/{esc(job.export_id)}/file">Download '
                f"{esc(exports.LABELS.get(job.format, job.format))}</a></p>"
                '<p class="muted">The file is kept for one day. <a href="/me">Back</a></p>', False)
    if job.status == exports.FAILED:
        return '<p id="export-status">This export stopped. <a href="/me">Back</a></p>', False
    done, total = int(job.rows), job.total
    progress = f"{done} of {int(total)} plays" if total is not None else "starting"
    return (f'<p id="export-status">Exporting: {esc(progress)}. This page refreshes by itself.</p>'
            f'<progress max="{int(total or 1)}" value="{done}" aria-label="Export progress"></progress>', True)


def delete_confirm(csrf: str, plays_total: int) -> str:
    return f"""<p>This deletes everything PlayVault keeps for you: your {plays_total} archived plays, the
detected gaps, your exports, your imports (their files and their records) and your sessions, and the
Spotify authorization (tokens). Your seat is freed. Signing in waits until it is done. It cannot be undone.</p>
<p class="muted">Point-in-time backups of the tables keep deleted data for up to 35 days, then it is gone.</p>
<form method="post" action="/me/delete">{csrf_field(csrf)}
<button type="submit" id="confirm-delete" class="danger">Delete my data</button> <a href="/me">Cancel</a></form>"""


def _waiting(deletion: deletions.Deletion, now: datetime, grace_s: int, import_lease_until: datetime | None) -> str:
    """Why a running deletion has not deleted yet (deletion.py: the grace time, then live import leases)."""
    grace_ends = deletion.created_at + timedelta(seconds=grace_s) if deletion.created_at else None
    if grace_ends is not None and now < grace_ends:
        minutes = max(1, -(-int((grace_ends - now).total_seconds()) // 60))
        return (f'<p id="deletion-wait">Waiting until {esc(grace_ends.strftime("%H:%M:%S"))} UTC (about {minutes} '
                f"minute{'s' if minutes > 1 else ''}): a poll of your Spotify plays that started just before you "
                "asked may still be writing. PlayVault deletes after it, so nothing it writes is left behind.</p>")
    if import_lease_until is not None and now < import_lease_until:
        return (f'<p id="deletion-wait">Waiting for your import to stop (by '
                f'{esc(import_lease_until.strftime("%H:%M:%S"))} UTC): it may be writing plays right now. Nothing '
                "more is imported for you; PlayVault deletes once it has stopped.</p>")
    return '<p id="deletion-wait">Deleting now.</p>'


def deletion_status(deletion: deletions.Deletion, now: datetime | None = None, grace_s: int = 0,
                    import_lease_until: datetime | None = None) -> tuple[str, bool]:
    counts = deletion.counts
    listing = (f'<ul id="deleted"><li><span id="deleted-plays">{counts["plays"]}</span> plays</li>'
               f'<li>{counts["gaps"]} gaps</li><li>{counts["sessions"]} sessions</li>'
               f'<li>{counts["exports"]} exports, {counts["imports"]} imports and {counts["files"]} files</li></ul>')
    backups = ('<p class="muted">Point-in-time backups of the tables keep deleted data for up to 35 days, '
               "then it is gone for good.</p>")
    if deletion.status == deletions.DONE:
        return (f'<p id="deletion-status">Done: your data is deleted, your Spotify authorization is removed and '
                f"your seat is free.</p>{listing}{backups}", False)
    waiting = _waiting(deletion, now, grace_s, import_lease_until) if now is not None else ""
    return (f'<p id="deletion-status">Deleting your data. Nothing more is archived for you. This page '
            f"refreshes by itself.</p>{waiting}{listing}{backups}", True)
