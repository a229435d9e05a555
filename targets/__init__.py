"""Target profiles: one TOML file per target (``cpu``, ``cuda``, ``edge``, ``mcu``) and their loader.

A profile names the execution providers in order with their options, session options, the
accuracy tolerances a candidate must meet, latency and size budgets, how latency is measured,
and the recipe defaults that suit the target. Users may give their own profile by path.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onnxpress import config
from onnxpress.errors import RecipeError
from onnxpress.hardware import ISAS

FOLDER = Path(__file__).resolve().parent

# [recipe] precision: what the target's default recipe compresses to (``recipe.default_recipe``,
# ``onnxpress run MODEL --target T`` without --recipe), and what passes with an ``auto`` choice
# follow (quantize's power-of-two scales for ``int8-pow2``).
Precision = Literal["fp32", "fp16", "bf16", "int8", "int8-pow2", "int4"]

_SECTIONS: dict[str, dict[str, Any]] = {
    "runtime": {"providers": list[str], "provider_options": dict[str, dict[str, Any]], "intra_op_threads": int,
                "inter_op_threads": int, "optimization": Literal["disable", "basic", "extended", "all"],
                "isa": Literal[ISAS], "session_memory_mb": float},
    "tolerances": {"cosine": float, "max_abs": float, "top1_agreement": float, "metric_drop": float},
    "budgets": {"latency_ms": float, "size_mb": float},
    "latency": {"warmup": int, "min_runs": int, "max_runs": int, "min_seconds": float},
    "recipe": {"precision": Precision},
    "deploy": {"ort_format": bool},
}
_TOP = {"name": str, "description": str}
_OUTPUT_TOLERANCES = {"cosine": float, "max_abs": float}


@dataclass(frozen=True)
class Target:
    """A loaded target profile (see the built-in ``cpu.toml`` for every key).

    ``isa`` is the instruction set the target runs (``onnxpress.hardware.ISAS``): quantization
    defaults follow it; ``"host"`` means the machine running the compression.
    ``session_memory_mb``: the most weights one ONNX Runtime session is given; a larger model
    runs piecewise (``onnxpress.runtime``), in segments of a quarter of it (0: never).
    """

    name: str
    description: str
    path: Path
    providers: list[str]
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    optimization: str = "all"
    isa: str = "host"
    session_memory_mb: float = 512.0
    cosine: float = 0.99
    max_abs: float = 0.0
    top1_agreement: float = 0.98
    metric_drop: float = 0.01
    latency_ms: float = 0.0
    size_mb: float = 0.0
    warmup: int = 5
    min_runs: int = 20
    max_runs: int = 1000
    min_seconds: float = 0.5
    precision: str = "fp32"
    ort_format: bool = False
    output_tolerances: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.isa not in ISAS:
            raise ValueError(f"target {self.name}: isa must be one of {', '.join(ISAS)}, got {self.isa!r}")

    def tolerance(self, output: str, key: str) -> float:
        """The tolerance ``key`` (``cosine`` or ``max_abs``) for one output: its own, else the profile's."""
        return self.output_tolerances.get(output, {}).get(key, getattr(self, key))

    def provider_list(self) -> list[tuple[str, dict[str, str]]]:
        """Providers in order with their options, as ONNX Runtime takes them."""
        return [(p, {k: str(v) for k, v in self.provider_options.get(p, {}).items()}) for p in self.providers]


def builtin() -> dict[str, Path]:
    """The built-in profiles by name."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.toml"))}


def load(target: str | os.PathLike | Target) -> Target:
    """A target by built-in name (``cpu``, ``cuda``, ``edge``, ``mcu``) or by a profile file's path."""
    if isinstance(target, Target):
        return target
    known = builtin()
    if isinstance(target, str) and target in known:
        path = known[target]
    else:
        path = Path(target)
        if not path.suffix == ".toml" or not path.exists():
            raise RecipeError(f"unknown target '{target}': give one of {', '.join(known)} or the "
                              "path of a .toml profile")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RecipeError(f"{path}: cannot read the target profile: {err}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TOP:
            values[key] = config.check_value(value, _TOP[key], f"{path}: '{key}'")
        elif key in _SECTIONS:
            if key == "tolerances" and isinstance(value, dict) and "outputs" in value:
                value = dict(value)
                values["output_tolerances"] = _output_tolerances(value.pop("outputs"), path)
            values.update(config.check_table(value, _SECTIONS[key], f"{path}: [{key}]"))
        else:
            raise RecipeError(f"{path}: unknown key '{key}'; a profile has {', '.join([*_TOP, *_SECTIONS])}")
    if not values.get("providers"):
        raise RecipeError(f"{path}: [runtime] 'providers' must be a non-empty list of provider names")
    values.setdefault("name", path.stem)
    if "intra_op_threads" in values and values["intra_op_threads"] < 0:
        raise RecipeError(f"{path}: [runtime] 'intra_op_threads' must be >= 0")
    if values.get("session_memory_mb", 512.0) < 0:
        raise RecipeError(f"{path}: [runtime] 'session_memory_mb' must be >= 0 (0: never piecewise)")
    values.setdefault("description", "")
    return Target(path=path, **values)


def _output_tolerances(table: Any, path: Path) -> dict[str, dict[str, float]]:
    """``[tolerances.outputs.NAME]`` tables: per-output ``cosine`` and ``max_abs``."""
    if not isinstance(table, dict):
        raise RecipeError(f"{path}: [tolerances.outputs] must be a table of output names")
    return {output: config.check_table(values, _OUTPUT_TOLERANCES, f"{path}: [tolerances.outputs.{output}]")
            for output, values in table.items()}
