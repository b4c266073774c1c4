"""The account pages (HTML): /me, export status, delete confirmation, deletion status."""

from __future__ import annotations

from datetime import datetime

from playvault import history
from playvault.imports import MAX_UPLOAD_BYTES
from playvault.store import deletions, exports, users
from playvault.store.exports import ExportModel
from playvault.web.pages import esc

STATUS_TEXT = {
    users.ACTIVE: ("Archiving", "PlayVault archives every play you make on Spotify."),
    users.NEEDS_REAUTH: ("Needs reconnect", "Spotify no longer lets PlayVault read your plays. Reconnect to resume."),
    "lapsed": ("Waiting for a seat", "Your seat lapsed; PlayVault resumes archiving when a seat is free."),
    users.DELETING: ("Being deleted", "Your data is being deleted."),
}


def _when(moment: datetime | str | None) -> str:
    if moment is None:
        return '<span class="muted">never</span>'
    text = moment if isinstance(moment, str) else moment.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(moment, str):
        text = text.replace("T", " ")[:16] + " UTC"
    return esc(text)


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(token)}">'


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
                f'enctype="multipart/form-data">{hidden}\n<input type="file" name="file" id="import-file" '
                'accept=".zip,.json,application/zip,application/json" required>\n'
                '<button type="submit" id="import-upload">Upload</button></form>')
        max_bytes = upload["max_bytes"]
    rows = []
    for job in jobs[:5]:
        skipped = ", ".join(f"{esc(k)} {n}" for k, n in sorted((job.get("skipped") or {}).items())) or "none"
        error = job.get("error") or {}
        problem = (f' <span class="danger">{esc(str(error.get("message", "")))}'
                   f'{" (" + esc(str(error.get("file"))) + ")" if error.get("file") else ""}</span>' if error else "")
        eta = f", about {int(job['eta_s'] // 60) + 1} min left" if job.get("eta_s") else ""
        rows.append(
            f'<tr class="import" data-state="{esc(job["state"])}"><td>{esc(job.get("file_name") or "")}</td>'
            f'<td class="import-state">{esc(job["state"])} {int(100 * (job.get("progress") or 0))} %'
            f'{esc(eta)}{problem}</td>'
            f'<td>{int(job.get("rows_read") or 0)}</td><td class="import-added">{int(job.get("plays_added") or 0)}</td>'
            f'<td>{int(job.get("duplicates") or 0)}</td><td>{skipped}</td>'
            f'<td>{int(job.get("tracks_to_resolve") or 0)}</td></tr>')
    table = ('<table id="imports"><tr><th>file</th><th>state</th><th>rows read</th><th>plays added</th>'
             '<th>already archived</th><th>skipped</th><th>tracks to look up</th></tr>' + "".join(rows) + "</table>"
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
       imports_html: str = "", figures_html: str = "") -> str:
    """`figures_html`: the figures of the period shown (web.stats_pages.figures_section)."""
    user = view.user
    label, explanation = STATUS_TEXT.get(user.status, (user.status, ""))
    reconnect = ('<form class="inline" method="get" action="/auth/login"><input type="hidden" name="reconnect" '
                 'value="1"><button type="submit" id="reconnect">Reconnect Spotify</button></form>'
                 if user.status == users.NEEDS_REAUTH else "")
    next_poll = getattr(user, "next_poll_at", None)
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
        f'<li><a href="/me/exports/{esc(e.export_id)}">{esc(e.format.upper())} export of '
        f"{_when(e.created_at)}</a> ({esc(e.status)})</li>" for e in recent_exports)
    return f"""{greeting}
<nav><a href="/me">My archive</a><a href="/me/plays">JSON</a>
<form class="inline" method="post" action="/auth/logout">{csrf_field(csrf)}
<button type="submit" id="sign-out">Sign out</button></form></nav>
<table id="summary">
<tr><th>Status</th><td><span class="status" id="status">{esc(label)}</span> {esc(explanation)} {reconnect}</td></tr>
<tr><th>Last poll</th><td id="last-poll">{_when(user.last_polled_at)}</td></tr>
<tr><th>Next poll</th><td id="next-poll">{_when(next_poll) if next_poll else "at the next hourly run"}</td></tr>
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
<button type="submit" name="format" value="jsonl" id="export-jsonl">Export everything as JSON Lines</button></form>
{f'<ul id="exports">{export_rows}</ul>' if export_rows else ""}
{imports_html}
<p><a href="/me/delete" id="delete-link" class="danger">Delete my data</a></p>"""


def export_status(job: ExportModel) -> tuple[str, bool]:
    """(content, still running)."""
    if job.status == exports.DONE:
        return (f'<p id="export-status">Ready: {int(job.rows)} plays, {int(job.size_bytes):,} bytes.</p>'
                f'<p><a id="download" href="/me/exports/{esc(job.export_id)}/file">Download '
                f"{esc(job.format.upper())}</a></p>"
                '<p class="muted">The file is kept for one day. <a href="/me">Back</a></p>', False)
    if job.status == exports.FAILED:
        return '<p id="export-status">This export stopped. <a href="/me">Back</a></p>', False
    done, total = int(job.rows), job.total
    progress = f"{done} of {int(total)} plays" if total is not None else "starting"
    return (f'<p id="export-status">Exporting: {esc(progress)}. This page refreshes by itself.</p>'
            f'<progress max="{int(total or 1)}" value="{done}"></progress>', True)


def delete_confirm(csrf: str, plays_total: int) -> str:
    return f"""<p>This deletes everything PlayVault keeps for you: your {plays_total} archived plays, the
detected gaps, your exports, your imports (their files and their records) and your sessions, and the
Spotify authorization (tokens). Your seat is freed. Signing in waits until it is done. It cannot be undone.</p>
<p class="muted">Point-in-time backups of the tables keep deleted data for up to 35 days, then it is gone.</p>
<form method="post" action="/me/delete">{csrf_field(csrf)}
<button type="submit" id="confirm-delete" class="danger">Delete my data</button> <a href="/me">Cancel</a></form>"""


def deletion_status(deletion: deletions.Deletion) -> tuple[str, bool]:
    counts = deletion.counts
    listing = (f'<ul id="deleted"><li><span id="deleted-plays">{counts["plays"]}</span> plays</li>'
               f'<li>{counts["gaps"]} gaps</li><li>{counts["sessions"]} sessions</li>'
               f'<li>{counts["exports"]} exports, {counts["imports"]} imports and {counts["files"]} files</li></ul>')
    backups = ('<p class="muted">Point-in-time backups of the tables keep deleted data for up to 35 days, '
               "then it is gone for good.</p>")
    if deletion.status == deletions.DONE:
        return (f'<p id="deletion-status">Done: your data is deleted, your Spotify authorization is removed and '
                f"your seat is free.</p>{listing}{backups}", False)
    return (f'<p id="deletion-status">Deleting your data. Nothing more is archived for you. This page '
            f"refreshes by itself.</p>{listing}{backups}", True)
