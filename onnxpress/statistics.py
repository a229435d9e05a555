"""The one activation-statistics collector: streaming, bounded memory whatever the sample count.

Every tensor of interest is exposed as an output and the model runs on one calibration sample
at a time; each tensor's statistics are updated and the sample's activations dropped. Kept per
tensor: count, min, max, mean; histograms of positive and negative magnitudes (for percentile
and entropy ranges; a histogram's range doubles, merging bin pairs, when a larger value
arrives, so one pass suffices); and, along a channel axis when asked, per-channel absolute
maximum, mean and mean square, and optionally the full second-moment matrix (for activation-
aware pruning and low-rank factorization). Samples may differ in shape.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import modelinfo, runtime
from onnxpress.feeds import check_feed

logger = logging.getLogger(__name__)

DEFAULT_BINS = 2048


@dataclass
class TensorStats:
    """Streaming statistics of one tensor over calibration samples."""

    name: str
    bins: int = DEFAULT_BINS
    channel_axis: int | None = None
    full_second_moment: bool = False
    count: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    sum: float = 0.0
    hist_range: float = 0.0
    hist_pos: np.ndarray = field(default=None)  # type: ignore[assignment]
    hist_neg: np.ndarray = field(default=None)  # type: ignore[assignment]
    channel_absmax: np.ndarray | None = None
    channel_sum: np.ndarray | None = None
    channel_sqsum: np.ndarray | None = None
    channel_rows: int = 0
    second_moment: np.ndarray | None = None
    _pending: list = field(default_factory=list, repr=False)
    _pending_rows: int = 0

    def __post_init__(self) -> None:
        if self.hist_pos is None:
            self.hist_pos = np.zeros(self.bins, np.int64)
            self.hist_neg = np.zeros(self.bins, np.int64)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def update(self, array: np.ndarray) -> None:
        data = np.asarray(array, dtype=np.float32)
        if data.size == 0:
            return
        flat = data.ravel()
        finite = flat[np.isfinite(flat)]
        if finite.size == 0:
            return
        self.count += finite.size
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.sum += float(finite.sum(dtype=np.float64))
        self._histogram(finite)
        if self.channel_axis is not None and data.ndim > 0:
            self._channels(data)

    def _histogram(self, values: np.ndarray) -> None:
        peak = max(abs(self.min), abs(self.max))
        if peak == 0.0:
            peak = 1e-12
        if self.hist_range == 0.0:
            self.hist_range = peak
        while peak > self.hist_range:  # double the range: pairs of bins merge into one
            merged = self.hist_pos.reshape(-1, 2).sum(1)
            self.hist_pos = np.concatenate([merged, np.zeros_like(merged)])
            merged = self.hist_neg.reshape(-1, 2).sum(1)
            self.hist_neg = np.concatenate([merged, np.zeros_like(merged)])
            self.hist_range *= 2
        width = self.hist_range / self.bins
        for values_side, hist in ((values[values > 0], self.hist_pos), (-values[values < 0], self.hist_neg)):
            if values_side.size:
                index = np.minimum((values_side / width).astype(np.int64), self.bins - 1)
                hist += np.bincount(index, minlength=self.bins)
        zeros = int(np.count_nonzero(values == 0))
        self.hist_pos[0] += zeros

    def _channels(self, data: np.ndarray) -> None:
        axis = self.channel_axis if self.channel_axis >= 0 else data.ndim + self.channel_axis
        if axis >= data.ndim:
            return
        rows32 = np.moveaxis(data, axis, -1).reshape(-1, data.shape[axis])
        rows = rows32.astype(np.float64)
        if self.channel_absmax is None:
            channels = rows.shape[1]
            self.channel_absmax = np.zeros(channels)
            self.channel_sum = np.zeros(channels)
            self.channel_sqsum = np.zeros(channels)
            if self.full_second_moment:
                self.second_moment = np.zeros((channels, channels))
        if rows.shape[1] != self.channel_absmax.shape[0]:
            logger.warning("statistics: %s changed its channel count; channel statistics skipped", self.name)
            return
        self.channel_absmax = np.maximum(self.channel_absmax, np.abs(rows).max(0))
        self.channel_sum += rows.sum(0)
        self.channel_sqsum += (rows * rows).sum(0)
        if self.second_moment is not None:
            # Adding a C x C product per sample costs more than the product itself for short
            # samples: rows are batched (bounded: about 2048 rows) and multiplied together.
            self._pending.append(np.ascontiguousarray(rows32, dtype=np.float32))
            self._pending_rows += rows32.shape[0]
            if self._pending_rows >= 2048:
                self.flush()
        self.channel_rows += rows.shape[0]

    def flush(self) -> None:
        """Fold batched rows into ``second_moment`` (``collect`` calls it at the end)."""
        if self._pending and self.second_moment is not None:
            block = np.concatenate(self._pending)
            self.second_moment += block.T @ block  # float32 products, summed in float64
        self._pending, self._pending_rows = [], 0

    # ----------------------------------------------------------------------------- ranges

    def range(self, method: str = "minmax", percentile: float = 99.999) -> tuple[float, float]:
        """The (low, high) range to quantize this tensor with, by ``minmax``, ``percentile`` or ``entropy``."""
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax":
            return self.min, self.max
        if method == "percentile":
            tail = self.count * (100.0 - percentile) / 200.0  # each side clips half the tail
            high = self._clip(self.hist_pos, tail) if self.max > 0 else self.max
            low = -self._clip(self.hist_neg, tail) if self.min < 0 else self.min
            return max(low, self.min), min(high, self.max)
        if method == "entropy":
            threshold = self._entropy_threshold()
            return max(self.min, -threshold), min(self.max, threshold)
        raise ValueError(f"unknown range method {method!r}")

    def _clip(self, hist: np.ndarray, tail: float) -> float:
        """Smallest magnitude that leaves at most ``tail`` values above it."""
        above = np.cumsum(hist[::-1])[::-1]  # above[i]: values in bins i and higher
        index = int(np.searchsorted(-above, -tail, side="left"))
        return min(self.hist_range, (index + 1) * self.hist_range / self.bins)

    def _entropy_threshold(self, levels: int = 128) -> float:
        """TensorRT-style KL-divergence calibration on the histogram of magnitudes."""
        hist = (self.hist_pos + self.hist_neg).astype(np.float64)
        width = self.hist_range / self.bins
        last = int(np.nonzero(hist)[0].max()) + 1 if hist.any() else 1
        if last <= levels:
            return last * width
        best, best_kl = last, np.inf
        for end in range(levels, last + 1, max(1, (last - levels) // 128)):
            reference = hist[:end].copy()
            reference[-1] += hist[end:].sum()
            edges = np.linspace(0, end, levels + 1).astype(np.int64)
            edges = np.unique(edges)
            sums = np.add.reduceat(hist[:end], edges[:-1])
            nonzero = np.add.reduceat((hist[:end] > 0).astype(np.float64), edges[:-1])
            spread = np.repeat(np.divide(sums, nonzero, out=np.zeros_like(sums), where=nonzero > 0),
                               np.diff(edges))
            candidate = np.where(hist[:end] > 0, spread, 0.0)
            p = reference / reference.sum()
            q_total = candidate.sum()
            if q_total == 0:
                continue
            q = candidate / q_total
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best, best_kl = end, kl
        return (best + 0.5) * width

    def rounding_error(self, step: float, levels: int = 127) -> float:
        """Mean squared error of symmetric quantization with ``step`` and ``levels`` steps either
        side of 0, estimated on the histogram of magnitudes (bin centres): ``v²`` below half a
        step (rounds to 0), ``step²/12`` inside the grid, the distance squared beyond it (clipped)."""
        counts = (self.hist_pos + self.hist_neg).astype(np.float64)
        if counts.sum() == 0:
            return 0.0
        centres = (np.arange(self.bins) + 0.5) * (self.hist_range / self.bins)
        limit = levels * step
        error = np.where(centres < step / 2, centres ** 2,
                         np.where(centres <= limit, step ** 2 / 12.0, (centres - limit) ** 2))
        return float((counts * error).sum() / counts.sum())

    def channel_mean(self) -> np.ndarray | None:
        return None if self.channel_sum is None else self.channel_sum / max(1, self.channel_rows)

    def channel_mean_square(self) -> np.ndarray | None:
        return None if self.channel_sqsum is None else self.channel_sqsum / max(1, self.channel_rows)


@dataclass
class ActivationStats:
    """Statistics of many tensors, collected in one streaming pass over calibration data."""

    tensors: dict[str, TensorStats]
    samples: int
    producers: dict[str, tuple[str, str]]  # tensor -> (op_type, node name)

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def ranges(self, method: str = "minmax", percentile: float = 99.999) -> dict[str, tuple[float, float]]:
        return {name: stats.range(method, percentile) for name, stats in self.tensors.items() if stats.count}


def collect(model: ir.Model, calibration: Iterable[Mapping[str, np.ndarray]], *,
            tensors: Sequence[str] | None = None, channel_axes: Mapping[str, int] | None = None,
            second_moments: Iterable[str] = (), bins: int = DEFAULT_BINS, limit: int | None = None,
            progress: Callable[[int, int | None], None] | None = None, runner: Any = None) -> ActivationStats:
    """Run ``model`` on each calibration sample and gather statistics of the chosen tensors.

    Args:
        model: the float model.
        calibration: feeds (any iterable; read once).
        tensors: tensor names (default: every float graph input and intermediate of the main graph).
        channel_axes: tensor -> channel axis for per-channel statistics.
        second_moments: tensors whose full channel second-moment matrix is kept.
        bins: histogram bins per sign.
        limit: stop after this many samples.
        progress: called as ``progress(done, total)`` after each sample.
        runner: the ``Runner`` whose target's providers run the model (the CPU by default).
    """
    exposed, order = modelinfo.expose_intermediates(model, tensors, include_inputs=True)
    axes = dict(channel_axes or {})
    full = set(second_moments)
    stats = {name: TensorStats(name, bins=bins, channel_axis=axes.get(name), full_second_moment=name in full)
             for name, _, _ in order}
    producers = {name: (op, node) for name, op, node in order}
    total = len(calibration) if hasattr(calibration, "__len__") else None  # type: ignore[arg-type]
    if limit is not None and total is not None:
        total = min(total, limit)
    done = 0
    runner = runner if runner is not None else runtime.Runner("cpu")
    # Basic optimisation only: fusions would swallow the tensors being collected.
    with runner.session(exposed, optimization="basic") as session:
        wanted = [n for n in session.output_names if n in stats]
        for feed in calibration:
            if limit is not None and done >= limit:
                break
            check_feed(model, feed, f"calibration: sample {done}")
            for name, value in session.run(feed, wanted).items():
                stats[name].update(value)
            for spec_name in session.input_names:
                if spec_name in stats:
                    stats[spec_name].update(feed[spec_name])
            done += 1
            if progress:
                progress(done, total)
    for tensor in stats.values():
        tensor.flush()
    if done == 0:
        from onnxpress.errors import DataError

        raise DataError("calibration: the source gave no samples")
    logger.info("statistics: %d tensors over %d samples", len(stats), done)
    return ActivationStats(stats, done, producers)
