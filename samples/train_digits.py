"""Train the sample digits CNN and write digits_cnn.onnx, digits_calib.npz and digits_eval.npz.

Run from the repository: ``.venv/bin/python -m onnxpress.samples.train_digits``. Needs torch and
scikit-learn (the ``torch`` and ``dev`` extras). Deterministic: seeded split and training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import torch
    from sklearn.datasets import load_digits

    import onnxpress as ox
    from onnxpress.samples import FOLDER
    from onnxpress.samples.architectures import DigitsCNN

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=FOLDER)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    train, evaluation = order[:1400], order[1400:]
    calib = train[:200]

    torch.manual_seed(0)
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for epoch in range(args.epochs):
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
    ox.save(onnx_model, args.out / "digits_cnn.onnx", external_data=False)
    np.savez_compressed(args.out / "digits_calib.npz", input=images[calib])
    np.savez_compressed(args.out / "digits_eval.npz", input=images[evaluation], label=labels[evaluation])
    print(f"wrote {args.out / 'digits_cnn.onnx'}, digits_calib.npz, digits_eval.npz")


if __name__ == "__main__":
    main()
