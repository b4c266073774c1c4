"""Charts of the account pages as HTML and CSS: bars per day/week/month with a labelled axis and
their values, and the weekday x hour heatmap as a table.

HTML rather than SVG: text stays at the page's size at any width (an SVG scaled down to a 390 px
phone shrinks its text with it), the bars stretch with the page, and a table reads out to a screen
reader. No script: a bar's value is in its tooltip, under it when there are few bars, and in the
table of values below every chart. The classes are styled by STYLE (added to the page's head).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
VALUES_ON_BARS = 12  # at most this many bars carry their value (wider than a 390 px phone's column otherwise)
X_LABELS = 3  # first, middle, last: longer labels would collide on a phone

STYLE = """
.chart { margin: .5rem 0 1rem; }
.chart figcaption { font-weight: 600; }
.chart .plot { display: flex; height: 10rem; margin-top: .3rem; }
.chart .y { position: relative; width: 3.2rem; flex: none; border-right: 1px solid #767676;
  font-size: .8rem; color: #555; }
.chart .y span { position: absolute; right: .3rem; transform: translateY(50%); white-space: nowrap; }
.chart .bars { position: relative; flex: 1; display: flex; align-items: flex-end; gap: 1px;
  border-bottom: 1px solid #767676; min-width: 0; }
.chart .grid { position: absolute; left: 0; right: 0; border-top: 1px dashed #ddd; }
.chart .bar { position: relative; flex: 1; min-width: 1px; background: #16823d; }
.chart .bar .v { position: absolute; bottom: 100%; left: 50%; transform: translateX(-50%); font-size: .75rem;
  color: #333; white-space: nowrap; }
.chart .x { position: relative; height: 1.3rem; margin-left: 3.2rem; font-size: .8rem; color: #555; }
.chart .x span { position: absolute; top: 0; white-space: nowrap; }
.chart details { font-size: .9rem; }
table.values td, table.values th, table.heat td, table.heat th { padding: .1rem .5rem .1rem 0; }
table.values td, table.heat td { text-align: right; }
table.heat { font-size: .85rem; }
table.heat td { min-width: 2.2rem; text-align: center; padding: .1rem 0; border: 1px solid #eee; }
table.top td:nth-child(n+3), table.top th:nth-child(n+3) { text-align: right; white-space: nowrap; }
h3 .more { font-size: .9rem; font-weight: normal; margin-left: .5rem; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
"""


@dataclass(frozen=True)
class Point:
    """One bar: its label (full, for the tooltip and the table), a short label for the axis, its value."""

    label: str
    short: str
    value: float
    start: str  # ISO date of the bucket's first day (a data attribute tests and tools read)


def nice_ticks(peak: float, target: int = 4) -> list[float]:
    """0 and evenly spaced round values (1, 2 or 5 times a power of ten) up to at least `peak`."""
    if peak <= 0:
        return [0.0, 1.0]
    raw = peak / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    top = step * math.ceil(peak / step - 1e-9)
    return [step * i for i in range(round(top / step) + 1)]


def _tick_text(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
    return f"{text}{unit}"


def compact(value: float) -> str:
    """A value short enough to stand over a narrow bar: 7, 0.4, 12, 1.2k, 35k."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.1f}" if value < 1 or (value < 10 and value != int(value)) else f"{value:.0f}"


def columns(element_id: str, caption: str, points: Sequence[Point], *, unit: str = "",
            value_text: Callable[[float], str] | None = None) -> str:
    """Vertical bars, oldest left, on a y axis with round ticks (`unit` follows each tick: " h").
    `value_text` formats a bar's value for its tooltip (default: the integer); over the bar (when
    there are few) it stands compact, in the axis's unit."""
    shown = value_text or (lambda v: f"{v:,.0f}")
    ticks = nice_ticks(max((p.value for p in points), default=0))
    top = ticks[-1]
    y_axis = "".join(f'<span style="bottom:{100 * t / top:.4g}%">{escape(_tick_text(t, unit))}</span>' for t in ticks)
    grid = "".join(f'<i class="grid" style="bottom:{100 * t / top:.4g}%"></i>' for t in ticks[1:])
    labelled = len(points) <= VALUES_ON_BARS
    bars = []
    for p in points:
        value = shown(p.value)
        on_bar = f'<span class="v">{escape(compact(p.value))}</span>' if labelled and p.value else ""
        bars.append(f'<span class="bar" style="height:{100 * p.value / top:.4g}%" data-start="{escape(p.start)}" '
                    f'data-value="{p.value:g}" title="{escape(p.label)}: {escape(value)}">{on_bar}</span>')
    x_axis = ""
    if points:
        n = len(points)
        picks = sorted({0, n - 1} | ({(n - 1) // 2} if n >= X_LABELS else set()))
        spans = []
        for i in picks:
            if i == 0:
                where = "left:0"
            elif i == n - 1:
                where = "right:0"
            else:
                where = f"left:{100 * (i + 0.5) / n:.4g}%;transform:translateX(-50%)"
            spans.append(f'<span style="{where}">{escape(points[i].short)}</span>')
        x_axis = f'<div class="x" aria-hidden="true">{"".join(spans)}</div>'
    return (f'<figure class="chart" id="{escape(element_id)}"><figcaption>{escape(caption)}</figcaption>'
            f'<div class="plot" aria-hidden="true"><div class="y">{y_axis}</div>'
            f'<div class="bars">{grid}{"".join(bars)}</div></div>{x_axis}</figure>')


def values_table(element_id: str, summary: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The numbers behind a chart, folded away (a <details> opens without script)."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + f'<th scope="row">{escape(r[0])}</th>' + "".join(f"<td>{escape(c)}</td>" for c in r[1:])
                   + "</tr>" for r in rows)
    return (f'<details class="values"><summary>{escape(summary)}</summary>'
            f'<table class="values" id="{escape(element_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></details>")


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: float, b: float) -> float:
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def heat_colors(share: float) -> tuple[str, str]:
    """(background, text) for a cell holding `share` (0..1) of the busiest cell: white to dark green,
    the text black or white, whichever contrasts more (WCAG)."""
    light, dark = (255, 255, 255), (10, 90, 40)
    rgb = tuple(round(lo + (hi - lo) * share) for lo, hi in zip(light, dark, strict=True))
    lum = _luminance(rgb)  # type: ignore[arg-type]
    text = "#000" if _contrast(lum, 0.0) >= _contrast(lum, 1.0) else "#fff"
    return "#{:02x}{:02x}{:02x}".format(*rgb), text


def heatmap(element_id: str, caption: str, plays: Sequence[Sequence[int]]) -> str:
    """Plays by local hour (rows) and weekday (columns, Monday first): seven narrow columns fit a
    phone with every number in its cell; the shade says the same at a glance."""
    peak = max((n for row in plays for n in row), default=0) or 1
    head = "".join(f'<th scope="col">{d}</th>' for d in WEEKDAYS)
    rows = []
    for hour in range(24):
        cells = []
        for day in range(7):
            n = plays[day][hour] if day < len(plays) and hour < len(plays[day]) else 0
            if n:
                background, text = heat_colors(n / peak)
                cells.append(f'<td style="background:{background};color:{text}" data-day="{day}" '
                             f'data-hour="{hour}" data-plays="{n}">{n}</td>')
            else:
                cells.append(f'<td data-day="{day}" data-hour="{hour}" data-plays="0"></td>')
        rows.append(f'<tr><th scope="row">{hour:02d}:00</th>{"".join(cells)}</tr>')
    return (f'<table class="heat" id="{escape(element_id)}"><caption>{escape(caption)}</caption>'
            f'<thead><tr><th scope="col">hour</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
