"""The pass API: what a pass declares, what the pipeline hands it, and what it gives back.

A pass is an ``onnx_ir`` pass (``ir.passes.InPlacePass`` or ``ir.passes.FunctionalPass``) that
also derives from :class:`Pass`:

```python
import onnx_ir as ir
import onnxpress as ox

class Scale(ox.Pass, ir.passes.InPlacePass):
    \"\"\"Multiply the model's first output by a constant.\"\"\"

    name = "scale"            # the registry key and the recipe's ``name = "scale"``
    lossless = False          # the pipeline holds lossless passes to float rounding
    needs_data = False        # True: the pipeline refuses to run it without calibration data

    def __init__(self, *, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor

    def call(self, model: ir.Model) -> ox.PassResult:
        ...                                   # self.context: the PassContext (or None)
        return ox.PassResult(model, modified=True, statistics={"factor": self.factor})
```

Third-party packages register such a class through the entry-point group ``onnxpress.passes``
(``scale = "mypackage.passes:Scale"``); a recipe then names it like a built-in.

The pipeline runs a pass with :meth:`Pass.run_in`, which binds a :class:`PassContext` for the
duration of the call: calibration data, held-out data for the pass's own accuracy decisions,
the target profile, the :class:`~onnxpress.runtime.Runner` (the only way to ONNX Runtime), a
statistics collector cached by model fingerprint and request, a progress callback, and the
teacher (the pipeline's input model, which ``distill`` trains toward). A pass never builds
sessions, reads files or prints; it returns its statistics in its :class:`PassResult`.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import onnx_ir as ir

from onnxpress.calibration import Calibration
from onnxpress.errors import DataError
from onnxpress.metrics import compare
from onnxpress.progress import Report, Step, Tracker, track

if TYPE_CHECKING:
    from onnxpress.layerwise import LayerwiseResult
    from onnxpress.runtime import Runner
    from onnxpress.statistics import ActivationStats
    from onnxpress.targets import Target

logger = logging.getLogger(__name__)

Metric = Callable[[Sequence[Mapping[str, np.ndarray]]], float]
Feed = Mapping[str, np.ndarray]
T = TypeVar("T")


@dataclass
class PassResult(ir.passes.PassResult):
    """``ir.passes.PassResult`` with the pass's statistics (what it changed, chose, skipped and why)."""

    statistics: dict[str, Any] = field(default_factory=dict)


