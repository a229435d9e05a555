"""The validation report and its renderers: text rows, Markdown, JSON and HTML.

``ValidationReport`` is what ``validate`` returns. The HTML page is self-contained (inline CSS
and SVG, no scripts, no downloads); it shows the verdict and every failed criterion, the reference/candidate table, per-output
errors, the pipeline's per-pass table, and plots of size, latency and accuracy per pass and of
the per-layer error when a layer-wise comparison ran.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from onnxpress.metrics import ErrorStats
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
            "hardware": self.hardware, "bundle": self.bundle, "search": self.search,
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



_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1d2330;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #dde}
.verdict{display:inline-block;padding:.25em .8em;border-radius:4px;color:#fff;font-weight:600}
.passed{background:#1f8a4c}.failed{background:#c0392b}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #d5d9e3;padding:.3em .7em;text-align:right}
th{background:#f2f4f8} td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0} figcaption{font-size:.9em;color:#556}
ul.failures li{color:#c0392b} .note{color:#556}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], css_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str, css_id: str,
              width: int = 520, height: int = 260) -> str:
    """An SVG bar chart with value labels."""
    left, bottom, top = 56, 58, 40
    plot_h = height - bottom - top
    peak = max([v for v in values if v is not None] + [1e-12])
    step = (width - left - 10) / max(1, len(values))
    bars = []
    for i, (label, value) in enumerate(zip(labels, values)):
        x = left + i * step + step * 0.15
        w = step * 0.7
        h = 0 if value is None else plot_h * value / peak
        y = top + plot_h - h
        text = "n/a" if value is None else f"{value:.3g}"
        bars.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#3b6fb6">'
                    f'<title>{_e(label)}: {text} {_e(unit)}</title></rect>'
                    f'<text x="{x + w / 2:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">{text}</text>'
                    f'<text x="{x + w / 2:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="end" '
                    f'transform="rotate(-30 {x + w / 2:.1f} {height - bottom + 16})">{_e(label)}</text>')
    axis = (f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
            f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{peak:.3g}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>'
            f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
            f'text-anchor="middle">{_e(unit)}</text>')
    return (f'<figure><svg id="{css_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{_e(title)}"><text x="{width / 2}" y="18" font-size="13" '
            f'text-anchor="middle" font-weight="600">{_e(title)}</text>{axis}{"".join(bars)}</svg>'
            f'<figcaption>{_e(title)}</figcaption></figure>')


def line_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str, css_id: str,
               mark: int | None = None, width: int = 1060, height: int = 280) -> str:
    """An SVG line chart over ``labels`` (for per-layer errors); ``mark`` highlights one point."""
    left, bottom, top = 56, 40, 30
    plot_h, plot_w = height - bottom - top, width - left - 20
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    xs = [left + plot_w * (i / max(1, len(values) - 1)) for i in range(len(values))]
    ys = [top + plot_h * (1 - (v - low) / span) for v in values]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    dots = "".join(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{5 if i == mark else 2.5}" '
                   f'fill="{"#c0392b" if i == mark else "#3b6fb6"}"><title>{_e(labels[i])}: {values[i]:.6g}</title></circle>'
                   for i, (x, y) in enumerate(zip(xs, ys)))
    marker = ""
    if mark is not None:
        marker = (f'<text x="{xs[mark]:.1f}" y="{ys[mark] - 10:.1f}" font-size="11" fill="#c0392b" '
                  f'text-anchor="middle">{_e(labels[mark])}</text>')
    axis = (f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
            f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{high:.4g}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">{low:.4g}</text>'
            f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">layers in graph '
            f'order ({len(values)})</text>'
            f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
            f'text-anchor="middle">{_e(unit)}</text>')
    return (f'<figure><svg id="{css_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{_e(title)}"><text x="{width / 2}" y="18" font-size="13" '
            f'text-anchor="middle" font-weight="600">{_e(title)}</text>{axis}'
            f'<polyline fill="none" stroke="#3b6fb6" stroke-width="1.5" points="{points}"/>{dots}{marker}</svg>'
            f'<figcaption>{_e(title)}</figcaption></figure>')


def scatter_chart(title: str, points: Sequence[tuple[str, float, float, bool]], x_unit: str, y_unit: str,
                  css_id: str, width: int = 620, height: int = 340) -> str:
    """An SVG scatter of ``(label, x, y, highlighted)`` points (the optimizer's candidates)."""
    left, bottom, top, right = 64, 46, 34, 16
    plot_w, plot_h = width - left - right, height - bottom - top
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return left + plot_w * (x - x_low) / x_span, top + plot_h * (1 - (y - y_low) / y_span)

    dots = []
    for label, x, y, marked in points:
        cx, cy = at(x, y)
        colour = "#c0392b" if marked else "#3b6fb6"
        dots.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="{6 if marked else 4}" fill="{colour}">'
                    f'<title>{_e(label)}: {x:.4g} {_e(x_unit)}, {y:.6g} {_e(y_unit)}</title></circle>')
        if marked:
            dots.append(f'<text x="{cx:.1f}" y="{cy - 10:.1f}" font-size="11" fill="{colour}" '
                        f'text-anchor="middle">{_e(label)}</text>')
    axis = (f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
            f'<text x="{left}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{x_low:.4g}</text>'
            f'<text x="{left + plot_w}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{x_high:.4g}</text>'
            f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{_e(x_unit)}</text>'
            f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{y_high:.6g}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">{y_low:.6g}</text>'
            f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
            f'text-anchor="middle">{_e(y_unit)}</text>')
    return (f'<figure><svg id="{css_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{_e(title)}"><text x="{width / 2}" y="18" font-size="13" '
            f'text-anchor="middle" font-weight="600">{_e(title)}</text>{axis}{"".join(dots)}</svg>'
            f'<figcaption>{_e(title)}</figcaption></figure>')


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
            "layers-table"))
    parts.append(f"<h3>Recipe</h3><pre>{_e(search['recipe'])}</pre>")
    return "".join(parts)


