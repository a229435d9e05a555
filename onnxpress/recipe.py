"""Recipes: TOML files naming the passes with their options, the calibration source and the target.

```toml
target = "cpu"                 # optional: a built-in target or a profile file

[pipeline]                     # optional
check = true
golden_samples = 4

[calibration]                  # optional; paths are relative to the recipe
source = "calib.npz"           # a .npz (samples on axis 0), a folder of .npz, or a folder of images
type = "npz"                   # or "images", with input = "name" and the preprocessing keys:
batch_size = 1                 # size, crop, color, scale, mean, std, layout, dtype (see ImageSpec)
limit = 200

[[passes]]
name = "simplify"
fold_limit_bytes = 16777216
```

Every mistake is reported as one line naming the file, the table and the key.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxpress import registry
from onnxpress.errors import RecipeError

_TOP_KEYS = {"description", "target", "pipeline", "calibration", "passes"}
_PIPELINE_KEYS = {"check": bool, "golden_samples": int, "lossless_rtol": float, "lossless_atol": float,
                  "latency_runs": int}
_CALIBRATION_KEYS = {"source": str, "type": str, "batch_size": int, "limit": int, "input": str,
                     "size": (int, list), "crop": list, "color": str, "scale": float, "mean": list, "std": list,
                     "layout": str, "dtype": str}
_IMAGE_KEYS = ("size", "crop", "color", "scale", "mean", "std", "layout", "dtype")


@dataclass
class Recipe:
    """A parsed, checked recipe."""

    path: Path | None
    passes: list[Any]
    pass_names: list[str]
    target: str | None = None
    description: str = ""
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    def calibration_source(self):
        """The recipe's calibration data, or None when it names none."""
        if not self.calibration:
            return None
        from onnxpress.calibration import ImageSpec, from_images, from_npz

        settings = self.calibration
        base = self.path.parent if self.path else Path.cwd()
        source = base / settings["source"]
        if settings.get("type", "npz") == "images":
            spec = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in _IMAGE_KEYS}
            try:
                image_spec = ImageSpec(**spec)
            except (ValueError, TypeError) as err:
                raise RecipeError(f"{self.path}: [calibration] {err}") from None
            return from_images(source, settings["input"], image_spec, limit=settings.get("limit"))
        return from_npz(source, batch_size=settings.get("batch_size", 1), limit=settings.get("limit"))

    def pipeline(self):
        from onnxpress.pipeline import Pipeline

        return Pipeline(self.passes, calibration=self.calibration_source(), target=self.target,
                        **self.pipeline_options)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file."""
    file = Path(path)
    if not file.exists():
        raise RecipeError(f"{file}: no such recipe file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{file}: cannot read the recipe: {err}") from err
    return parse_recipe(text, name=str(file), path=file)


def parse_recipe(text: str, *, name: str = "<recipe>", path: Path | None = None) -> Recipe:
    """Parse and check recipe text; ``name`` prefixes error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{name}: not valid TOML: {err}") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise RecipeError(f"{name}: unknown key(s) {unknown}; a recipe has {sorted(_TOP_KEYS)}")
    target = data.get("target")
    if target is not None and not isinstance(target, str):
        raise RecipeError(f"{name}: 'target' must be a string, got {type(target).__name__}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(f"{name}: 'description' must be a string")
    pipeline_options = _typed_table(data.get("pipeline", {}), _PIPELINE_KEYS, f"{name}: [pipeline]")
    calibration = None
    if "calibration" in data:
        calibration = _typed_table(data["calibration"], _CALIBRATION_KEYS, f"{name}: [calibration]")
        if "source" not in calibration:
            raise RecipeError(f"{name}: [calibration] needs a 'source' (a .npz file or a folder of them)")
        kind = calibration.get("type", "npz")
        if kind not in ("npz", "images"):
            raise RecipeError(f"{name}: [calibration] 'type' must be 'npz' or 'images', got {kind!r}")
        if kind == "images" and "input" not in calibration:
            raise RecipeError(f"{name}: [calibration] type 'images' needs 'input' (the model input they feed)")
        misplaced = [k for k in _IMAGE_KEYS if k in calibration] if kind == "npz" else []
        if misplaced:
            raise RecipeError(f"{name}: [calibration] {misplaced} apply to type = 'images' only")
    entries = data.get("passes", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RecipeError(f"{name}: 'passes' must be an array of tables ([[passes]])")
    if not entries:
        raise RecipeError(f"{name}: the recipe names no passes (add [[passes]] tables)")
    passes, names = [], []
    for index, entry in enumerate(entries, start=1):
        where = f"{name}: passes[{index}]"
        settings = dict(entry)
        pass_name = settings.pop("name", None)
        if not isinstance(pass_name, str):
            raise RecipeError(f"{where}: each pass needs a 'name' string")
        passes.append(registry.create(pass_name, settings, where=where))
        names.append(pass_name)
    return Recipe(path=path, passes=passes, pass_names=names, target=target, description=description,
                  pipeline_options=pipeline_options, calibration=calibration)


def _typed_table(table: Any, schema: dict[str, type], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise RecipeError(f"{where} must be a table")
    checked = {}
    for key, value in table.items():
        if key not in schema:
            raise RecipeError(f"{where}: unknown key '{key}'; known: {', '.join(schema)}")
        want = schema[key]
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
              isinstance(value, want) and not isinstance(value, bool))
        if not ok:
            names = " or ".join(w.__name__ for w in (want if isinstance(want, tuple) else (want,)))
            raise RecipeError(f"{where}: '{key}' must be {names}, got {type(value).__name__} {value!r}")
        checked[key] = value
    return checked
