import dataclasses

import pytest

import onnxpress as ox
from onnxpress import targets
from onnxpress.hardware import ISAS, quantization_defaults, quantization_defaults_for


@pytest.mark.parametrize("isa, activation, reduce_range", [
    ("x86-vnni", "uint8", False),
    ("x86-avx2", "uint8", True),
    ("x86", "uint8", False),
    ("arm64-dotprod", "int8", False),
    ("arm64", "uint8", False),
])
def test_named_isas_give_their_own_defaults_whatever_the_host(isa, activation, reduce_range):
    defaults = quantization_defaults_for(isa)
    assert (defaults.activation_type, defaults.weight_type, defaults.reduce_range) == (activation, "int8", reduce_range)
    assert defaults.reason.startswith(f"target isa '{isa}': ")


def test_host_isa_reads_this_machine():
    host, defaults = quantization_defaults(), quantization_defaults_for("host")
    assert (defaults.activation_type, defaults.reduce_range) == (host.activation_type, host.reduce_range)
    assert defaults.reason.startswith("target isa 'host' (")
    assert ISAS[0] == "host"
    with pytest.raises(ValueError, match="isa must be one of host, x86-vnni"):
        quantization_defaults_for("sparc")


def test_quantize_takes_its_defaults_from_the_bound_target():
    """An edge (arm64-dotprod) target gets int8 activations without reduce-range on any host."""
    from onnxpress.context import PassContext
    from onnxpress.runtime import Runner

    quantize = ox.passes.Quantize()
    edge = PassContext(runner=Runner("edge"))
    avx2 = PassContext(runner=Runner(dataclasses.replace(targets.load("cpu"), isa="x86-avx2")))
    host = quantization_defaults()
    assert quantize._isa() == "host" and quantize._hardware() == (host.activation_type, host.reduce_range)
    for context, isa, expected in ((edge, "arm64-dotprod", ("int8", False)), (avx2, "x86-avx2", ("uint8", True))):
        quantize._context = context  # what Pass.run_in binds while the pass runs
        assert quantize._isa() == isa and quantize._hardware() == expected
    explicit = ox.passes.Quantize(activation_type="uint8", reduce_range=True)
    explicit._context = edge
    assert explicit._hardware() == ("uint8", True)  # options given are kept


def test_quantize_statistics_name_the_isa_of_the_pipeline_target(small_model, rng):
    import numpy as np

    feeds = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(8)]
    result = ox.Pipeline([ox.passes.Quantize(preset="all", mode="static")], target="edge",
                         check=False).run(small_model, calibration=feeds)
    stats = result.records[0].statistics
    assert (stats["isa"], stats["activation_type"], stats["reduce_range"]) == ("arm64-dotprod", "int8", False)
