"""Sample models and data bundled with onnxpress (imported as ``onnxpress.samples``).

- ``digits_cnn.onnx``: a small CNN trained on scikit-learn's 8x8 digits images
  (``train_digits.py`` made it); input ``input`` float32[N, 1, 8, 8] (pixels / 16).
- ``digits_calib.npz``: 200 training images for calibration.
- ``digits_eval.npz``: 397 held-out images (``input``) and their classes (``label``).
- ``recipe.toml``: the default recipe ``onnxpress demo`` runs.
- ``architectures.py``: torch definitions of the digits CNN, ResNet-18 and MobileNetV3-small.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent
DIGITS_MODEL = FOLDER / "digits_cnn.onnx"
DIGITS_CALIB = FOLDER / "digits_calib.npz"
DIGITS_EVAL = FOLDER / "digits_eval.npz"
RECIPE = FOLDER / "recipe.toml"


def digits_calibration(batch_size: int = 1):
    """The 200 calibration images as feeds."""
    from onnxpress.calibration import from_npz

    return from_npz(DIGITS_CALIB, batch_size=batch_size)


def digits_eval(batch_size: int = 50):
    """The held-out images as feeds, and their labels in the same order."""
    from onnxpress.calibration import from_npz

    labels = np.load(DIGITS_EVAL)["label"]
    return from_npz(DIGITS_EVAL, batch_size=batch_size, keys=["input"]), labels
