"""Server-rendered SVG charts (no script, no external asset): plays per day, and top-10 bars."""

from __future__ import annotations

from html import escape


def plays_per_day(days: list[tuple[str, int]], *, width: int = 720, height: int = 160) -> str:
    """One bar per day, oldest left; each bar has a <title> (day: plays) for a hover tooltip."""
    peak = max((n for _, n in days), default=0) or 1
    bar = width / max(1, len(days))
    plot = height - 20
    bars = []
    for i, (day, n) in enumerate(days):
        h = round(plot * n / peak, 1)
        bars.append(f'<rect class="day" x="{i * bar:.1f}" y="{plot - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                    f'height="{h}" fill="#1db954" data-day="{day}" data-plays="{n}">'
                    f"<title>{day}: {n} plays</title></rect>")
    first, last = (days[0][0], days[-1][0]) if days else ("", "")
    return (f'<svg id="plays-per-day" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="Plays per day, last {len(days)} days (most on one day: {peak})">'
            f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" stroke="#999"/>{"".join(bars)}'
            f'<text x="0" y="{height - 4}" font-size="11" fill="#666">{escape(first)}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="11" fill="#666" text-anchor="end">{escape(last)}</text>'
            "</svg>")


def top_bars(element_id: str, label: str, items: list[tuple[str, int]], *, width: int = 720) -> str:
    """Horizontal bars with the name and the count; an empty list says so."""
    if not items:
        return f'<p id="{escape(element_id)}" class="muted">No plays in this period yet.</p>'
    row = 22
    peak = max(n for _, n in items) or 1
    name_w = width * 0.45
    rows = []
    for i, (name, n) in enumerate(items):
        y = i * row
        w = round((width - name_w - 50) * n / peak, 1)
        rows.append(f'<g class="item"><text x="0" y="{y + 15}" font-size="13">{escape(name[:60])}</text>'
                    f'<rect x="{name_w:.0f}" y="{y + 4}" width="{w}" height="14" fill="#1db954"/>'
                    f'<text x="{name_w + w + 6:.0f}" y="{y + 15}" font-size="12" fill="#444">{n}</text></g>')
    return (f'<svg id="{escape(element_id)}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {width} {row * len(items)}" role="img" aria-label="{escape(label)}">{"".join(rows)}</svg>')