class PassContext:
    """What the pipeline gives a pass while it runs.

    Attributes:
        calibration: feeds to tune on (None when the pipeline got none).
        evaluation: held-out feeds for the pass's own accuracy decisions (SmoothQuant's alpha,
            fallbacks, sensitivities): a fifth of the calibration source when none is given.
            The pipeline's verdict data is never among them.
        metric: a task metric over a model's outputs (higher is better), or None.
        target: the target profile (quantization defaults, tolerances, latency settings).
        runner: the :class:`~onnxpress.runtime.Runner` on that target.
        progress: called with a line from long steps (or None): a message, or how far a step
            got (a ``progress.Step``, a line too); see :meth:`say` and :meth:`track`.
        teacher: the model the pipeline was given, after its input checks (read-only: passes
            that learn from it, such as ``distill``, must not change it), or None.
    """

    def __init__(self, *, runner: Runner, calibration: Calibration | None = None,
                 evaluation: Calibration | None = None, metric: Metric | None = None,
                 progress: Report | None = None, teacher: ir.Model | None = None) -> None:
        self.runner = runner
        self.calibration = calibration
        self.evaluation = evaluation
        self.metric = metric
        self.progress = progress
        self.teacher = teacher
        self._statistics: dict[tuple[str, str], ActivationStats] = {}

    @classmethod
    def build(cls, *, runner: Runner, calibration: Calibration | None,
              evaluation: Calibration | None = None, **kwargs: Any) -> PassContext:
        """A context whose ``evaluation`` is the last fifth of ``calibration`` when none is given
        (the passes then calibrate on the rest)."""
        if calibration is not None and evaluation is None and len(calibration) >= 10:
            calibration, evaluation = calibration.split(0.8)
        return cls(runner=runner, calibration=calibration, evaluation=evaluation, **kwargs)

    @property
    def target(self) -> Target:
        return self.runner.target

    def say(self, message: str) -> None:
        """Report progress of a long step: a message (logged at INFO) or a ``progress.Step``
        (logged at DEBUG: a running step reports about once a second)."""
        logger.log(logging.DEBUG if isinstance(message, Step) else logging.INFO, "%s", message)
        if self.progress is not None:
            self.progress(message)

    def track(self, items: Iterable[T], task: str, *, total: int | None = None, unit: str = "") -> Iterator[T]:
        """``items``, telling the progress callback how many were handled (``progress.track``):
        ``for alpha in context.track(alphas, "smoothquant alpha", unit="alphas")``."""
        return track(items, self.say, task, total=total, unit=unit)

    def step(self, task: str, total: int | None = None, unit: str = "") -> Tracker:
        """A ``progress.Tracker`` for a step counted by hand (``advance``, ``update``, ``end``;
        or use it as a context manager)."""
        return Tracker(self.say, task, total, unit)

    def statistics(self, model: ir.Model, **request: Any) -> ActivationStats:
        """Activation statistics of ``model`` over the calibration data.

        ``request`` is passed to :func:`onnxpress.statistics.collect` (``tensors``,
        ``channel_axes``, ``second_moments``, ``limit``, ``bins``). Results are cached by the
        model's content fingerprint and the request, so passes that ask twice pay once.
        """
        from onnxpress.modelinfo import fingerprint
        from onnxpress.statistics import collect

        if self.calibration is None:
            raise DataError("this pass needs calibration data")
        key = (fingerprint(model, content=True), repr(sorted(request.items())))
        if key not in self._statistics:
            limit = request.get("limit")
            total = len(self.calibration) if limit is None else min(limit, len(self.calibration))
            with self.step("statistics", total, "feeds") as sweep:
                self._statistics[key] = collect(model, self.calibration, runner=self.runner,
                                                progress=lambda done, _: sweep.update(done), **request)
        return self._statistics[key]

    def outputs(self, model: ir.Model, feeds: Sequence[Feed] | None = None) -> list[dict[str, np.ndarray]]:
        """The model's outputs on ``feeds`` (default: the evaluation data)."""
        chosen = list(feeds if feeds is not None else (self.evaluation or self.calibration or []))
        return self.runner.outputs(model, chosen, sandboxed=False)

    def score(self, reference_outputs: list[dict[str, np.ndarray]], candidate: ir.Model) -> dict[str, float]:
        """``cosine``: the worst output's figure against ``reference_outputs`` on the evaluation
        data (``metrics.ErrorStats.score``): its mean cosine, channel groups of different scale
        judged apart, or for an output of one value per row ``1 - relative error`` (a cosine is
        blind there), the figure the pipeline's accuracy floor compares; ``metric_drop``: the
        task metric's drop, when a metric is set.

        Searches score one candidate after another and drop the last; onnx_ir graphs hold
        reference cycles, so the dropped ones are collected here rather than piling up.
        """
        gc.collect()
        outputs = self.outputs(candidate)
        stats = compare(reference_outputs, outputs)
        result = {"cosine": min(s.score for s in stats.values())}
        if self.metric is not None:
            result["metric_drop"] = float(self.metric(reference_outputs)) - float(self.metric(outputs))
        return result

    def latency(self, model: ir.Model) -> float:
        """Median latency (ms) of one evaluation feed on the target, as ``validate`` measures it."""
        from onnxpress.feeds import random_feeds

        source = self.evaluation or self.calibration
        feed = source.take(1)[0] if source is not None else random_feeds(model, 1)[0]
        return self.runner.latency(model, feed, sandboxed=False, progress=self.say).median_ms

    def compare_layers(self, reference: ir.Model, candidate: ir.Model, samples: int = 4) -> LayerwiseResult:
        """Every intermediate tensor the two models share, compared on evaluation feeds."""
        from onnxpress.layerwise import compare_layers

        source = self.evaluation or self.calibration
        if source is None:
            raise DataError("a layer-wise comparison needs calibration data")
        return compare_layers(reference, candidate, source.take(samples), runner=self.runner, progress=self.say)


