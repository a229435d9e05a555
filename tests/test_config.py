from typing import Any, Literal

import pytest

from onnxpress import config
from onnxpress.errors import RecipeError


@pytest.mark.parametrize("value, annotation, expected", [
    (True, bool, True),
    (3, int, 3),
    (3, float, 3.0),
    (2.5, float | None, 2.5),
    (None, float | None, None),
    (4, int | list[int], 4),
    ([1, 2], int | list[int], [1, 2]),
    ([1, 2.5], list[float], [1.0, 2.5]),
    ({"Conv": 1}, dict[str, float], {"Conv": 1.0}),
    ("auto", Literal["auto"] | bool, "auto"),
    (False, Literal["auto"] | bool, False),
    ("x", Any, "x"),
])
def test_values_that_fit_are_converted(value, annotation, expected):
    result = config.check_value(value, annotation, "here")
    assert result == expected and type(result) is type(expected)
    if isinstance(expected, list):
        assert [type(v) for v in result] == [type(v) for v in expected]


@pytest.mark.parametrize("value, annotation, message", [
    (1, bool, "here must be bool, got int 1"),
    (True, int, "here must be int, got bool True"),
    (True, float, "here must be float, got bool True"),
    ("yes", bool, "here must be bool, got str 'yes'"),
    (1, Literal[True], "here must be one of True, got int 1"),
    ("fast", Literal["a", "b"], "here must be one of 'a', 'b', got str 'fast'"),
    ([1, "2"], list[int], "here must be a list of int, got list [1, '2']"),
    ({"a": "b"}, dict[str, float], "here must be a table of float, got dict {'a': 'b'}"),
    (3, str | None, "here must be str or none, got int 3"),
])
def test_values_that_do_not_fit_are_named(value, annotation, message):
    with pytest.raises(RecipeError) as err:
        config.check_value(value, annotation, "here")
    assert str(err.value) == message


def test_tables_are_checked_key_by_key():
    schema = {"check": bool, "rtol": float}
    assert config.check_table({"rtol": 1}, schema, "r.toml: [pipeline]") == {"rtol": 1.0}
    with pytest.raises(RecipeError, match=r"^r.toml: \[pipeline\]: unknown key 'x'; known: check, rtol$"):
        config.check_table({"x": 1}, schema, "r.toml: [pipeline]")
    with pytest.raises(RecipeError, match=r"^r.toml: \[pipeline\]: 'check' must be bool, got int 1$"):
        config.check_table({"check": 1}, schema, "r.toml: [pipeline]")
    with pytest.raises(RecipeError, match=r"^r.toml: \[pipeline\] must be a table$"):
        config.check_table([1], schema, "r.toml: [pipeline]")


def test_config_is_a_bottom_layer_module():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(config))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name and name.startswith("onnxpress")} == {"onnxpress.errors"}