def _pipeline_section(pipeline: dict) -> str:
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
                    "max-abs", "cosine"), rows,
                   "pipeline-table")
    stages = ["input"] + [r["name"] for r in records]
    sizes = [records[0]["bytes_before"] / 2**20] + [r["bytes_after"] / 2**20 for r in records] if records else []
    plots = [bar_chart("Weights after each pass", stages, sizes, "MB", "plot-size")] if records else []
    latencies = [pipeline.get("input_latency_ms")] + [r.get("latency_ms") for r in records]
    if records and any(v is not None for v in latencies):
        plots.append(bar_chart("CPU latency after each pass (quick, median)", stages, latencies, "ms",
                               "plot-latency"))
    cosines = [min(a["cosine"] for a in r["accuracy"].values()) for r in records if r["accuracy"]]
    if cosines:
        labels = [r["name"] for r in records if r["accuracy"]]
        plots.append(bar_chart("Output cosine vs the input model after each pass", labels, cosines, "cosine",
                               "plot-accuracy"))
    note = f'<p class="note">Golden inputs: {_e(pipeline.get("golden_note", ""))}.</p>'
    return f"<h2>Pipeline</h2>{table}{note}<div class=\"plots\">{''.join(plots)}</div>"


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
        layers = report.layerwise["layers"]
        jump = report.layerwise["first_jump"]
        mark = next((i for i, layer in enumerate(layers) if jump and layer["tensor"] == jump["tensor"]), None)
        parts.append("<h2>Per-layer error</h2>")
        if jump:
            parts.append(f"<p>The error jumps at <code>{_e(jump['tensor'])}</code> ({_e(jump['op_type'])} "
                         f"<code>{_e(jump['node'])}</code>, cosine {jump['cosine']:.6f}): {_e(report.layerwise['reason'])}.</p>")
        parts.append(line_chart("Cosine of each shared intermediate tensor", [layer["tensor"] for layer in layers],
                                [layer["cosine"] for layer in layers], "cosine", "plot-layers", mark))
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
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>onnxpress report: "
            f"{_e(report.target)} {verdict}</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