class Pass(ir.passes.PassBase):
    """What every onnxpress pass declares, on top of being an ``onnx_ir`` pass.

    Class attributes:
        name: the registry key (``onnxpress passes`` lists it; recipes name it).
        lossless: the pipeline fails the pass if it moves outputs beyond float rounding.
        needs_data: the pass cannot run without calibration data. Passes whose need depends on
            their options override :meth:`needs_calibration` instead.
        aliases: old option names still accepted for one release, mapped to their new names
            (``{"fuse_bn": "fold_batchnorm"}``); recipes using them get a warning.
        recovers: the pass wins back accuracy the pass before it lost (``distill``): the
            pipeline's accuracy floor judges that pass's result after this one.
        deterministic: the same model, options, data, seed and library versions give a
            bit-identical result on the same machine, in any process. False for a pass whose
            result can follow the wall clock (a choice by measured latency, a time budget):
            ``onnxpress replay`` then holds it to the recipe's tolerance, not to the digest.
            A pass whose options decide it overrides this with a property (weightonly's timed
            ``accuracy_level="auto"``, quantize's ``latency_aware``, distill's ``time_budget``).
    """

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = False
    recovers: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True
    aliases: ClassVar[dict[str, str]] = {}
    _context: PassContext | None = None

    @property
    def context(self) -> PassContext | None:
        """The context of the pipeline running this pass (None when called directly)."""
        return self._context

    def needs_calibration(self, model: ir.Model) -> bool:
        """Whether this configuration needs calibration data on ``model`` (``needs_data`` by default)."""
        return self.needs_data

    def requires(self, model: ir.Model) -> None:
        """Refuse to run without calibration data when the configuration needs it."""
        if self.needs_calibration(model) and (self._context is None or self._context.calibration is None):
            raise ir.passes.PreconditionError(
                f"{self.name or type(self).__name__}: calibration data needed with these options "
                "(run the pass in a Pipeline with calibration=...)")

    def remedy(self, floor: float) -> Pass | None:
        """This pass configured to keep outputs at cosine ``floor`` or above, or None when it has
        no such setting. The pipeline runs it on the same input when the pass broke its accuracy
        floor (quantize: keep the nodes that cost most in float)."""
        return None

    def with_options(self, **changes: Any) -> Pass:
        """A new pass of this class with this one's options, ``changes`` over them (what a
        ``remedy`` returns). Options are kept as public attributes of the same names (STYLE.md)."""
        from onnxpress import registry

        options = {name: getattr(self, name) for name in registry.options(type(self))}
        return type(self)(**{**options, **changes})

    def run_in(self, context: PassContext | None, model: ir.Model) -> ir.passes.PassResult:
        """Run the pass on ``model`` with ``context`` bound for the duration of the call."""
        self._context = context
        try:
            return self(model)
        finally:
            self._context = None


def pass_name(item: ir.passes.PassBase) -> str:
    """The name a pass's class declares (the class name for plain ``onnx_ir`` passes)."""
    declared = getattr(type(item), "name", "")
    return declared if isinstance(declared, str) and declared else type(item).__name__


def pass_statistics(result: ir.passes.PassResult) -> dict[str, Any]:
    """The statistics a pass returned (empty for plain ``onnx_ir`` passes)."""
    return dict(getattr(result, "statistics", None) or {})
