"""``onnxpress export MODULE:FACTORY``: a torch module named on the command line, exported and checked."""
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnxpress as ox  # noqa: E402
from onnxpress.cli import main  # noqa: E402
from onnxpress.export import export_info  # noqa: E402

from conftest import ort_run  # noqa: E402

MODULE = textwrap.dedent("""
    import torch


    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, features, mask):
            return torch.relu(self.linear(features)) * mask.unsqueeze(-1).float()


    def build():
        torch.manual_seed(0)
        return Masked()


    def build_with_inputs():
        torch.manual_seed(0)
        return Masked(), (torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.int64))


    def broken():
        raise RuntimeError("no weights here")


    def not_a_module():
        return 42
""")


@pytest.fixture
def module_file(tmp_path):
    path = tmp_path / "masked_model.py"
    path.write_text(MODULE)
    return path


def _reference(features, mask):
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    with torch.no_grad():
        return (torch.relu(linear(torch.from_numpy(features))) * torch.from_numpy(mask).unsqueeze(-1).float()).numpy()


def _check(path):
    """The saved export on a batch the export never saw, against the module in torch."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((6, 5, 4)).astype(np.float32)
    mask = rng.integers(0, 2, (6, 5)).astype(np.int64)
    model = ox.load(path)
    assert [v.name for v in model.graph.inputs] == ["features", "mask"]
    np.testing.assert_allclose(ort_run(model, {"features": features, "mask": mask})[0], _reference(features, mask),
                               rtol=1e-5, atol=1e-6)
    return model


def test_factory_with_input_shapes(tmp_path, module_file, capsys):
    out = tmp_path / "out.onnx"
    code = main(["export", f"{module_file}:build", "--input", "features=2x5x4:float32", "--input", "mask=2x5:int64",
                 "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "exporter: dynamo" in text and f"saved {out}" in text
    assert "features: float32[batch x 5 x 4]" in text and "mask: int64[batch x 5]" in text
    assert "max |onnx - torch|" in text
    model = _check(out)
    assert export_info(model)["batch_sizes_checked"] == [2, 4]


def test_factory_with_an_example_inputs_file_and_a_dotted_name(tmp_path, module_file, capsys, monkeypatch):
    data = tmp_path / "example.npz"
    np.savez(data, features=np.ones((3, 5, 4), np.float32), mask=np.ones((3, 5), np.int64))
    monkeypatch.chdir(tmp_path)  # a dotted name is imported from the working folder, as `python -m` does
    monkeypatch.delitem(sys.modules, "masked_model", raising=False)
    out = tmp_path / "out.onnx"
    assert main(["export", "masked_model:build", "--example-inputs", str(data), "-o", str(out), "--static"]) == 0
    sys.modules.pop("masked_model", None)
    model = ox.load(out)
    assert [d for d in model.graph.inputs[0].shape] == [3, 5, 4]  # --static keeps the example's sizes
    assert export_info(model)["batch_sizes_checked"] == [3]


def test_factory_that_returns_its_own_example_inputs(tmp_path, module_file, capsys):
    out = tmp_path / "out.onnx"
    assert main(["export", f"{module_file}:build_with_inputs", "--exporter", "torchscript", "-o", str(out)]) == 0
    assert "exporter: torchscript" in capsys.readouterr().out
    _check(out)  # input names come from the forward's parameters


@pytest.mark.parametrize("argv, message", [
    (["{file}:missing", "--input", "features=2x5x4"], "export: {file} has no factory 'missing'"),
    (["{file}", "--input", "features=2x5x4"],
     "export: '{file}' is not MODULE:FACTORY (e.g. mypkg.models:build or path/to/model.py:build)"),
    (["{file}:build"], "export: {file}:build() returned no example inputs; give --input NAME=SHAPE:DTYPE or "
                       "--example-inputs FILE.npz"),
    (["{file}:broken", "--input", "x=2"], "export: {file}:broken() failed: RuntimeError: no weights here"),
    (["{file}:not_a_module", "--input", "x=2"],
     "export: {file}:not_a_module() returned int; expected a torch.nn.Module or a (module, example_args) tuple"),
    (["{tmp}/absent.py:build", "--input", "x=2"], "export: {tmp}/absent.py: no such file"),
    (["no_such_package_xyz.models:build", "--input", "x=2"],
     "export: cannot import no_such_package_xyz.models: ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    (["{file}:build", "--input", "features=2x5x4", "--input", "features=2x5"], "--input: 'features' is given twice"),
    (["{file}:build", "--example-inputs", "{tmp}/none.npz"], "{tmp}/none.npz: cannot read the example inputs"),
    (["{file}:build", "--input", "features=2x5x4", "--task", "seq2seq"],
     "export: --task and --with-past are for --hf FOLDER"),
    (["--input", "features=2x5x4"], "export: give MODULE:FACTORY or --hf FOLDER (one of them)"),
    (["{file}:build", "--hf", "{tmp}"], "export: give MODULE:FACTORY or --hf FOLDER (one of them)"),
    (["--hf", "{tmp}", "--input", "x=2"],
     "export: --input and --example-inputs are for MODULE:FACTORY; --hf makes its own inputs"),
    (["--hf", "{tmp}/nowhere"],
     "{tmp}/nowhere: not a folder (give a Hugging Face model folder written by save_pretrained)"),
    (["--hf", "{tmp}"],
     "{tmp}: no config.json in the folder (give a Hugging Face model folder written by save_pretrained)"),
])
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, module_file, capsys, argv, message):
    out = tmp_path / "out.onnx"
    fill = {"file": module_file, "tmp": tmp_path}
    code = main(["export", *[a.format(**fill) for a in argv], "-o", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "onnxpress: error: " + message.format(**fill)
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not out.exists()


@pytest.mark.parametrize("spec, message", [
    ("features=2xax4", "argument --input: 'features=2xax4': the shape must be positive integers separated by 'x', "
                       "e.g. 1x3x32x32"),
    ("features", "argument --input: 'features': expected NAME=SHAPE[:DTYPE], e.g. images=1x3x32x32:float32"),
    ("features=2x4:float128", "argument --input: 'features=2x4:float128': unknown dtype 'float128'; use one of "
                              "float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool"),
])
def test_bad_input_specs_are_usage_errors(tmp_path, module_file, capsys, spec, message):
    out = tmp_path / "out.onnx"
    with pytest.raises(SystemExit) as info:
        main(["export", f"{module_file}:build", "--input", spec, "-o", str(out)])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"onnxpress: error: {message}"
    assert not out.exists()


def test_output_folder_must_exist(tmp_path, module_file, capsys):
    out = tmp_path / "missing" / "out.onnx"
    assert main(["export", f"{module_file}:build", "--input", "features=2x5x4", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"onnxpress: error: {out}: give a file name in an existing folder "
                                               "for the model")
