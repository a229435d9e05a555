import sys
import textwrap


import onnxpress as ox
from onnxpress import registry


def _distribution(folder, name: str, entry_points: str) -> None:
    """A minimal installed distribution (dist-info) that declares ``entry_points``."""
    dist = folder / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)


def test_builtin_passes_are_registered():
    assert registry.available()["simplify"] is ox.passes.Simplify
    assert registry.get("simplify") is ox.passes.Simplify
    assert "fold_limit_bytes" in registry.options(ox.passes.Simplify)


def test_third_party_passes_register_through_entry_points(tmp_path, monkeypatch, small_model):
    (tmp_path / "thirdparty_pass.py").write_text(textwrap.dedent('''
        import onnx_ir as ir

        class Rename(ir.passes.InPlacePass):
            """Renames the graph."""

            name = "rename"  # the declared name; the option of the same name shadows it on instances

            def __init__(self, *, name: str = "renamed") -> None:
                super().__init__()
                self.name = name

            def call(self, model):
                changed = model.graph.name != self.name
                model.graph.name = self.name
                return ir.passes.PassResult(model, modified=changed)
    '''))
    _distribution(tmp_path, "thirdparty_pass", "[onnxpress.passes]\nrename = thirdparty_pass:Rename\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    passes = registry.available()
    assert "rename" in passes and passes["rename"].__name__ == "Rename"
    recipe_pass = registry.create("rename", {"name": "hello"})
    result = ox.Pipeline([recipe_pass]).run(small_model)
    assert result.records[0].name == "rename" and result.model.graph.name == "hello"
    sys.modules.pop("thirdparty_pass", None)


def test_a_broken_entry_point_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    _distribution(tmp_path, "broken_pass", "[onnxpress.passes]\nbroken = no_such_module:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    passes = registry.available()
    assert "broken" not in passes and "simplify" in passes
    assert "cannot be loaded" in caplog.text


def test_old_option_names_are_not_listed_and_warn_in_python(small_model):
    """``fuse_bn`` is ``fold_batchnorm`` and ``skip`` is ``exclude``, with a DeprecationWarning."""
    import numpy as np
    import pytest

    assert registry.aliases(ox.passes.Simplify) == {"fuse_bn": "fold_batchnorm"}
    assert "fuse_bn" not in registry.options(ox.passes.Simplify)
    assert "fold_batchnorm" in registry.options(ox.passes.Simplify)
    assert "skip" not in registry.options(ox.passes.Prune) and "exclude" in registry.options(ox.passes.Prune)
    with pytest.warns(DeprecationWarning, match="simplify: option 'fuse_bn' is deprecated; use 'fold_batchnorm'"):
        assert ox.passes.Simplify(fuse_bn=False).fold_batchnorm is False
    assert ox.passes.Simplify().fold_batchnorm is True
    matmul = next(node for node in small_model.graph if node.op_type == "MatMul")
    matmul.name = "mm"
    weight = small_model.graph.initializers["w"].const_value.numpy()
    with pytest.warns(DeprecationWarning, match="prune: option 'skip' is deprecated; use 'exclude'"):
        old = ox.passes.Prune(sparsity=0.5, skip=["mm"])
    new = ox.passes.Prune(sparsity=0.5, exclude=["mm"])
    assert old.exclude == new.exclude == ["mm"]

    def matmul_weight(model):
        return next(n for n in model.graph if n.op_type == "MatMul").inputs[1].const_value.numpy()

    for pruner in (old, new):
        np.testing.assert_array_equal(matmul_weight(pruner(small_model.clone()).model), weight)
    pruned = ox.passes.Prune(sparsity=0.5)(small_model.clone())
    assert (matmul_weight(pruned.model) == 0).sum() > (weight == 0).sum()
