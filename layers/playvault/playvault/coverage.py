"""How complete a user's archive is: which periods polling covered, which an import covered, and
which neither (the gaps), as data the account page renders, plus an SVG of it.

Polling covers from the user's sign-up to now (to the last poll when the user is no longer polled),
minus the gaps the poll path detected (playvault.store.gaps). An import covers from the oldest to
the newest stream it read, in the weeks it read streams in (a year without a stream in the export
is not covered by it). Nothing is covered before the archive's first play. Polling wins where both
cover a period; a gap an import covered is "import". Cheap to compute: the user item, the gaps, the
import jobs and the first play (one Query of one item), never the plays in bulk.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any

from playvault.clock import to_ms
from playvault.store import gaps as gaps_store
from playvault.store import imports as imports_store
from playvault.store import plays as plays_store
from playvault.store import users

POLLING = "polling"
IMPORT = "import"
NONE = "none"
COLORS = {POLLING: "#1db954", IMPORT: "#3b7dd8", NONE: "#d9d9d9"}
LABELS = {POLLING: "archived by polling", IMPORT: "filled by an import", NONE: "not covered"}
WEEK_MS = 7 * 86_400_000


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
          end_ms: int, first_play_ms: int | None = 0) -> dict[str, Any]:
    """The timeline from its parts (pure): segments oldest first, each {from_ms, to_ms, kind}.
    `first_play_ms`: the archive's first play (None: no play yet); polling covers nothing before it
    (a sign-up days before the first play is not a period of plays archived)."""
    if polling is not None:
        polling = None if first_play_ms is None else (max(polling[0], first_play_ms), polling[1])
        if polling is not None and polling[1] <= polling[0]:
            polling = None
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
    first, _ = plays_store.first_and_last(user_id)
    first_play_ms = None if first is None else int(first.played_at_ms or to_ms(_parse(first.played_at)))
    return build(polling, gaps, import_intervals(imports_store.for_user(user_id)), end_ms, first_play_ms)


def import_intervals(jobs: Iterable[imports_store.ImportModel]) -> list[tuple[int, int]]:
    """What the imports cover: the weeks each read streams in (`stream_weeks`), within the span of
    its streams; a job recorded before stream weeks were kept covers its whole span."""
    intervals = []
    for job in jobs:
        if job.first_ms is None or job.last_ms is None or job.state == imports_store.FAILED:
            continue
        low, high = int(job.first_ms), int(job.last_ms) + 1
        if not job.stream_weeks:
            intervals.append((low, high))
            continue
        for monday in job.stream_weeks:
            start = to_ms(datetime.fromisoformat(monday).replace(tzinfo=UTC))
            intervals.append((max(low, start), min(high, start + WEEK_MS)))
    return _merge(intervals)


def _parse(played_at: str) -> datetime:
    return datetime.fromisoformat(played_at.replace("Z", "+00:00"))


def _day(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _pct(ms: float, low: int, span: int) -> float:
    return min(100.0, max(0.0, (ms - low) / span * 100))


def render_svg(data: dict[str, Any], height: int = 44) -> str:
    """An inline SVG of the timeline (one bar, year ticks); safe to embed in a page. Positions are
    percentages of the page's width and text is in pixels: the bar stretches to any screen and its
    labels keep their size (a scaled 720-unit drawing put 5-pixel text on a phone)."""
    low, high = data["from_ms"], data["to_ms"]
    span = max(1, high - low)
    bar_y, bar_h = 2, 22
    totals = data.get("totals_ms") or {}
    whole = sum(totals.values()) or 1
    summary = ", ".join(f"{round(100 * totals.get(kind, 0) / whole)} % {LABELS[kind]}" for kind in COLORS)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="coverage" role="img" width="100%" '
             f'height="{height}"><title>Archive coverage'
             f'{": " + escape(_day(low)) + " to " + escape(_day(high)) + ", " + summary if data["segments"] else ""}'
             "</title>"]
    if not data["segments"]:
        parts.append(f'<text x="0" y="{bar_y + 16}" font-size="14">nothing archived yet</text></svg>')
        return "".join(parts)
    for segment in data["segments"]:
        x = _pct(segment["from_ms"], low, span)
        w = min(max(0.1, _pct(segment["to_ms"], low, span) - x), 100 - x)  # at least a hairline, never past the box
        label = f'{LABELS[segment["kind"]]}: {_day(segment["from_ms"])} to {_day(segment["to_ms"])}'
        parts.append(f'<rect class="segment {segment["kind"]}" x="{x:.3f}%" y="{bar_y}" width="{w:.3f}%" '
                     f'height="{bar_h}" fill="{COLORS[segment["kind"]]}"><title>{escape(label)}</title></rect>')
    first_year = datetime.fromtimestamp(low / 1000, UTC).year + 1
    last_year = datetime.fromtimestamp(high / 1000, UTC).year
    years = list(range(first_year, last_year + 1))
    step = -(-len(years) // 6)  # at most 6 labels: they stay apart on a 360-pixel screen
    for year in years[::step] if years else []:
        x = _pct(to_ms(datetime(year, 1, 1, tzinfo=UTC)), low, span)
        anchor = "start" if x < 6 else "end" if x > 94 else "middle"  # a label at an edge stays inside
        parts.append(f'<line x1="{x:.3f}%" x2="{x:.3f}%" y1="{bar_y}" y2="{bar_y + bar_h + 3}" stroke="#555"/>'
                     f'<text x="{x:.3f}%" y="{bar_y + bar_h + 16}" font-size="13" fill="#333" '
                     f'text-anchor="{anchor}">{year}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(data: dict[str, Any]) -> str:
    """The timeline and its legend (page text, so it wraps and reads at any width)."""
    legend = "".join(f'<li><span class="swatch" style="background:{COLORS[kind]}"></span>{escape(LABELS[kind])}</li>'
                     for kind in COLORS)
    return f'{render_svg(data)}<ul class="legend">{legend}</ul>'
