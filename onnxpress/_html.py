"""The HTML building blocks of the report: the page's CSS, escaped text, tables that scroll in
their own box, and self-contained SVG charts (bars, grouped horizontal bars, lines, scatter).

Everything is inline (no scripts, no downloads) and sized for a 1280 px wide page: a chart
shrinks to its column, axis margins grow with their labels.
"""
from __future__ import annotations

import html
import re
from typing import Callable, Sequence


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1d2330;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #dde}
h1,h2,h3,p,li{overflow-wrap:anywhere}
.verdict{display:inline-block;padding:.25em .8em;border-radius:4px;color:#fff;font-weight:600}
.passed{background:#1f8a4c}.failed{background:#c0392b}
.scroll{max-width:100%;overflow-x:auto;margin:.6em 0}
.scroll.tall{max-height:30em;overflow-y:auto}
table{border-collapse:collapse} th,td{border:1px solid #d5d9e3;padding:.3em .7em;text-align:left}
th{background:#f2f4f8;position:sticky;top:0} .num{text-align:right} td.prose{min-width:18em}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start} figure{margin:0;max-width:100%}
svg.plot{display:block;max-width:100%;height:auto} figcaption{font-size:.9em;color:#556}
pre{max-width:100%;overflow-x:auto;background:#f6f7fa;padding:.6em}
ul.failures li{color:#c0392b} .note{color:#556} .new{color:#1f8a4c} .gone{color:#c0392b}
"""
_DATA = "#3b6fb6"  # the colour of the data in every plot (the candidate where two models are shown)
_SERIES = ("#98a2b3", _DATA)  # reference, candidate
_MARKED = "#c0392b"


def escape(value: object) -> str:
    return html.escape(str(value))


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "…"


# A cell that reads as a number (counts, sizes, times, "12 → 32", "-"): its column is right-aligned.
_NUMERIC = re.compile(r"^([-+]?[\d.]|-$|n/a$|$)")


def table(header: Sequence[str], rows: Sequence[Sequence[object]], css_id: str, *, tall: bool = False) -> str:
    """A table in its own box, which scrolls when the table is wider (or, ``tall``, longer) than the
    page. Columns of numbers are right-aligned, others left; long text wraps in a column of its own."""
    numeric = [bool(rows) and all(_NUMERIC.match(str(row[i])) for row in rows) for i in range(len(header))]
    head = "".join(f'<th class="num">{escape(h)}</th>' if numeric[i] else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(header))

    def cell(i: int, value: object) -> str:
        text = str(value)
        css = "num" if numeric[i] else "prose" if len(text) > 40 else ""
        return f'<td class="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    box = "scroll tall" if tall else "scroll"
    return f'<div class="{box}"><table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _svg(title: str, css_id: str, width: float, height: float, body: str) -> str:
    """A plot: an SVG that keeps its proportions when the column is narrower than ``width``."""
    return (f'<figure><svg id="{css_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{escape(title)}">'
            f'<text x="{width / 2:.0f}" y="18" font-size="13" text-anchor="middle" font-weight="600">{escape(title)}</text>'
            f'{body}</svg><figcaption>{escape(title)}</figcaption></figure>')


def _left_margin(*labels: str) -> float:
    """Room left of the y axis for its value labels (about 6.6 px a character at 11 px) and the unit."""
    return max(56.0, 26 + 6.6 * max(len(label) for label in labels))


def _ticks(xs: Sequence[float], labels: Sequence[str], y: float) -> str:
    """Labels under an x axis, slanted; shortened (hover shows them) so that none runs past the
    plot's left edge: a slanted label reaches about 5.7 px a character to the left of its point."""
    return "".join(f'<text x="{x:.1f}" y="{y}" font-size="11" text-anchor="end" transform="rotate(-30 {x:.1f} {y})">'
                   f'{escape(_short(label, max(4, min(16, int((x - 4) / 5.7)))))}<title>{escape(label)}</title></text>'
                   for x, label in zip(xs, labels))


def _y_axis(left: float, top: float, plot_h: float, right: float, high: str, low: str, unit: str) -> str:
    return (f'<line x1="{left}" y1="{top + plot_h}" x2="{right}" y2="{top + plot_h}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
            f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{high}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">{low}</text>'
            f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
            f'text-anchor="middle">{escape(unit)}</text>')


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float | None], unit: str, css_id: str,
              width: int = 520, height: int = 260) -> str:
    """An SVG bar chart with value labels; labels past 16 characters are shortened (hover shows them)."""
    peak = max([v for v in values if v is not None] + [1e-12])
    left, bottom, top = _left_margin(f"{peak:.3g}"), 58, 40
    plot_h = height - bottom - top
    step = (width - left - 10) / max(1, len(values))
    bars = []
    for i, (label, value) in enumerate(zip(labels, values)):
        x = left + i * step + step * 0.15
        w = step * 0.7
        h = 0 if value is None else plot_h * value / peak
        y = top + plot_h - h
        text = "n/a" if value is None else f"{value:.3g}"
        bars.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{_DATA}">'
                    f'<title>{escape(label)}: {text} {escape(unit)}</title></rect>'
                    f'<text x="{x + w / 2:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">{text}</text>')
    centres = [left + i * step + step / 2 for i in range(len(values))]
    axis = _y_axis(left, top, plot_h, width - 10, f"{peak:.3g}", "0", unit)
    return _svg(title, css_id, width, height, axis + "".join(bars) + _ticks(centres, labels, height - bottom + 16))


def hbar_chart(title: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], unit: str,
               css_id: str, *, value_text: Callable[[float], str] = lambda v: f"{v:g}",
               marks: dict[str, str] | None = None, width: int = 540) -> str:
    """An SVG horizontal bar chart: a group of bars per category, one bar per series (legend on top).

    ``marks`` gives a category a tag shown after its label in the tag's colour (``new``: an op
    the candidate added, ``gone``: one it removed). The height follows the number of categories.
    """
    marks = marks or {}
    bar_h, top, bottom, value_room = 11, 46, 26, 64
    group_h = bar_h * len(series) + 8
    labels = [_short(c, 26) + (f" ({marks[c]})" if c in marks else "") for c in categories]
    left = min(230, 14 + 6.4 * max([len(label) for label in labels] + [4]))
    plot_w = width - left - value_room
    height = top + group_h * len(categories) + bottom
    peak = max([v for _, values in series for v in values] + [1e-12])
    colours = _SERIES[-len(series):]  # one series: the candidate's colour
    parts = []
    for j, (name, _) in enumerate(series):
        x = left + j * 120
        parts.append(f'<rect x="{x:.1f}" y="28" width="10" height="10" fill="{colours[j]}"/>'
                     f'<text x="{x + 14:.1f}" y="37" font-size="11">{escape(name)}</text>')
    for i, (category, label) in enumerate(zip(categories, labels)):
        y0 = top + i * group_h
        colour = {"new": "#1f8a4c", "gone": _MARKED}.get(marks.get(category, ""), "#1d2330")
        parts.append(f'<text x="{left - 6:.1f}" y="{y0 + group_h / 2 + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{colour}">{escape(label)}<title>{escape(category)}</title></text>')
        for j, (name, values) in enumerate(series):
            y = y0 + 4 + j * bar_h
            w = plot_w * values[i] / peak
            parts.append(f'<rect class="bar" x="{left:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 1}" '
                         f'fill="{colours[j]}"><title>{escape(category)}, {escape(name)}: '
                         f'{value_text(values[i])}</title></rect>'
                         f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 2:.1f}" font-size="10">{value_text(values[i])}</text>')
    bottom_y = top + group_h * len(categories)
    parts.append(f'<line x1="{left:.1f}" y1="{top - 2}" x2="{left:.1f}" y2="{bottom_y:.1f}" stroke="#888"/>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 8:.1f}" font-size="11" text-anchor="middle">'
                 f'{escape(unit)}</text>')
    return _svg(title, css_id, width, height, "".join(parts))


def line_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str, css_id: str,
               mark: int | None = None, width: int = 1060, height: int = 280) -> str:
    """An SVG line chart over ``labels``; ``mark`` highlights one point. Up to 12 points are
    named under the axis; more are counted there (hover names each)."""
    ticks = len(values) <= 12
    low, high = min(values), max(values)
    left, bottom, top = _left_margin(f"{high:.6g}", f"{low:.6g}"), 58 if ticks else 40, 30
    plot_h, plot_w = height - bottom - top, width - left - 30
    span = (high - low) or 1.0
    xs = [left + 10 + (plot_w - 10) * (i / max(1, len(values) - 1)) for i in range(len(values))]
    ys = [top + plot_h * (1 - (v - low) / span) for v in values]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    dots = "".join(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{5 if i == mark else 3}" '
                   f'fill="{_MARKED if i == mark else _DATA}"><title>{escape(labels[i])}: {values[i]:.6g}</title></circle>'
                   for i, (x, y) in enumerate(zip(xs, ys)))
    marker = ""
    if mark is not None:
        anchor = "end" if xs[mark] > left + plot_w * 0.8 else "start" if xs[mark] < left + plot_w * 0.2 else "middle"
        marker = (f'<text x="{xs[mark]:.1f}" y="{max(ys[mark] - 10, top - 2):.1f}" font-size="11" fill="{_MARKED}" '
                  f'text-anchor="{anchor}">{escape(labels[mark])}</text>')
    if ticks:
        names = _ticks(xs, labels, top + plot_h + 16)
    else:
        names = (f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
                 f'in graph order ({len(values)})</text>')
    axis = _y_axis(left, top, plot_h, left + plot_w, f"{high:.6g}", f"{low:.6g}", unit) + names
    return _svg(title, css_id, width, height,
                f'{axis}<polyline fill="none" stroke="{_DATA}" stroke-width="1.5" points="{points}"/>{dots}{marker}')


def scatter_chart(title: str, points: Sequence[tuple[str, float, float, bool]], x_unit: str, y_unit: str,
                  css_id: str, width: int = 540, height: int = 340) -> str:
    """An SVG scatter of ``(label, x, y, highlighted)`` points (the optimizer's candidates)."""
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    left, bottom, top, right = _left_margin(f"{y_high:.6g}", f"{y_low:.6g}"), 46, 34, 16
    plot_w, plot_h = width - left - right, height - bottom - top
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return left + plot_w * (x - x_low) / x_span, top + plot_h * (1 - (y - y_low) / y_span)

    dots = []
    for label, x, y, marked in points:
        cx, cy = at(x, y)
        colour = _MARKED if marked else _DATA
        dots.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="{6 if marked else 4}" fill="{colour}">'
                    f'<title>{escape(label)}: {x:.4g} {escape(x_unit)}, {y:.6g} {escape(y_unit)}</title></circle>')
        if marked:
            anchor = "end" if cx > left + plot_w * 0.8 else "start" if cx < left + plot_w * 0.2 else "middle"
            dots.append(f'<text x="{cx:.1f}" y="{max(cy - 10, top - 2):.1f}" font-size="11" fill="{colour}" '
                        f'text-anchor="{anchor}">{escape(label)}</text>')
    axis = (_y_axis(left, top, plot_h, left + plot_w, f"{y_high:.6g}", f"{y_low:.6g}", y_unit)
            + f'<text x="{left}" y="{top + plot_h + 16}" font-size="11" text-anchor="start">{x_low:.4g}</text>'
            f'<text x="{left + plot_w}" y="{top + plot_h + 16}" font-size="11" text-anchor="end">{x_high:.4g}</text>'
            f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{escape(x_unit)}</text>')
    return _svg(title, css_id, width, height, axis + "".join(dots))
