"""Calibration and evaluation data: re-iterable sources of ``{input_name: array}`` feeds.

Any iterable of feeds works wherever a source is asked for; ``Calibration`` adds the things
the pipeline needs: iterating more than once, a length, taking the first samples, and
splitting into calibration and held-out parts. Samples may differ in shape.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from onnxpress.errors import DataError

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


class Calibration:
    """A re-iterable source of feeds.

    Args:
        factory: returns a fresh iterator of feeds each time it is called.
        length: the number of feeds, when known without iterating.
        name: where the data comes from, for messages.
    """

    def __init__(self, factory: Callable[[], Iterable[Mapping[str, np.ndarray]]], *,
                 length: int | None = None, name: str = "data") -> None:
        self._factory = factory
        self._length = length
        self.name = name

    def __iter__(self) -> Iterator[Feed]:
        for index, feed in enumerate(self._factory()):
            if not isinstance(feed, Mapping):
                raise DataError(f"{self.name}: sample {index} is a {type(feed).__name__}, not a "
                                "mapping of input names to arrays")
            yield {str(k): np.asarray(v) for k, v in feed.items()}

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(1 for _ in self._factory())
        return self._length

    def take(self, count: int) -> list[Feed]:
        """The first ``count`` feeds (fewer if the source is shorter)."""
        taken = []
        for feed in self:
            if len(taken) == count:
                break
            taken.append(feed)
        return taken

    def split(self, calibration_share: float) -> tuple["Calibration", "Calibration"]:
        """Split into (calibration, held-out) by position: the first share, then the rest."""
        if not 0.0 < calibration_share < 1.0:
            raise ValueError(f"calibration_share must be in (0, 1), got {calibration_share}")
        total = len(self)
        cut = max(1, min(total - 1, round(total * calibration_share)))

        def head():
            for index, feed in enumerate(self):
                if index >= cut:
                    return
                yield feed

        def tail():
            for index, feed in enumerate(self):
                if index >= cut:
                    yield feed

        return (Calibration(head, length=cut, name=f"{self.name}[:{cut}]"),
                Calibration(tail, length=total - cut, name=f"{self.name}[{cut}:]"))


def from_feeds(feeds: Iterable[Mapping[str, np.ndarray]], *, name: str = "data") -> Calibration:
    """Wrap any iterable of feeds; a one-shot iterator is read once and kept in memory."""
    if isinstance(feeds, Calibration):
        return feeds
    if isinstance(feeds, Mapping):
        raise DataError(f"{name}: expected an iterable of feeds, got a single mapping; wrap it in a list")
    if isinstance(feeds, Sequence):
        return Calibration(lambda: iter(feeds), length=len(feeds), name=name)
    if iter(feeds) is feeds:  # an iterator or generator can only be read once
        kept = list(feeds)
        logger.info("%s: kept %d samples of a one-shot iterator in memory", name, len(kept))
        return Calibration(lambda: iter(kept), length=len(kept), name=name)
    return Calibration(lambda: iter(feeds), name=name)


def from_npz(path: str | os.PathLike, *, batch_size: int = 1, limit: int | None = None,
             keys: Sequence[str] | None = None) -> Calibration:
    """Feeds from a ``.npz`` file or a folder of them.

    A single file holds one array per input name, samples along the first axis; it is cut into
    feeds of ``batch_size`` samples. In a folder each ``.npz`` file is one feed (so samples may
    differ in shape), read in name order and one at a time. ``keys`` keeps only those arrays
    (a file may also hold labels); ``limit`` caps the number of feeds.
    """
    source = Path(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if source.is_dir():
        files = sorted(source.glob("*.npz"))
        if not files:
            raise DataError(f"{source}: no .npz files in this folder")
        files = files[:limit] if limit is not None else files

        def read_files():
            for file in files:
                yield _read_npz(file, keys)

        return Calibration(read_files, length=len(files), name=str(source))
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    arrays = _read_npz(source, keys)
    counts = {name: array.shape[0] if array.ndim else 0 for name, array in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise DataError(f"{source}: arrays must share a leading sample axis, got {counts}")
    total = next(iter(counts.values()))
    if limit is not None:
        total = min(total, limit * batch_size)
    starts = range(0, total, batch_size)

    def batches():
        for start in starts:
            yield {name: array[start:min(start + batch_size, total)] for name, array in arrays.items()}

    return Calibration(batches, length=len(starts), name=str(source))


def _read_npz(path: Path, keys: Sequence[str] | None = None) -> Feed:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(keys or ()) - set(data.files))
            if missing:
                raise DataError(f"{path}: no array(s) {missing}; it holds {sorted(data.files)}")
            return {name: data[name] for name in (keys or data.files)}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
