"""Sample models and data bundled with onnxpress (imported as ``onnxpress.samples``).

- ``digits_mlp.onnx``: a wide MLP (two hidden layers of 1024, 4.3 MB) trained on scikit-learn's
  8x8 digits images, ``onnxpress demo``'s model: MatMul-bound, so int8 pays on a CPU.
- ``digits_cnn.onnx``: a small CNN (0.17 MB) trained on the same digits, the second example
  (``onnxpress demo --model cnn``). ``train_digits.py`` made both; their input is ``input``
  float32[N, 1, 8, 8] (pixels / 16).
- ``digits_calib.npz``: 200 training images for calibration.
- ``digits_eval.npz``: 397 held-out images (``input``) and their classes (``label``).
- ``recipe.toml``: the default recipe ``onnxpress demo`` runs.
- ``architectures.py``: torch definitions of the digits MLP and CNN, ResNet-18 and MobileNetV3-small.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent
DIGITS_MODEL = FOLDER / "digits_cnn.onnx"
DIGITS_MLP = FOLDER / "digits_mlp.onnx"
# the demo's models by name: ``onnxpress demo --model NAME``
DEMO_MODELS = {"mlp": DIGITS_MLP, "cnn": DIGITS_MODEL}
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
