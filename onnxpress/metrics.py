"""Error statistics between reference and candidate outputs, and task metrics.

Which measure judges an output:

- An output of several values per row (per index of its first axis, the batch) is judged by
  its cosine to the reference, per sample and per channel group of different scale
  (``ErrorStats.worst_cosine``).
- An output of one value per row (a regression ``[N, 1]``, a probability, a label, a scalar) is
  judged by its relative error, ``max|candidate - reference| / max|reference|`` over all samples
  (``ErrorStats.rel_max``): a cosine over one value is 1 whenever the signs agree, and one over
  a batch of them does not see the whole column scaled (0.78 -> 0.44 has cosine 1).

Both end in one figure, ``ErrorStats.score`` (1 is exact), which verdicts and the accuracy
floor compare with a cosine tolerance ``c``: a one-value output meets it when its relative error
is at most ``1 - c`` (0.99: 1 % of the reference's largest magnitude).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

Outputs = Mapping[str, np.ndarray]

# What judges an output (``ErrorStats.measure``).
COSINE = "cosine"
RELATIVE_ERROR = "relative error"


@dataclass(frozen=True)
class ErrorStats:
    """How far a candidate output is from the reference, over all samples.

    ``cosine`` is the cosine similarity of the flattened outputs, computed per sample and
    averaged (1.0 when both are all-zero); ``rel_max`` is ``max_abs`` over the reference's
    largest magnitude. ``group_cosine`` is the worst cosine of a channel group when the output's
    channels mix quantities of different scale (a detector's boxes, in hundreds, beside class
    scores in [0, 1]): there a destroyed score head hides behind a high overall cosine.
    ``groups`` names those groups (``"axis 1 [4:84]"``); both are the overall values otherwise.
    ``measure`` is what judges the output: ``"cosine"``, or ``"relative error"`` for an output of
    one value per row (see the module's docstring and ``score``).
    """

    max_abs: float
    mean_abs: float
    p50_abs: float
    p90_abs: float
    p99_abs: float
    rel_max: float
    cosine: float
    min_cosine: float
    ref_max_abs: float
    ref_nonfinite: int
    nonfinite: int
    elements: int
    group_cosine: float = 1.0
    worst_group: str = ""
    measure: str = COSINE

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score}

    @property
    def worst_cosine(self) -> float:
        """The lower of the overall cosine and the worst channel group's."""
        return min(self.cosine, self.group_cosine)

    @property
    def score(self) -> float:
        """The figure a cosine tolerance ``c`` is compared with (1 is exact, at least -1).

        ``worst_cosine`` for an output judged by cosine; ``1 - rel_max`` for one judged by its
        relative error, so that ``score >= c`` holds exactly when the relative error is at most
        ``1 - c``. Verdicts (``validate``), the pipeline's accuracy floor and the passes' own
        searches (``PassContext.score``) all compare this one figure.
        """
        if self.measure == RELATIVE_ERROR:
            return max(-1.0, 1.0 - self.rel_max)
        return self.worst_cosine

    def judged(self) -> str:
        """What judged the output, with its value: ``cosine 0.998765`` (the worst channel group's
        when lower) or ``relative error 0.0123``."""
        if self.measure == RELATIVE_ERROR:
            return f"relative error {self.rel_max:.3g}"
        return f"cosine {self.worst_cosine:.6f}"

    def within(self, *, atol: float, rtol: float) -> bool:
        """Whether every element is within ``atol + rtol * max|reference|`` (and finite)."""
        return self.nonfinite <= self.ref_nonfinite and self.max_abs <= atol + rtol * self.ref_max_abs


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# Channels whose typical magnitudes differ by more than this factor are judged apart.
SCALE_GAP = 10.0
# Only axes this short are read as channels (an anchor or token axis is not).
_MAX_CHANNELS = 256


def channel_groups(reference: Sequence[np.ndarray]) -> tuple[int, list[np.ndarray]] | None:
    """The channel axis and groups of channel indices of different scale, or None.

    Each axis after the first with 2 to 256 entries is a candidate; a channel's scale is its
    RMS over the samples and other axes. Sorted by scale, channels split where neighbours
    differ by more than ``SCALE_GAP``; the axis with the widest spread of scales is taken.
    """
    first = np.asarray(reference[0])
    if first.ndim < 2 or not np.issubdtype(first.dtype, np.floating):
        return None
    best = None
    for axis in range(1, first.ndim):
        size = first.shape[axis]
        if not 2 <= size <= _MAX_CHANNELS or any(np.asarray(r).shape[axis] != size for r in reference):
            continue
        squares = sum(np.nan_to_num(np.moveaxis(np.asarray(r, np.float64), axis, 0).reshape(size, -1) ** 2)
                      .mean(axis=1) for r in reference)
        rms = np.sqrt(squares / len(reference))
        order = np.argsort(rms)
        scales = np.maximum(rms[order], 1e-12)
        cuts = np.nonzero(scales[1:] / scales[:-1] > SCALE_GAP)[0] + 1
        if not len(cuts):
            continue
        spread = scales[-1] / scales[0]
        if best is None or spread > best[0]:
            best = (spread, axis, [np.sort(g) for g in np.split(order, cuts)])
    return None if best is None else (best[1], best[2])


def _describe_group(axis: int, channels: np.ndarray) -> str:
    if len(channels) > 1 and np.all(np.diff(channels) == 1):
        return f"axis {axis} [{channels[0]}:{channels[-1] + 1}]"
    shown = ", ".join(str(c) for c in channels[:6]) + (", ..." if len(channels) > 6 else "")
    return f"axis {axis} [{shown}]"


def _group_cosines(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> tuple[float, str] | None:
    found = channel_groups(reference)
    if found is None:
        return None
    axis, groups = found
    worst = None
    for channels in groups:
        cosines = []
        for ref, cand in zip(reference, candidate):
            r = np.take(np.asarray(ref, np.float64), channels, axis=axis).ravel()
            c = np.take(np.asarray(cand, np.float64), channels, axis=axis).ravel()
            finite = np.isfinite(r) & np.isfinite(c)
            cosines.append(_cosine(r[finite], c[finite]))
        value = float(np.mean(cosines))
        if worst is None or value < worst[0]:
            worst = (value, _describe_group(axis, channels))
    return worst


def values_per_row(shape: Sequence[int]) -> int:
    """Values per index of the first axis (the batch): 1 for a scalar, ``[N]`` and ``[N, 1]``."""
    return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1


def error_stats(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> ErrorStats:
    """Compare one output across samples (lists of arrays of equal shapes, pairwise).

    The output is judged by its relative error when the reference has one value per row
    (``values_per_row``), else by its cosine (see the module's docstring).
    """
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate have different sample counts")
    diffs, cosines = [], []
    ref_nonfinite = cand_nonfinite = 0
    ref_max = 0.0
    for ref, cand in zip(reference, candidate):
        ref = np.asarray(ref)
        cand = np.asarray(cand)
        if ref.shape != cand.shape:
            raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        ref_nonfinite += int(np.count_nonzero(~np.isfinite(r)))
        cand_nonfinite += int(np.count_nonzero(~np.isfinite(c)))
        finite = np.isfinite(r) & np.isfinite(c)
        r, c = r[finite], c[finite]
        diffs.append(np.abs(r - c))
        cosines.append(_cosine(r, c))
        if r.size:
            ref_max = max(ref_max, float(np.max(np.abs(r))))
    diff = np.concatenate(diffs) if diffs else np.zeros(0)
    max_abs = float(diff.max()) if diff.size else 0.0
    cosine = float(np.mean(cosines)) if cosines else 1.0
    group = _group_cosines(reference, candidate) if reference else None
    return ErrorStats(
        max_abs=max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        p50_abs=float(np.quantile(diff, 0.5)) if diff.size else 0.0,
        p90_abs=float(np.quantile(diff, 0.9)) if diff.size else 0.0,
        p99_abs=float(np.quantile(diff, 0.99)) if diff.size else 0.0,
        rel_max=max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf")),
        cosine=cosine,
        min_cosine=float(np.min(cosines)) if cosines else 1.0,
        ref_max_abs=ref_max,
        ref_nonfinite=ref_nonfinite,
        nonfinite=cand_nonfinite,
        elements=int(sum(d.size for d in diffs)),
        group_cosine=group[0] if group else cosine,
        worst_group=group[1] if group else "",
        measure=RELATIVE_ERROR if reference and values_per_row(np.shape(reference[0])) == 1 else COSINE,
    )


def compare(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> dict[str, ErrorStats]:
    """Per-output error statistics; the candidate must produce every reference output."""
    if not reference:
        return {}
    stats = {}
    for name in reference[0]:
        missing = [i for i, out in enumerate(candidate) if name not in out]
        if missing:
            raise KeyError(name)
        stats[name] = error_stats([r[name] for r in reference], [c[name] for c in candidate])
    return stats


def top1(outputs: Sequence[Outputs], output: str | None = None) -> np.ndarray:
    """Arg-max over the last axis of one output (the first when unnamed), all samples joined."""
    name = output or next(iter(outputs[0]))
    return np.concatenate([np.asarray(o[name]).reshape(-1, np.asarray(o[name]).shape[-1]).argmax(-1)
                           for o in outputs])


def top1_agreement(reference: Sequence[Outputs], candidate: Sequence[Outputs],
                   output: str | None = None) -> float:
    """Share of rows whose arg-max class is the same in both."""
    return float(np.mean(top1(reference, output) == top1(candidate, output)))


def accuracy(outputs: Sequence[Outputs], labels: np.ndarray, output: str | None = None) -> float:
    """Top-1 accuracy of class scores against integer labels."""
    predicted = top1(outputs, output)
    labels = np.asarray(labels).reshape(-1)
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.size} predictions but {labels.size} labels")
    return float(np.mean(predicted == labels))
