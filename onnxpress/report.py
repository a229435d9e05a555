"""The validation report and its renderers: text rows, Markdown, JSON and HTML.

``ValidationReport`` is what ``validate`` returns. The HTML page is self-contained (inline CSS
and SVG, no scripts, no downloads) and laid out for a 1280 px wide window: it shows the verdict
and every failed criterion, the reference/candidate table, the model before and after (op
histogram, weight bytes by dtype, each layer's precision and what the passes decided for it),
per-output errors, the pipeline's per-pass table with plots of weights, nodes, time, latency
and accuracy after each pass, the optimizer's search, and the per-layer error when a layer-wise
comparison ran. Wide tables scroll inside their own box; plots shrink to the column.
"""
from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from onnxpress.metrics import ErrorStats
from onnxpress.modelinfo import format_bytes
from onnxpress.runtime import Latency

@dataclass
class ValidationReport:
    """What ``validate`` found; ``passed`` is the verdict, ``failures`` names every broken criterion."""

    target: str
    providers: list[str]
    passed: bool
    failures: list[str]
    data_source: str
    samples: int
    metrics: dict[str, ErrorStats] = field(default_factory=dict)
    top1_agreement: float | None = None
    task_metric: dict[str, float] | None = None
    latency: dict[str, Latency] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pipeline: dict[str, Any] | None = None
    layerwise: dict[str, Any] | None = None
    hardware: dict[str, Any] | None = None
    bundle: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    # What each model is made of, by "reference" / "candidate": nodes, parameters, weight_bytes,
    # ops, bytes_by_dtype, params_by_dtype and layers (``modelinfo.layer_precisions``).
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        if "reference" in self.latency and "candidate" in self.latency and self.latency["candidate"].median_ms > 0:
            return self.latency["reference"].median_ms / self.latency["candidate"].median_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "providers": self.providers, "passed": self.passed,
            "failures": self.failures, "data_source": self.data_source, "samples": self.samples,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "top1_agreement": self.top1_agreement, "task_metric": self.task_metric,
            "latency": {k: v.to_dict() for k, v in self.latency.items()}, "speedup": self.speedup,
            "size": self.size, "peak_memory": self.peak_memory, "unplaced": self.unplaced,
            "notes": self.notes, "pipeline": self.pipeline, "layerwise": self.layerwise,
            "hardware": self.hardware, "bundle": self.bundle, "search": self.search, "models": self.models,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(quantity, reference, candidate) rows: size, latency, peak memory, task metric."""
        rows = []
        if self.size:
            rows.append(("size", _mb(self.size.get("reference")), _mb(self.size.get("candidate"))))
        if self.latency:
            rows.append(("latency median", _ms(self.latency.get("reference")), _ms(self.latency.get("candidate"))))
            rows.append(("latency p90", _ms(self.latency.get("reference"), "p90_ms"),
                         _ms(self.latency.get("candidate"), "p90_ms")))
        if self.peak_memory:
            rows.append(("session peak memory", _mb(self.peak_memory.get("reference")),
                         _mb(self.peak_memory.get("candidate"))))
        if self.task_metric:
            name = self.task_metric.get("name", "metric")
            reference = self.task_metric["reference"]
            rows.append((str(name), "-" if reference is None else f"{reference:.4f}",
                         f"{self.task_metric['candidate']:.4f}"))
        return rows

    def to_text(self) -> str:
        """The report as the command line prints it: the table, errors, notes, the verdict."""
        lines = []
        rows = self.summary_rows()
        if rows:
            width = max(len(r[0]) for r in rows)
            lines.append(f"{'':<{width}}  {'reference':>14}  {'candidate':>14}")
            lines += [f"{name:<{width}}  {ref:>14}  {cand:>14}" for name, ref, cand in rows]
        lines += [f"output {name}: cosine {stats.cosine:.6f}, max-abs {stats.max_abs:.3g}, judged by "
                  f"{stats.judged()}" for name, stats in self.metrics.items()]
        if self.top1_agreement is not None:
            lines.append(f"top-1 agreement: {self.top1_agreement:.4f}")
        if self.layerwise and self.layerwise["first_jump"]:
            jump = self.layerwise["first_jump"]
            lines.append(f"layer-wise: '{jump['tensor']}' ({jump['op_type']} '{jump['node']}', cosine "
                         f"{jump['cosine']:.6f}): {self.layerwise['reason']}")
        lines.append(f"judged on: {self.data_source} ({self.samples} feeds)")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"verdict on target '{self.target}': {'PASSED' if self.passed else 'FAILED'}")
        lines += [f"  - {failure}" for failure in self.failures]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"# Validation on `{self.target}`: {'PASSED' if self.passed else 'FAILED'}", ""]
        if self.failures:
            lines += ["Failed criteria:", ""] + [f"- {f}" for f in self.failures] + [""]
        lines += [f"Data: {self.data_source} ({self.samples} feeds). Providers: {', '.join(self.providers)}.", ""]
        rows = self.summary_rows()
        if rows:
            lines += ["| | reference | candidate |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]
        if self.metrics:
            lines += ["| output | judged by | cosine | max-abs | mean-abs | p99-abs | NaN/Inf |",
                      "|---|---|---|---|---|---|---|"]
            for name, s in self.metrics.items():
                lines.append(f"| {name} | {s.judged()} | {s.cosine:.6f} | {s.max_abs:.3g} | {s.mean_abs:.3g} | "
                             f"{s.p99_abs:.3g} | {s.nonfinite} |")
            lines.append("")
        if self.top1_agreement is not None:
            lines += [f"Top-1 agreement: {self.top1_agreement:.4f}", ""]
        if self.models:
            lines += _markdown_models(self)
        if self.layerwise and self.layerwise.get("first_jump"):
            jump = self.layerwise["first_jump"]
            lines += [f"Layer-wise: the error jumps at `{jump['tensor']}` ({jump['op_type']} "
                      f"`{jump['node']}`, cosine {jump['cosine']:.6f}): {self.layerwise['reason']}.", ""]
        if self.pipeline:
            lines += ["| pass | time | nodes | weights | max-abs | cosine |", "|---|---|---|---|---|---|"]
            for r in self.pipeline["records"]:
                worst = [v for v in (r["accuracy"] or {}).values()]
                lines.append(f"| {r['name']} | {r['seconds']:.2f}s | {r['nodes_before']} -> {r['nodes_after']} | "
                             f"{r['bytes_before']} -> {r['bytes_after']} | "
                             + (f"{max(w['max_abs'] for w in worst):.3g} | {min(w['cosine'] for w in worst):.6f} |"
                                if worst else "- | - |"))
            lines.append("")
        if self.search:
            search = self.search
            lines += [f"Search ({search['budget']['text']}, objective {search['objective']}, "
                      f"{search['seconds']:.1f} s): chosen {search['best'] or 'none'}.", "",
                      "| candidate | score | latency | size | meets | Pareto |", "|---|---|---|---|---|---|"]
            lines += [f"| {c['name']} | {c['score']:.6f} | {c['latency_ms']:.3f} ms | {c['size']} | "
                      f"{'yes' if c['meets'] else 'no'} | {'yes' if c['name'] in search['pareto'] else ''} |"
                      for c in search["candidates"] if c["score"] is not None]
            lines.append("")
        if self.bundle:
            lines += [f"Edge bundle: `{self.bundle['folder']}` (model.ort {self.bundle['model_bytes']} bytes, "
                      "required_operators.config).", ""]
        if self.hardware:
            q = self.hardware["quantization_defaults"]
            lines += [f"Host CPU: {self.hardware['cpu']}; target int8 defaults: activations {q['activation_type']}, "
                      f"weights {q['weight_type']}, reduce_range {q['reduce_range']} ({q['reason']}).", ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self) -> str:
        """One self-contained HTML page: verdict, tables and plots."""
        return render_html(self)

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.html`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for suffix, text in (("json", self.to_json()), ("md", self.to_markdown()), ("html", self.to_html())):
            path = out / f"report.{suffix}"
            staged = out / f".report.{suffix}.tmp"
            staged.write_text(text, encoding="utf-8")
            os.replace(staged, path)
            paths[suffix] = path
        return paths


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.3f} MB"


def _ms(latency: Latency | None, key: str = "median_ms") -> str:
    return "-" if latency is None else f"{getattr(latency, key):.3f} ms"


# ------------------------------------------------------------------ the model before and after

_WHO = ("reference", "candidate")


def _model_rows(models: dict[str, dict]) -> list[tuple[str, ...]]:
    """(quantity, value per model) rows: nodes, op types, parameters, weight bytes."""
    who = [w for w in _WHO if w in models]
    return [("nodes", *(f"{models[w]['nodes']:,}" for w in who)),
            ("op types", *(str(len(models[w]["ops"])) for w in who)),
            ("parameters", *(f"{models[w]['parameters']:,}" for w in who)),
            ("weights", *(format_bytes(models[w]["weight_bytes"]) for w in who))]


def _op_rows(models: dict[str, dict]) -> list[tuple[str, list[int], str]]:
    """(op, count per model, change) for every op of either model, the most frequent first;
    change is ``new``, ``gone``, ``+n``/``-n`` or empty."""
    who = [w for w in _WHO if w in models]
    ops = sorted({op for w in who for op in models[w]["ops"]},
                 key=lambda op: (-max(models[w]["ops"].get(op, 0) for w in who), op))
    rows = []
    for op in ops:
        counts = [models[w]["ops"].get(op, 0) for w in who]
        change = ""
        if len(counts) == 2 and counts[0] != counts[1]:
            change = "new" if counts[0] == 0 else "gone" if counts[1] == 0 else f"{counts[1] - counts[0]:+d}"
        rows.append((op, counts, change))
    return rows


def _dtype_rows(models: dict[str, dict]) -> list[tuple[str, list[int]]]:
    """(dtype, weight bytes per model), the largest first."""
    who = [w for w in _WHO if w in models]
    dtypes = sorted({d for w in who for d in models[w]["bytes_by_dtype"]},
                    key=lambda d: (-max(models[w]["bytes_by_dtype"].get(d, 0) for w in who), d))
    return [(d, [models[w]["bytes_by_dtype"].get(d, 0) for w in who]) for d in dtypes]


# Per-layer entries in pass statistics: {node: reason} for the layers a pass left as they were
# (quantize's float_nodes, fp16's nodes_kept, prune's and lowrank's skipped); {node: {details}}
# under "layers" for the layers it changed (prune, lowrank), of which the first few scalars show.
_LEFT_AS_THEY_WERE = {"float_nodes": "kept float", "nodes_kept": "kept float", "skipped": "skipped"}
_DETAILS_SHOWN = 5


def _detail(key: str, value: object) -> str:
    shown = f"{value:,}" if isinstance(value, int) else f"{value:g}" if isinstance(value, float) else str(value)
    return f"{key.replace('_', ' ')} {shown}"


def _layer_decisions(pipeline: dict | None) -> dict[str, list[str]]:
    """What each pass decided per layer, as ``"pass: decision (why)"`` lines by node name."""
    decisions: dict[str, list[str]] = {}
    for record in (pipeline or {}).get("records", []):
        stats = record.get("statistics") or {}

        def add(layer: str, text: str) -> None:
            decisions.setdefault(layer, []).append(f"{record['name']}: {text}")

        for key, verb in _LEFT_AS_THEY_WERE.items():
            if isinstance(stats.get(key), dict):
                for layer, reason in stats[key].items():
                    add(layer, f"{verb} ({reason})" if isinstance(reason, str) else verb)
        if isinstance(stats.get("layers"), dict):
            for layer, detail in stats["layers"].items():
                if isinstance(detail, dict):
                    shown = [_detail(k, v) for k, v in detail.items()
                             if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
                    add(layer, "changed: " + ", ".join(shown[:_DETAILS_SHOWN]))
        gptq = stats.get("gptq")
        if isinstance(gptq, dict) and isinstance(gptq.get("fits"), dict):
            for layer, fit in gptq["fits"].items():
                before, after = (fit.get("output_error_before"), fit.get("output_error_after")) \
                    if isinstance(fit, dict) else (None, None)
                add(layer, "GPTQ-fitted weights" + (f", output error {before:.3g} → {after:.3g}"
                                                   if isinstance(before, float) and isinstance(after, float) else ""))
    return decisions


def _layer_rows(report: ValidationReport) -> list[tuple[str, str, str, str, str]]:
    """(layer, op, reference precision, candidate precision, decisions) for every layer with a
    stored weight in either model, and every layer a pass decided something for."""
    layers = {w: report.models[w]["layers"] for w in _WHO if w in report.models}
    decisions = _layer_decisions(report.pipeline)
    names = list(dict.fromkeys([n for w in _WHO for n in layers.get(w, {})] + list(decisions)))

    def precision(who: str, name: str) -> str:
        layer = layers.get(who, {}).get(name)
        return "-" if layer is None else f"{layer['weights']} / {layer['activations']}"

    rows = []
    for name in names:
        op = next((layers[w][name]["op"] for w in ("candidate", "reference") if name in layers.get(w, {})), "-")
        rows.append((name, op, precision("reference", name), precision("candidate", name),
                     "; ".join(decisions.get(name, [])) or "-"))
    return rows


def _markdown_models(report: ValidationReport) -> list[str]:
    """The model before and after as Markdown tables."""
    models = report.models
    who = [w for w in _WHO if w in models]
    lines = ["## Model before and after" if len(who) == 2 else "## The model", "",
             "| | " + " | ".join(who) + " |", "|---" * (len(who) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _model_rows(models)] + [""]
    lines += ["| op | " + " | ".join(who) + " | change |", "|---" * (len(who) + 2) + "|"]
    lines += [f"| {op} | " + " | ".join(str(c) for c in counts) + f" | {change} |"
              for op, counts, change in _op_rows(models)] + [""]
    lines += ["| weights by dtype | " + " | ".join(who) + " |", "|---" * (len(who) + 1) + "|"]
    lines += [f"| {dtype} | " + " | ".join(format_bytes(b) for b in counts) + " |"
              for dtype, counts in _dtype_rows(models)] + [""]
    rows = _layer_rows(report)
    if rows:
        lines += ["| layer | op | reference weights / input | candidate weights / input | decisions |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows] + [""]
    return lines


# ---------------------------------------------------------------------------------- the page

_CSS = """
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


