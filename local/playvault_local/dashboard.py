"""The local counterpart of the CloudWatch dashboard: the metrics the functions emitted (EMF on
stdout), per simulated hour, as one self-contained SVG (no scripts, no external resources)."""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

from playvault_local.telemetry import MetricSample

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

# (title, series: [(metric, label)], aggregation); "UsersFailed" is split by its FailureType dimension.
PANELS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("Users dispatched", [("UsersDispatched", "dispatched"), ("UsersInCooldown", "in cooldown"),
                          ("UsersNeedingReauth", "needs re-auth")], "sum"),
    ("Users archived", [("UsersArchived", "archived"), ("UsersSkipped", "skipped")], "sum"),
    ("Users failed by FailureType", [("UsersFailed", "")], "sum"),
    ("Plays archived", [("PlaysArchived", "plays")], "sum"),
    ("New tracks", [("NewTracks", "tracks")], "sum"),
    ("Gaps detected", [("GapsDetected", "gaps")], "sum"),
    ("Rate limiting", [("RateLimited", "users rate-limited"), ("DeferredMessages", "messages deferred")], "sum"),
    ("Work messages", [("MessagesSent", "sent by the dispatcher"), ("MessagesNotYetDue", "requeued, not yet due")],
     "sum"),
    ("Batch duration (ms, max)", [("BatchDuration", "max")], "max"),
    ("Sign-ups", [("SignUps", "sign-ups"), ("ReAuthorizations", "re-auth"), ("Waitlisted", "waitlisted")], "sum"),
]

W, H = 380, 210  # panel size
PAD_L, PAD_R, PAD_T, PAD_B = 46, 10, 40, 34
COLUMNS = 3


def _series(samples: list[MetricSample], metric: str, how: str) -> dict[str, dict[int, float]]:
    """label -> hour -> value; UsersFailed gives one series per FailureType."""
    out: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for s in samples:
        if s.name != metric or not s.values:
            continue
        label = s.dimensions.get("FailureType", "") if metric == "UsersFailed" else ""
        bucket = out[label]
        if how == "max":
            bucket[s.hour] = max(bucket[s.hour], max(s.values))
        else:
            bucket[s.hour] += sum(s.values)
    return out


def _label(hour: int, last: int) -> str:
    if hour < 0:
        return "signup"
    if hour >= last:
        return "drain"
    return str(hour)


def _panel(x0: int, y0: int, title: str, series: list[tuple[str, dict[int, float]]], hours: list[int],
           last: int) -> str:
    parts = [f'<g transform="translate({x0},{y0})">',
             f'<rect width="{W - 8}" height="{H - 8}" rx="6" fill="#fff" stroke="#ddd"/>',
             f'<text x="10" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    totals = [sum(values.values()) for _, values in series]
    legend_x = 10
    for index, ((label, _), total) in enumerate(zip(series, totals, strict=True)):
        color = PALETTE[index % len(PALETTE)]
        text = f"{label or 'value'}: {total:g}" if "max" not in title else f"{label or 'value'}"
        parts.append(f'<rect x="{legend_x}" y="25" width="8" height="8" fill="{color}"/>'
                     f'<text x="{legend_x + 11}" y="33" font-size="10">{escape(text)}</text>')
        legend_x += 16 + 6 * len(text)
    plot_w, plot_h = W - 8 - PAD_L - PAD_R, H - 8 - PAD_T - PAD_B
    top = max([sum(values.get(h, 0) for _, values in series) for h in hours] + [0])
    if not series or top <= 0:
        parts.append(f'<text x="{PAD_L + plot_w / 2}" y="{PAD_T + plot_h / 2}" font-size="11" fill="#999" '
                     f'text-anchor="middle">no data</text></g>')
        return "".join(parts)
    parts.append(f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{PAD_L + plot_w}" y2="{PAD_T + plot_h}" '
                 f'stroke="#999"/>')
    for fraction in (0.5, 1.0):
        y = PAD_T + plot_h - plot_h * fraction
        parts.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{PAD_L + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{PAD_L - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{top * fraction:g}</text>')
    slot = plot_w / max(1, len(hours))
    bar = max(1.0, slot * 0.8)
    label_every = max(1, len(hours) // 12)
    for i, hour in enumerate(hours):
        x = PAD_L + i * slot + (slot - bar) / 2
        base = PAD_T + plot_h
        for index, (label, values) in enumerate(series):
            value = values.get(hour, 0)
            if value <= 0:
                continue
            height = plot_h * value / top
            base -= height
            parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                         f'fill="{PALETTE[index % len(PALETTE)]}"><title>{escape(label or title)} '
                         f'hour {_label(hour, last)}: {value:g}</title></rect>')
        if i % label_every == 0 or hour < 0 or hour >= last:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{PAD_T + plot_h + 12}" font-size="8" '
                         f'text-anchor="middle">{_label(hour, last)}</text>')
    parts.append(f'<text x="{PAD_L + plot_w / 2}" y="{H - 12}" font-size="9" fill="#666" text-anchor="middle">'
                 f'simulated hour</text></g>')
    return "".join(parts)


def render_svg(samples: list[MetricSample], report: dict[str, Any] | None = None) -> str:
    last = int(report["hours"]) if report else max((s.hour for s in samples), default=0)
    hours = list(range(min([s.hour for s in samples] + [0]), max([s.hour for s in samples] + [last]) + 1))
    rows = -(-len(PANELS) // COLUMNS)
    header = 56
    width, height = COLUMNS * W + 16, header + rows * H + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
             f'<rect width="{width}" height="{height}" fill="#f4f5f7"/>',
             '<text x="12" y="24" font-size="18" font-weight="bold">PlayVault: metrics per simulated hour</text>']
    if report:
        sub = (f"{report['users']} users x {report['hours']} h, faults {report['faults']}: "
               f"exposed {report['plays_exposed']}, archived {report['plays_archived']}, "
               f"lost {report['plays_lost']}, duplicated {report['plays_duplicated']}, "
               f"gap plays {report['gap_plays']}, DLQ {report['dlq_messages']}")
        parts.append(f'<text x="12" y="44" font-size="12" fill="#333">{escape(sub)}</text>')
    for index, (title, metrics, how) in enumerate(PANELS):
        series: list[tuple[str, dict[int, float]]] = []
        for metric, label in metrics:
            for dim_label, values in sorted(_series(samples, metric, how).items()):
                series.append((dim_label or label, dict(values)))
        x0 = 8 + (index % COLUMNS) * W
        y0 = header + (index // COLUMNS) * H
        parts.append(_panel(x0, y0, title, series, hours, last))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
