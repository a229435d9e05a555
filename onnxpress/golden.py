"""Golden files: a model's inputs and outputs stored once, checked against later without it."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from onnxpress.calibration import from_feeds
from onnxpress.errors import DataError
from onnxpress.feeds import check_feed


_GOLDEN_META = "__onnxpress_golden__"


def save_golden(model: Any, data: Iterable[Mapping[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Run ``model`` on ``data`` (CPU) and store inputs and outputs in one ``.npz`` for later checks."""
    from onnxpress.io import load
    from onnxpress.runtime import Runner

    model = load(model)
    feeds = list(from_feeds(data, name="data"))
    for i, feed in enumerate(feeds):
        check_feed(model, feed, f"data: sample {i}")
    outputs = Runner("cpu").outputs(model, feeds)
    arrays: dict[str, np.ndarray] = {}
    for i, (feed, output) in enumerate(zip(feeds, outputs)):
        arrays.update({f"in{i}:{k}": np.asarray(v) for k, v in feed.items()})
        arrays.update({f"out{i}:{k}": v for k, v in output.items()})
    arrays[_GOLDEN_META] = np.array(json.dumps({"samples": len(feeds), "format": 1}))
    target = Path(path)
    staged = target.with_name(f".{target.name}.tmp.npz")
    np.savez_compressed(staged, **arrays)
    os.replace(staged, target)
    return target


def load_golden(path: str | os.PathLike) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """The (inputs, outputs) a golden file holds."""
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            if _GOLDEN_META not in data.files:
                raise DataError(f"{source}: not a golden file written by onnxpress (no {_GOLDEN_META})")
            count = json.loads(str(data[_GOLDEN_META]))["samples"]
            feeds: list[dict] = [{} for _ in range(count)]
            outputs: list[dict] = [{} for _ in range(count)]
            for key in data.files:
                if key == _GOLDEN_META:
                    continue
                kind, _, name = key.partition(":")
                index = int(kind[3:] if kind.startswith("out") else kind[2:])
                (outputs if kind.startswith("out") else feeds)[index][name] = data[key]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{source}: cannot read the golden file ({err})") from err
    return feeds, outputs