def _e(value: object) -> str:
    return html.escape(str(value))


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "…"


# A cell that reads as a number (counts, sizes, times, "12 → 32", "-"): its column is right-aligned.
_NUMERIC = re.compile(r"^([-+]?[\d.]|-$|n/a$|$)")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], css_id: str, *, tall: bool = False) -> str:
    """A table in its own box, which scrolls when the table is wider (or, ``tall``, longer) than the
    page. Columns of numbers are right-aligned, others left; long text wraps in a column of its own."""
    numeric = [bool(rows) and all(_NUMERIC.match(str(row[i])) for row in rows) for i in range(len(header))]
    head = "".join(f'<th class="num">{_e(h)}</th>' if numeric[i] else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header))

    def cell(i: int, value: object) -> str:
        text = str(value)
        css = "num" if numeric[i] else "prose" if len(text) > 40 else ""
        return f'<td class="{css}">{_e(text)}</td>' if css else f"<td>{_e(text)}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    box = "scroll tall" if tall else "scroll"
    return f'<div class="{box}"><table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _svg(title: str, css_id: str, width: float, height: float, body: str) -> str:
    """A plot: an SVG that keeps its proportions when the column is narrower than ``width``."""
    return (f'<figure><svg id="{css_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{_e(title)}">'
            f'<text x="{width / 2:.0f}" y="18" font-size="13" text-anchor="middle" font-weight="600">{_e(title)}</text>'
            f'{body}</svg><figcaption>{_e(title)}</figcaption></figure>')


