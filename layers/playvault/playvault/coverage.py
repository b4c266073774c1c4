"""How complete a user's archive is: which periods polling covered, which an import covered, and
which neither (the gaps), as data the account page renders, plus an SVG of it.

Polling covers from the user's sign-up to now (to the last poll when the user is no longer polled),
minus the gaps the poll path detected (playvault.store.gaps). An import covers from the oldest to
the newest stream it read. Polling wins where both cover a period; a gap an import covered is
"import". Cheap to compute: the user item, the gaps and the import jobs, never the plays.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

from playvault.clock import to_ms
from playvault.store import gaps as gaps_store
from playvault.store import imports as imports_store
from playvault.store import users

POLLING = "polling"
IMPORT = "import"
NONE = "none"
COLORS = {POLLING: "#1db954", IMPORT: "#3b7dd8", NONE: "#d9d9d9"}
LABELS = {POLLING: "archived by polling", IMPORT: "filled by an import", NONE: "not covered"}


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for low, high in sorted(i for i in intervals if i[1] > i[0]):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [(a, b) for a, b in merged]


def _inside(moment: float, intervals: list[tuple[int, int]]) -> bool:
    return any(low <= moment < high for low, high in intervals)


def build(polling: tuple[int, int] | None, gaps: list[tuple[int, int]], imported: list[tuple[int, int]],
          end_ms: int) -> dict[str, Any]:
    """The timeline from its parts (pure): segments oldest first, each {from_ms, to_ms, kind}."""
    imported = _merge(imported)
    gaps = _merge(gaps)
    starts = [s for s, _ in imported] + ([polling[0]] if polling else [])
    if not starts:
        return {"from_ms": end_ms, "to_ms": end_ms, "segments": [], "gaps": [], "totals_ms": {}}
    start = min(starts)
    bounds = {start, end_ms}
    for low, high in [*imported, *gaps, *([polling] if polling else [])]:
        bounds.update((max(start, min(low, end_ms)), max(start, min(high, end_ms))))
    points = sorted(bounds)
    segments: list[dict[str, Any]] = []
    for low, high in zip(points, points[1:], strict=False):
        if high <= low:
            continue
        middle = (low + high) / 2
        polled = polling is not None and polling[0] <= middle < polling[1] and not _inside(middle, gaps)
        kind = POLLING if polled else IMPORT if _inside(middle, imported) else NONE
        if segments and segments[-1]["kind"] == kind:
            segments[-1]["to_ms"] = high
        else:
            segments.append({"from_ms": low, "to_ms": high, "kind": kind})
    totals: dict[str, int] = {}
    for segment in segments:
        totals[segment["kind"]] = totals.get(segment["kind"], 0) + segment["to_ms"] - segment["from_ms"]
    gap_rows = [{"from_ms": low, "to_ms": high,
                 "filled_by_import": any(a <= low and high <= b for a, b in imported)} for low, high in gaps]
    return {"from_ms": start, "to_ms": end_ms, "segments": segments, "gaps": gap_rows, "totals_ms": totals}


def timeline(user_id: str, now: datetime) -> dict[str, Any]:
    """The user's coverage timeline (see build)."""
    user = users.get(user_id)
    end_ms = to_ms(now)
    polling = None
    if user is not None and (user.created_at or user.authorized_at):
        began = to_ms(user.created_at or user.authorized_at)
        until = end_ms if user.status == users.ACTIVE else to_ms(user.last_polled_at or now)
        polling = (began, max(began, until))
    gaps = [(int(g.from_ms), int(g.to_ms)) for g in gaps_store.for_user(user_id)]
    imported = [(int(j.first_ms), int(j.last_ms) + 1) for j in imports_store.for_user(user_id)
                if j.first_ms is not None and j.last_ms is not None and j.state != imports_store.FAILED]
    return build(polling, gaps, imported, end_ms)


def _day(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def render_svg(data: dict[str, Any], width: int = 720, height: int = 64) -> str:
    """An inline SVG of the timeline (one bar, a legend, year ticks); safe to embed in a page."""
    low, high = data["from_ms"], data["to_ms"]
    span = max(1, high - low)
    bar_y, bar_h = 6, 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="coverage" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}"><title>Archive coverage</title>']
    if not data["segments"]:
        parts.append(f'<text x="0" y="{bar_y + 16}" font-size="12">nothing archived yet</text></svg>')
        return "".join(parts)
    for segment in data["segments"]:
        x = (segment["from_ms"] - low) / span * width
        w = max(0.5, (segment["to_ms"] - segment["from_ms"]) / span * width)
        label = f'{LABELS[segment["kind"]]}: {_day(segment["from_ms"])} to {_day(segment["to_ms"])}'
        parts.append(f'<rect class="segment {segment["kind"]}" x="{x:.2f}" y="{bar_y}" width="{w:.2f}" '
                     f'height="{bar_h}" fill="{COLORS[segment["kind"]]}"><title>{escape(label)}</title></rect>')
    first_year = datetime.fromtimestamp(low / 1000, UTC).year + 1
    last_year = datetime.fromtimestamp(high / 1000, UTC).year
    years = list(range(first_year, last_year + 1))
    step = max(1, len(years) // 8)
    for year in years[::step]:
        x = (to_ms(datetime(year, 1, 1, tzinfo=UTC)) - low) / span * width
        parts.append(f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{bar_y}" y2="{bar_y + bar_h + 3}" stroke="#555"/>'
                     f'<text x="{x:.2f}" y="{bar_y + bar_h + 14}" font-size="10" text-anchor="middle">{year}</text>')
    x = 0
    for kind in (POLLING, IMPORT, NONE):
        parts.append(f'<rect x="{x}" y="{height - 10}" width="10" height="10" fill="{COLORS[kind]}"/>'
                     f'<text x="{x + 14}" y="{height - 1}" font-size="10">{escape(LABELS[kind])}</text>')
        x += 170
    parts.append("</svg>")
    return "".join(parts)
