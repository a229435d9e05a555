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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxpress._html import CSS, bar_chart, escape, hbar_chart, line_chart, scatter_chart, table
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

def _models_section(report: ValidationReport) -> str:
    """The model before and after: counts, op histogram, weight bytes by dtype, each layer."""
    models = report.models
    who = [w for w in _WHO if w in models]
    parts = ["<h2>Model before and after</h2>" if len(who) == 2 else "<h2>The model</h2>",
             table(("", *who), _model_rows(models), "models-table")]
    ops = _op_rows(models)
    added = [f"<b>{escape(op)}</b> ×{counts[-1]}" for op, counts, change in ops if change == "new"]
    removed = [f"<b>{escape(op)}</b> ×{counts[0]}" for op, counts, change in ops if change == "gone"]
    moved = [f"{escape(op)} {counts[0]} → {counts[1]}" for op, counts, change in ops if change not in ("", "new", "gone")]
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
                     f"weight: {escape(census or 'none')}. For each: the dtype its weight is stored in and the one its "
                     "input arrives in (uint8 or int8 where it comes through QuantizeLinear/DequantizeLinear); "
                     "decisions come from the passes' statistics.</p>"
                     + table(("layer", "op", *(f"{w} weights / input" for w in who), "decisions"),
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
    parts = [f"<h2>Search</h2><p>Budget: {escape(search['budget']['text'])} on {escape(search['budget']['data'])}; "
             f"objective {escape(search['objective'])}; chosen <b>{escape(search['best'] or 'none')}</b>; search wall time "
             f"{search['seconds']:.1f} s ({escape(search['stopped'])}).</p>",
             table(("", "candidate", "origin", "score", "metric", "latency", "size", "meets budget", "Pareto",
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
        parts.append("<h3>Decision per layer</h3>" + table(
            ("layer", "op", "parameters", "decision", "local error", "sensitivity", "predicted drop", "saves", "why"),
            [(r["layer"], r["op"], f"{r['params']:,}", r["decision"], r["local_error"], r["gain"],
              r["predicted_drop"], f"{r['value']} {r['unit']}", r["why"]) for r in search["layers"]],
            "layers-table", tall=True))
    parts.append(f"<h3>Recipe</h3><pre>{escape(search['recipe'])}</pre>")
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
    passes = table(("pass", "time", "nodes", "weights", "parameters", "latency", "int8 / float kernels",
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
    note = f'<p class="note">Golden inputs: {escape(pipeline.get("golden_note", ""))}.</p>'
    return f"<h2>Pipeline</h2>{passes}{note}<div class=\"plots\">{''.join(plots)}</div>"


def _layerwise_section(layerwise: dict) -> str:
    """The error of every shared intermediate tensor, plotted and tabled, the first jump marked."""
    layers = layerwise["layers"]
    jump = layerwise["first_jump"]
    mark = next((i for i, layer in enumerate(layers) if jump and layer["tensor"] == jump["tensor"]), None)
    parts = ["<h2>Per-layer error</h2>"]
    if jump:
        parts.append(f"<p>The error jumps at <code>{escape(jump['tensor'])}</code> ({escape(jump['op_type'])} "
                     f"<code>{escape(jump['node'])}</code>, cosine {jump['cosine']:.6f}): {escape(layerwise['reason'])}.</p>")
    parts.append(line_chart("Cosine of each shared intermediate tensor", [layer["tensor"] for layer in layers],
                            [layer["cosine"] for layer in layers], "cosine", "plot-layers", mark))
    parts.append(table(("tensor", "op", "node", "cosine", "max-abs", "relative max", ""),
                        [(layer["tensor"], layer["op_type"], layer["node"], f"{layer['cosine']:.6f}",
                          f"{layer['max_abs']:.3g}", f"{layer['rel_max']:.3g}", "first jump" if i == mark else "")
                         for i, layer in enumerate(layers)], "layerwise-table", tall=True))
    return "".join(parts)


def render_html(report: ValidationReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    parts = [f"<h1>onnxpress validation on <code>{escape(report.target)}</code></h1>",
             f'<p><span id="verdict" class="verdict {verdict.lower()}">{verdict}</span> '
             f"{escape(report.data_source)}, {report.samples} feeds; providers {escape(', '.join(report.providers))}</p>"]
    if report.failures:
        parts.append('<ul class="failures">' + "".join(f"<li>{escape(f)}</li>" for f in report.failures) + "</ul>")
    rows = report.summary_rows()
    if rows:
        parts.append("<h2>Reference and candidate</h2>" + table(("", "reference", "candidate"), rows, "summary-table"))
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
        parts.append("<h2>Outputs</h2>" + table(
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
        parts.append(f"<h2>Edge bundle</h2><p><code>{escape(report.bundle['folder'])}</code>: model.ort "
                     f"({report.bundle['model_bytes']:,} bytes), required_operators.config ({escape(ops)}).</p>")
    if report.hardware:
        q = report.hardware["quantization_defaults"]
        parts.append(f"<h2>Host and target</h2><p>{escape(report.hardware['cpu'])}. Target int8 defaults: activations "
                     f"{escape(q['activation_type'])}, weights {escape(q['weight_type'])}, reduce_range {q['reduce_range']} "
                     f"({escape(q['reason'])}).</p>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>onnxpress report: "
            f"{escape(report.target)} {verdict}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
