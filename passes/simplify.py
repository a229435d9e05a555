"""Simplify: constant folding, shape inference and dead-code removal."""
from __future__ import annotations

import logging
import warnings
from typing import Literal

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress import _proto, _weights, sandbox
from onnxpress.context import Pass, PassResult
from onnxpress.errors import PassError
from onnxpress.modelinfo import fingerprint, node_count, op_histogram
from onnxpress.passes._common import reject_option

logger = logging.getLogger(__name__)

Engine = Literal["auto", "onnxsim", "onnx-ir"]


class Simplify(Pass, ir.passes.FunctionalPass):
    """Fold constants, infer shapes, fuse and remove dead nodes; outputs stay the same.

    The work is done by onnxsim on an in-memory copy of the model. Where onnxsim cannot run
    (a model past the 2 GB protobuf limit, an op it cannot fold, a crash inside it) the pass
    falls back to onnxscript's optimizer (constant folding, its rewrite rules, dead-code,
    identity and common subexpression removal), and records why in its statistics.

    Options:
        fold_limit_bytes: constants larger than this are not materialised by folding (a
            ConstantOfShape producing a large weight stays a node, so the file does not grow;
            ONNX Runtime folds it at session creation anyway).
        fold_batchnorm: let onnxsim fuse BatchNormalization into the preceding Conv (the old
            name ``fuse_bn`` is accepted, with a warning, for one release).
        engine: ``auto`` (onnxsim, then the fallback), ``onnxsim`` (fail instead of falling
            back) or ``onnx-ir`` (the fallback only).

    Graph inputs and outputs keep their names. The pass is lossless: the pipeline fails it
    if outputs change beyond float rounding.
    """

    name = "simplify"
    lossless = True
    aliases = {"fuse_bn": "fold_batchnorm"}

    def __init__(self, *, fold_limit_bytes: int = 16 * 2**20, fold_batchnorm: bool = True,
                 engine: Engine = "auto", fuse_bn: bool | None = None) -> None:
        super().__init__()
        if fuse_bn is not None:
            warnings.warn("simplify: option 'fuse_bn' is deprecated; use 'fold_batchnorm'",
                          DeprecationWarning, stacklevel=2)
            fold_batchnorm = fuse_bn
        reject_option(fold_limit_bytes < 0, "simplify", "fold_limit_bytes", ">= 0", fold_limit_bytes)
        reject_option(engine not in ("auto", "onnxsim", "onnx-ir"),
                      "simplify", "engine", "'auto', 'onnxsim' or 'onnx-ir'", engine)
        self.fold_limit_bytes = fold_limit_bytes
        self.fold_batchnorm = fold_batchnorm
        self.engine = engine

    def call(self, model: ir.Model) -> PassResult:
        before_print = fingerprint(model)
        before_ops = op_histogram(model)
        nodes_before = node_count(model)
        fallback_reason = None
        result = None
        if self.engine != "onnx-ir":
            if _weights.is_large(model):
                # onnxsim takes the model as one protobuf and holds it several times over.
                fallback_reason = (f"the model is large ({_proto.weight_bytes(model) / 2**20:.0f} MB of weights): "
                                   "onnxsim would hold it whole in memory several times")
            else:
                try:
                    result = self._onnxsim(model)
                except sandbox.ResourceLimitError:
                    raise  # over its limits: say so rather than try again unlimited in-process
                except Exception as err:  # onnxsim wraps C++; any failure means "use the fallback"
                    fallback_reason = f"onnxsim failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if result is None and self.engine == "onnxsim":
                raise PassError(f"simplify: {fallback_reason}")
        if result is None:
            if fallback_reason:
                logger.warning("simplify: %s; using onnx-ir/onnxscript optimisation", fallback_reason)
            result = self._fallback(model)
        after_ops = op_histogram(result)
        removed = {op: before_ops[op] - after_ops.get(op, 0) for op in before_ops
                   if before_ops[op] > after_ops.get(op, 0)}
        statistics = {
            "engine": "onnxsim" if fallback_reason is None and self.engine != "onnx-ir" else "onnx-ir",
            "fallback_reason": fallback_reason,
            "nodes_removed": nodes_before - node_count(result),
            "ops_removed": removed,
        }
        modified = fingerprint(result) != before_print
        logger.info("simplify: %d -> %d nodes (%s)", nodes_before, node_count(result), statistics["engine"])
        return PassResult(result, modified=modified, statistics=statistics)

    def _onnxsim(self, model: ir.Model) -> ir.Model:
        options = {"skip_fuse_bn": not self.fold_batchnorm, "tensor_size_threshold": f"{self.fold_limit_bytes}B"}
        if sandbox.current() is None:
            return _proto.from_proto(_run_onnxsim(_proto.to_proto(model), options))
        # Under limits (the CLI): onnxsim runs in a limited child process; bytes cross over.
        data = sandbox.call("onnxpress.passes.simplify:_onnxsim_bytes", _proto.to_bytes(model), options,
                            what="onnxsim")
        return _proto.from_proto(_proto.parse(data))


    def _fallback(self, model: ir.Model) -> ir.Model:
        """onnxscript's ``optimize_ir`` pipeline on a copy, folding batch norms only if asked.

        ``optimize_ir`` takes no rewrite rules and its default rules fold batch norms, so its
        list is spelled out here (as in onnxscript 0.7's ``optimizer/_optimizer.py``) with the
        rules chosen. Its constant folding already removes Identity nodes (a graph output keeps
        the one that gives it its own name) and it ends with common subexpression and dead-code
        removal, so nothing runs after it.
        """
        from onnxscript import rewriter
        from onnxscript.optimizer._constant_folding import FoldConstantsPass

        from onnxpress.passes._common import batchnorm_rules

        result = model.clone()
        # onnxscript's limits count elements; fold only constants within the byte limit.
        elements = max(1, self.fold_limit_bytes // 4)
        rules = [rule for rule in rewriter._DEFAULT_REWRITE_RULES
                 if self.fold_batchnorm or rule not in batchnorm_rules()]
        ir.passes.Sequential(
            common_passes.InlinePass(),
            ir.passes.PassManager([
                FoldConstantsPass(shape_inference=not _weights.is_large(result), input_size_limit=elements,
                                  output_size_limit=elements),
                rewriter.RewritePass(rules),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ], steps=2, early_stop=True),
            common_passes.RemoveUnusedNodesPass(),
            common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common_passes.LiftSubgraphInitializersToMainGraphPass(),
            common_passes.DeduplicateInitializersPass(),
            common_passes.CommonSubexpressionEliminationPass(),
            common_passes.OutputFixPass(),
            common_passes.NameFixPass(),
        )(result)
        return result


def _run_onnxsim(proto, options: dict):
    import onnxsim

    simplified, _ = onnxsim.simplify(
        proto,
        check_n=0,  # the pipeline checks outputs against its golden samples
        certify=False,
        **options,
    )
    return simplified


def _onnxsim_bytes(data: bytes, options: dict) -> bytes:
    """onnxsim on serialised bytes (the sandboxed form of ``Simplify._onnxsim``)."""
    return _run_onnxsim(_proto.parse(data), options).SerializeToString()
