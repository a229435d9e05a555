"""Train the sample digits models and write digits_mlp.onnx / digits_cnn.onnx and their data.

Run from the repository: ``.venv/bin/python -m onnxpress.samples.train_digits [--model mlp|cnn]``.
Needs torch and scikit-learn (the ``torch`` and ``dev`` extras). Deterministic: seeded split and
training. Both models read ``input`` float32[N, 1, 8, 8] (pixels / 16) and share
digits_calib.npz (200 training images) and digits_eval.npz (397 held-out images and labels).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# per model: the torch class's name in architectures.py, epochs, Adam's learning rate
_MODELS = {"cnn": ("DigitsCNN", 40, 3e-3), "mlp": ("DigitsMLP", 30, 1e-3)}


def main(argv: list[str] | None = None) -> None:
    import torch
    from sklearn.datasets import load_digits

    import onnxpress as ox
    from onnxpress.samples import FOLDER, architectures

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=FOLDER)
    parser.add_argument("--model", choices=sorted(_MODELS), default="mlp")
    parser.add_argument("--epochs", type=int, help="default: 40 for the CNN, 30 for the MLP")
    args = parser.parse_args(argv)
    class_name, epochs, rate = _MODELS[args.model]

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    train, evaluation = order[:1400], order[1400:]
    calib = train[:200]

    torch.manual_seed(0)
    model = getattr(architectures, class_name)()
    optimiser = torch.optim.Adam(model.parameters(), lr=rate, weight_decay=1e-4)
    x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(args.epochs or epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(images[evaluation])).argmax(1).numpy()
    print(f"held-out accuracy: {np.mean(predicted == labels[evaluation]):.4f} on {len(evaluation)} images")

    onnx_model = ox.export(model, torch.from_numpy(images[:1]), input_names=["input"], output_names=["logits"])
    onnx_model.producer_name = "onnxpress.samples.train_digits"
    path = args.out / f"digits_{args.model}.onnx"
    ox.save(onnx_model, path, external_data=False)
    np.savez_compressed(args.out / "digits_calib.npz", input=images[calib])
    np.savez_compressed(args.out / "digits_eval.npz", input=images[evaluation], label=labels[evaluation])
    print(f"wrote {path}, digits_calib.npz, digits_eval.npz")


if __name__ == "__main__":
    main()