def _left_margin(*labels: str) -> float:
    """Room left of the y axis for its value labels (about 6.6 px a character at 11 px) and the unit."""
    return max(56.0, 26 + 6.6 * max(len(label) for label in labels))


def _ticks(xs: Sequence[float], labels: Sequence[str], y: float) -> str:
    """Labels under an x axis, slanted; shortened (hover shows them) so that none runs past the
    plot's left edge: a slanted label reaches about 5.7 px a character to the left of its point."""
    return "".join(f'<text x="{x:.1f}" y="{y}" font-size="11" text-anchor="end" transform="rotate(-30 {x:.1f} {y})">'
                   f'{_e(_short(label, max(4, min(16, int((x - 4) / 5.7)))))}<title>{_e(label)}</title></text>'
                   for x, label in zip(xs, labels))


def _y_axis(left: float, top: float, plot_h: float, right: float, high: str, low: str, unit: str) -> str:
    return (f'<line x1="{left}" y1="{top + plot_h}" x2="{right}" y2="{top + plot_h}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
            f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{high}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">{low}</text>'
            f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
            f'text-anchor="middle">{_e(unit)}</text>')


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
                    f'<title>{_e(label)}: {text} {_e(unit)}</title></rect>'
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
                     f'<text x="{x + 14:.1f}" y="37" font-size="11">{_e(name)}</text>')
    for i, (category, label) in enumerate(zip(categories, labels)):
        y0 = top + i * group_h
        colour = {"new": "#1f8a4c", "gone": _MARKED}.get(marks.get(category, ""), "#1d2330")
        parts.append(f'<text x="{left - 6:.1f}" y="{y0 + group_h / 2 + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{colour}">{_e(label)}<title>{_e(category)}</title></text>')
        for j, (name, values) in enumerate(series):
            y = y0 + 4 + j * bar_h
            w = plot_w * values[i] / peak
            parts.append(f'<rect class="bar" x="{left:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 1}" '
                         f'fill="{colours[j]}"><title>{_e(category)}, {_e(name)}: '
                         f'{value_text(values[i])}</title></rect>'
                         f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 2:.1f}" font-size="10">{value_text(values[i])}</text>')
    bottom_y = top + group_h * len(categories)
    parts.append(f'<line x1="{left:.1f}" y1="{top - 2}" x2="{left:.1f}" y2="{bottom_y:.1f}" stroke="#888"/>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 8:.1f}" font-size="11" text-anchor="middle">'
                 f'{_e(unit)}</text>')
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
                   f'fill="{_MARKED if i == mark else _DATA}"><title>{_e(labels[i])}: {values[i]:.6g}</title></circle>'
                   for i, (x, y) in enumerate(zip(xs, ys)))
    marker = ""
    if mark is not None:
        anchor = "end" if xs[mark] > left + plot_w * 0.8 else "start" if xs[mark] < left + plot_w * 0.2 else "middle"
        marker = (f'<text x="{xs[mark]:.1f}" y="{max(ys[mark] - 10, top - 2):.1f}" font-size="11" fill="{_MARKED}" '
                  f'text-anchor="{anchor}">{_e(labels[mark])}</text>')
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
                    f'<title>{_e(label)}: {x:.4g} {_e(x_unit)}, {y:.6g} {_e(y_unit)}</title></circle>')
        if marked:
            anchor = "end" if cx > left + plot_w * 0.8 else "start" if cx < left + plot_w * 0.2 else "middle"
            dots.append(f'<text x="{cx:.1f}" y="{max(cy - 10, top - 2):.1f}" font-size="11" fill="{colour}" '
                        f'text-anchor="{anchor}">{_e(label)}</text>')
    axis = (_y_axis(left, top, plot_h, left + plot_w, f"{y_high:.6g}", f"{y_low:.6g}", y_unit)
            + f'<text x="{left}" y="{top + plot_h + 16}" font-size="11" text-anchor="start">{x_low:.4g}</text>'
            f'<text x="{left + plot_w}" y="{top + plot_h + 16}" font-size="11" text-anchor="end">{x_high:.4g}</text>'
            f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{_e(x_unit)}</text>')
    return _svg(title, css_id, width, height, axis + "".join(dots))


def _models_section(report: ValidationReport) -> str:
    """The model before and after: counts, op histogram, weight bytes by dtype, each layer."""
    models = report.models
    who = [w for w in _WHO if w in models]
    parts = ["<h2>Model before and after</h2>" if len(who) == 2 else "<h2>The model</h2>",
             _table(("", *who), _model_rows(models), "models-table")]
    ops = _op_rows(models)
    added = [f"<b>{_e(op)}</b> ×{counts[-1]}" for op, counts, change in ops if change == "new"]
    removed = [f"<b>{_e(op)}</b> ×{counts[0]}" for op, counts, change in ops if change == "gone"]
    moved = [f"{_e(op)} {counts[0]} → {counts[1]}" for op, counts, change in ops if change not in ("", "new", "gone")]
    if len(who) == 2:
        parts.append(f'<p>Ops added: <span class="new">{", ".join(added) or "none"}</span>; removed: '
                     f'<span class="gone">{", ".join(removed) or "none"}</span>'
                     + (f"; count changed: {', '.join(moved)}" if moved else "") + ".</p>")
    dtypes = _dtype_rows(models)
    plots = [hbar_chart("Nodes by op type", [op for op, _, _ in ops],
                        [(w, [counts[i] for _, counts, _ in ops]) for i, w in enumerate(who)], "nodes", "plot-ops",
                        marks={op: change for op, _, change in ops if change in ("new", "gone")})]
    if dtypes:
        plots.append(hbar_chart("Weight bytes by dtype", [d for d, _ in dtypes],
                                [(w, [counts[i] for _, counts in dtypes]) for i, w in enumerate(who)], "bytes",
                                "plot-dtype-bytes", value_text=format_bytes))
    parts.append(f'<div class="plots">{"".join(plots)}</div>')
    rows = _layer_rows(report)
    if rows:
        stored = {}
        for layer in models.get("candidate", models[who[-1]])["layers"].values():
            stored[layer["weights"]] = stored.get(layer["weights"], 0) + 1
        census = ", ".join(f"{count} {dtype}" for dtype, count in sorted(stored.items(), key=lambda kv: -kv[1]))
        parts.append(f"<h3>Layers</h3><p>Weights of the {who[-1]}'s {sum(stored.values())} layers with a stored "
                     f"weight: {_e(census or 'none')}. For each: the dtype its weight is stored in and the one its "
                     "input arrives in (uint8 or int8 where it comes through QuantizeLinear/DequantizeLinear); "
                     "decisions come from the passes' statistics.</p>"
                     + _table(("layer", "op", *(f"{w} weights / input" for w in who), "decisions"),
                              [row if len(who) == 2 else (row[0], row[1], row[3], row[4]) for row in rows],
                              "precision-table", tall=True))
    return "".join(parts)


def _search_section(search: dict) -> str:
    """The optimizer's candidates, its Pareto front (plots), and the decision per layer."""
    done = [c for c in search["candidates"] if c["score"] is not None]
    rows = [("*" if c["name"] == search["best"] else "", c["name"], c["origin"], f"{c['score']:.6f}",
             "-" if c["metric"] is None else f"{c['metric']:.4f}", f"{c['latency_ms']:.3f} ms",
             f"{c['size'] / 2**20:.3f} MB", "yes" if c["meets"] else "no", "yes" if c["name"] in search["pareto"] else "",
             f"{c['seconds']:.1f} s" + (" (cached)" if c["cached"] else "")) for c in done]
    rows += [("", c["name"], c["origin"], "-", "-", "-", "-", "error", "", c["error"]) for c in search["candidates"]
             if c["score"] is None]
    parts = [f"<h2>Search</h2><p>Budget: {_e(search['budget']['text'])} on {_e(search['budget']['data'])}; "
             f"objective {_e(search['objective'])}; chosen <b>{_e(search['best'] or 'none')}</b>; search wall time "
             f"{search['seconds']:.1f} s ({_e(search['stopped'])}).</p>",
             _table(("", "candidate", "origin", "score", "metric", "latency", "size", "meets budget", "Pareto",
                     "time"), rows, "search-table")]
    if done:
        points = [(c["name"], c["latency_ms"], c["score"], c["name"] == search["best"]) for c in done]
        sizes = [(c["name"], c["size"] / 2**20, c["score"], c["name"] == search["best"]) for c in done]
        parts.append('<div class="plots">' + scatter_chart("Candidates: accuracy vs latency", points,
                                                           "latency (ms, median on the target)", "score",
                                                           "plot-pareto-latency")
                     + scatter_chart("Candidates: accuracy vs size", sizes, "weights (MB)", "score",
                                     "plot-pareto-size") + "</div>")
    if search["layers"]:
        parts.append("<h3>Decision per layer</h3>" + _table(
            ("layer", "op", "parameters", "decision", "local error", "sensitivity", "predicted drop", "saves", "why"),
            [(r["layer"], r["op"], f"{r['params']:,}", r["decision"], r["local_error"], r["gain"],
              r["predicted_drop"], f"{r['value']} {r['unit']}", r["why"]) for r in search["layers"]],
            "layers-table", tall=True))
    parts.append(f"<h3>Recipe</h3><pre>{_e(search['recipe'])}</pre>")
    return "".join(parts)


def _pipeline_section(pipeline: dict) -> str:
    """The per-pass table, and plots of weights, nodes, time, latency and output cosine per pass."""
    records = pipeline["records"]
    rows = []
    for r in records:
        accuracy = r["accuracy"] or {}
        rows.append((r["name"], f"{r['seconds']:.2f} s", f"{r['nodes_before']} → {r['nodes_after']}",
                     f"{r['bytes_before'] / 2**20:.3f} → {r['bytes_after'] / 2**20:.3f} MB",
                     f"{r['params_before']:,} → {r['params_after']:,}",
                     "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f} ms",
                     "-" if not r.get("kernels") else f"{r['kernels']['int8']} / {r['kernels']['float']}",
                     "-" if not accuracy else f"{max(a['max_abs'] for a in accuracy.values()):.3g}",
                     "-" if not accuracy else f"{min(a['cosine'] for a in accuracy.values()):.6f}"))
    table = _table(("pass", "time", "nodes", "weights", "parameters", "latency", "int8 / float kernels",
                    "max-abs", "cosine"), rows, "pipeline-table")
    plots = []
    if records:
        stages = ["input"] + [r["name"] for r in records]
        plots.append(bar_chart("Weights after each pass", stages, [records[0]["bytes_before"] / 2**20]
                               + [r["bytes_after"] / 2**20 for r in records], "MB", "plot-size"))
        plots.append(bar_chart("Nodes after each pass", stages, [records[0]["nodes_before"]]
                               + [r["nodes_after"] for r in records], "nodes", "plot-nodes"))
        plots.append(bar_chart("Wall time of each pass", [r["name"] for r in records],
                               [r["seconds"] for r in records], "s", "plot-time"))
        latencies = [pipeline.get("input_latency_ms")] + [r.get("latency_ms") for r in records]
        if any(v is not None for v in latencies):
            plots.append(bar_chart("CPU latency after each pass (quick, median)", stages, latencies, "ms",
                                   "plot-latency"))
    judged = [r for r in records if r["accuracy"]]
    if judged:  # the input model agrees with itself: cosine 1
        plots.append(line_chart("Output cosine vs the input model after each pass", ["input"] + [r["name"] for r in judged],
                                [1.0] + [min(a["cosine"] for a in r["accuracy"].values()) for r in judged], "cosine",
                                "plot-accuracy", width=520, height=260))
    note = f'<p class="note">Golden inputs: {_e(pipeline.get("golden_note", ""))}.</p>'
    return f"<h2>Pipeline</h2>{table}{note}<div class=\"plots\">{''.join(plots)}</div>"


def _layerwise_section(layerwise: dict) -> str:
    """The error of every shared intermediate tensor, plotted and tabled, the first jump marked."""
    layers = layerwise["layers"]
    jump = layerwise["first_jump"]
    mark = next((i for i, layer in enumerate(layers) if jump and layer["tensor"] == jump["tensor"]), None)
    parts = ["<h2>Per-layer error</h2>"]
    if jump:
        parts.append(f"<p>The error jumps at <code>{_e(jump['tensor'])}</code> ({_e(jump['op_type'])} "
                     f"<code>{_e(jump['node'])}</code>, cosine {jump['cosine']:.6f}): {_e(layerwise['reason'])}.</p>")
    parts.append(line_chart("Cosine of each shared intermediate tensor", [layer["tensor"] for layer in layers],
                            [layer["cosine"] for layer in layers], "cosine", "plot-layers", mark))
    parts.append(_table(("tensor", "op", "node", "cosine", "max-abs", "relative max", ""),
                        [(layer["tensor"], layer["op_type"], layer["node"], f"{layer['cosine']:.6f}",
                          f"{layer['max_abs']:.3g}", f"{layer['rel_max']:.3g}", "first jump" if i == mark else "")
                         for i, layer in enumerate(layers)], "layerwise-table", tall=True))
    return "".join(parts)


def render_html(report: ValidationReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    parts = [f"<h1>onnxpress validation on <code>{_e(report.target)}</code></h1>",
             f'<p><span id="verdict" class="verdict {verdict.lower()}">{verdict}</span> '
             f"{_e(report.data_source)}, {report.samples} feeds; providers {_e(', '.join(report.providers))}</p>"]
    if report.failures:
        parts.append('<ul class="failures">' + "".join(f"<li>{_e(f)}</li>" for f in report.failures) + "</ul>")
    rows = report.summary_rows()
    if rows:
        parts.append("<h2>Reference and candidate</h2>" + _table(("", "reference", "candidate"), rows, "summary-table"))
        plots = []
        if "reference" in report.size and "candidate" in report.size:
            plots.append(bar_chart("Model size", ["reference", "candidate"],
                                   [report.size["reference"] / 2**20, report.size["candidate"] / 2**20], "MB",
                                   "plot-validate-size"))
        if "reference" in report.latency and "candidate" in report.latency:
            plots.append(bar_chart("Latency on the target (median)", ["reference", "candidate"],
                                   [report.latency["reference"].median_ms, report.latency["candidate"].median_ms],
                                   "ms", "plot-validate-latency"))
        parts.append(f'<div class="plots">{"".join(plots)}</div>')
    if report.models:
        parts.append(_models_section(report))
    if report.metrics:
        parts.append("<h2>Outputs</h2>" + _table(
            ("output", "judged by", "cosine", "max-abs", "mean-abs", "p50", "p90", "p99", "NaN/Inf"),
            [(n, s.judged(), f"{s.cosine:.6f}", f"{s.max_abs:.3g}", f"{s.mean_abs:.3g}", f"{s.p50_abs:.3g}",
              f"{s.p90_abs:.3g}", f"{s.p99_abs:.3g}", s.nonfinite) for n, s in report.metrics.items()],
            "outputs-table"))
        if report.top1_agreement is not None:
            parts.append(f"<p>Top-1 agreement: {report.top1_agreement:.4f}</p>")
    if report.pipeline:
        parts.append(_pipeline_section(report.pipeline))
    if report.search:
        parts.append(_search_section(report.search))
    if report.layerwise and report.layerwise["layers"]:
        parts.append(_layerwise_section(report.layerwise))
    if report.bundle:
        ops = "; ".join(f"{k}: {', '.join(v)}" for k, v in report.bundle["operators"].items())
        parts.append(f"<h2>Edge bundle</h2><p><code>{_e(report.bundle['folder'])}</code>: model.ort "
                     f"({report.bundle['model_bytes']:,} bytes), required_operators.config ({_e(ops)}).</p>")
    if report.hardware:
        q = report.hardware["quantization_defaults"]
        parts.append(f"<h2>Host and target</h2><p>{_e(report.hardware['cpu'])}. Target int8 defaults: activations "
                     f"{_e(q['activation_type'])}, weights {_e(q['weight_type'])}, reduce_range {q['reduce_range']} "
                     f"({_e(q['reason'])}).</p>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>onnxpress report: "
            f"{_e(report.target)} {verdict}</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
