"""Native steps under limits: a hang or a blow-up becomes one clear error, not a frozen process."""
import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import sandbox, samples
from onnxpress.cli import main


def test_a_step_past_its_time_limit_is_stopped():
    with sandbox.limited(sandbox.Limits(seconds=1.0)):
        with pytest.raises(sandbox.ResourceLimitError, match="sleeper did not finish within 1 s"):
            sandbox.call("time:sleep", 30, what="sleeper")


def test_a_step_past_its_memory_limit_is_an_error():
    with sandbox.limited(sandbox.Limits(seconds=60, memory_bytes=512 * 2**20)):
        with pytest.raises(sandbox.ResourceLimitError, match="hog ran out of memory"):
            sandbox.call("numpy:ones", (2**31,), what="hog")


def test_failures_inside_the_step_carry_their_message():
    with sandbox.limited(sandbox.Limits(seconds=60)):
        with pytest.raises(sandbox.SandboxedError, match="parse failed: ValueError: invalid literal"):
            sandbox.call("builtins:int", "not a number", what="parse")
    assert sandbox.call("builtins:abs", -3, what="outside") == 3  # no limits: in-process


def test_simplify_runs_sandboxed_with_the_same_result(small_model):
    plain = ox.passes.Simplify()(small_model.clone()).model
    with sandbox.limited(sandbox.Limits(seconds=120)):
        outcome = ox.passes.Simplify()(small_model.clone())
        result = outcome.model
    assert outcome.statistics["engine"] == "onnxsim"
    assert [n.op_type for n in result.graph] == [n.op_type for n in plain.graph]


def test_the_cli_reports_limits_as_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[passes]]\nname = "simplify"\n')
    code = main(["--time-limit", "0", "run", str(samples.DIGITS_MODEL), "--recipe", str(recipe),
                 "-o", str(tmp_path / "o.onnx")])
    assert code == 2 and "seconds must be > 0" in capsys.readouterr().err
    assert main(["--time-limit", "120", "run", str(samples.DIGITS_MODEL), "--recipe", str(recipe),
                 "-o", str(tmp_path / "o.onnx")]) == 0
    assert np.isfinite(ox.inspect(tmp_path / "o.onnx").parameters)


class _Breaker(ir.passes.InPlacePass):
    """A pass that leaves a node reading a tensor nothing defines."""

    name = "breaker"

    def call(self, model):
        model.graph.node(0).replace_input_with(0, ir.Value(name="ghost"))
        return ir.passes.PassResult(model, modified=True)


def test_a_pass_that_breaks_the_model_is_named_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    from onnxpress import registry

    monkeypatch.setitem(registry._extra, "breaker", _Breaker)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[passes]]\nname = "simplify"\n[[passes]]\nname = "breaker"\n')
    before = samples.DIGITS_MODEL.read_bytes()
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("onnxpress: error: pass 'breaker'"), err
    assert list(tmp_path.iterdir()) == [recipe]
    assert samples.DIGITS_MODEL.read_bytes() == before


def test_what_a_step_prints_does_not_reach_stdout(capfd):
    """stdout carries `--json` results: ONNX Runtime's fallback message printed in the child
    (seen on a GPU under a small memory limit) must not corrupt them."""
    with sandbox.limited(sandbox.Limits(seconds=60)):
        sandbox.call("builtins:print", "printed in the child", what="a printing step")
    out, err = capfd.readouterr()
    assert "printed in the child" not in out and "printed in the child" in err


def test_resident_memory_is_watched_without_an_address_space_limit():
    """GPU runtimes run without RLIMIT_AS (CUDA reserves huge address ranges); the parent's
    watch on resident memory still stops a step that grows past the limit."""
    with sandbox.limited(sandbox.Limits(seconds=60, memory_bytes=300 * 2**20)):
        with pytest.raises(sandbox.ResourceLimitError, match="hog used more than the memory limit of 0.3 GiB"):
            sandbox.call("numpy:ones", (2**30,), what="hog", address_space=False)
