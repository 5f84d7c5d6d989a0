"""SVG plots of an experiment over time (:mod:`genrec.experiment.timeline`), written by hand (no plotting
dependency): each series' value as a line and its always-valid band as a shaded area, as the web page draws them.
``genrec experiment report --plots FOLDER`` writes them."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from genrec.io import atomic_write

COLORS = ("#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad")
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 300, 64, 16, 28, 52


def _ok(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def chart(title: str, times: list[float], series: list[dict[str, Any]], zero: bool = False) -> str:
    """One SVG document: ``series`` (each ``label``, ``value``, ``low``, ``high``: one entry per look in ``times``;
    None or infinite: absent / unbounded) over time, bands clipped to the plotted range."""
    ys = [v for s in series for key in ("value", "low", "high") for v in s[key] if _ok(v)] + ([0.0] if zero else [])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="#fff"/>',
             f'<text x="{LEFT}" y="16" font-size="13">{escape(title)}</text>']
    if not ys or not times:
        parts.append(f'<text x="{LEFT}" y="{H / 2}">no data yet</text></svg>')
        return "\n".join(parts)
    lo, hi = min(ys), max(ys)
    if hi == lo:
        lo, hi = lo - 1e-9 - abs(lo) * 0.1, hi + 1e-9 + abs(hi) * 0.1
    t0, t1 = times[0], times[-1] if times[-1] > times[0] else times[0] + 1

    def x(t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * (t - t0) / (t1 - t0)

    def y(v: float) -> float:
        return TOP + (H - TOP - BOTTOM) * (hi - min(max(v, lo), hi)) / (hi - lo)

    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="none" '
                 'stroke="#dde2e6"/>')
    for v in (lo, hi):
        parts.append(f'<text x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for t, anchor in ((t0, "start"), (t1, "end")):
        when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts.append(f'<text x="{x(t):.1f}" y="{H - BOTTOM + 14}" text-anchor="{anchor}">{when}</text>')
    if zero and lo < 0 < hi:
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#66707a" '
                     'stroke-dasharray="4 3"/>')
    for n, s in enumerate(series):
        color = COLORS[n % len(COLORS)]
        idx = [j for j in range(len(times)) if _ok(s["value"][j]) and _ok(s["low"][j]) and _ok(s["high"][j])]
        if idx:
            edge = [(x(times[j]), y(s["high"][j])) for j in idx] + [(x(times[j]), y(s["low"][j])) for j in idx[::-1]]
            parts.append(f'<polygon class="band" points="{_points(edge)}" fill="{color}" fill-opacity="0.15"/>')
        line = [(x(t), y(v)) for t, v in zip(times, s["value"], strict=True) if _ok(v)]
        if line:
            parts.append(f'<polyline class="line" points="{_points(line)}" fill="none" stroke="{color}" '
                         'stroke-width="2"/>')
        lx = LEFT + 160 * n
        parts.append(f'<rect x="{lx}" y="{H - 18}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{H - 9}">{escape(s["label"])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _points(xy: list[tuple[float, float]]) -> str:
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)


def write_plots(t: dict[str, Any], folder: Path) -> list[Path]:
    """The timeline ``t`` as SVG files in ``folder``: per arm and the differences (ab), or the preference
    (interleave); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    charts = []
    if t["arms"]:
        charts.append(("arms", f"{t.get('metric', '')} per arm (shaded: always-valid {1 - t['alpha']:.0%} bands)",
                       [{**a, "label": a["arm"]} for a in t["arms"]], False))
    if t["mode"] == "interleave":
        charts.append(("preference", f"{t.get('metric', 'preference')} (shaded: always-valid band)",
                       [{**d, "label": f"prefers {d['arm']}"} for d in t["differences"]], True))
    else:
        charts.append(("difference", "difference from the first arm (shaded: always-valid band)",
                       [{**d, "label": f"{d['arm']} - {d['control']}"} for d in t["differences"]], True))
    paths = []
    for name, title, series, zero in charts:
        path = folder / f"{t['experiment']}-{name}.svg"
        text = chart(title, t["times"], series, zero)
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        paths.append(path)
    return paths
