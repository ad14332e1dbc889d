"""The transformer-encoder fixture: a ``torch.nn.TransformerEncoder`` trained on a small task, exported to ONNX.

Task: each sequence is Gaussian noise with one of ``CLASSES`` prototype patterns added at a few
random positions; the label is the prototype. The model (linear embedding, a 2-layer encoder,
mean pooling, a linear head) is trained for a few hundred steps so its accuracy is a real task
metric that quantization can hurt (about 90% at FP32, not 100%: the noise makes it hard).
It is exported with the dynamo exporter with dynamic batch and sequence, as one file (no
external data). Used by the calibration tests and ``benchmarks/precision.py``; needs torch
(callers skip without it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

D_MODEL, HEADS, FFN, LAYERS, CLASSES, FEATURES = 128, 4, 256, 2, 8, 32
SEQ, TRAIN_STEPS, NOISE = 24, 120, 1.6


def _batch(rng: np.random.Generator, prototypes: np.ndarray, n: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, CLASSES, n)
    x = rng.standard_normal((n, seq, FEATURES)).astype(np.float32) * NOISE
    for i, y in enumerate(labels):
        positions = rng.choice(seq, size=max(2, seq // 8), replace=False)
        x[i, positions] += prototypes[y]
    return x, labels


def encoder_task(work: Path, calib: int = 32, val: int = 256) -> dict:
    """Export (once per ``work`` folder) and return {"model", "calib", "val", "labels"}.

    Calibration and validation samples are (1, SEQ..2*SEQ, FEATURES) sequences of varying length,
    drawn from a seed disjoint from training.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "encoder.onnx"
    rng = np.random.default_rng(7)
    prototypes = rng.standard_normal((CLASSES, FEATURES)).astype(np.float32)
    if not path.exists():
        _train_and_export(path, prototypes)
    data_rng = np.random.default_rng(123)
    samples, labels = [], []
    for _ in range(calib + val):
        x, y = _batch(data_rng, prototypes, 1, int(data_rng.integers(SEQ, 2 * SEQ + 1)))
        samples.append({"x": x})
        labels.append(int(y[0]))
    return {"model": path, "calib": samples[:calib], "val": samples[calib:], "labels": labels[calib:]}


def accuracy(outputs: list[dict[str, np.ndarray]], labels: list[int]) -> float:
    """Top-1 accuracy (%) of the ``logits`` output against the labels."""
    return 100.0 * float(np.mean([int(o["logits"].reshape(-1).argmax()) == y for o, y in zip(outputs, labels)]))


def _train_and_export(path: Path, prototypes: np.ndarray) -> None:
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine; the model is small
    try:
        model = _Classifier(torch)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        rng = np.random.default_rng(0)
        model.train()
        for _ in range(TRAIN_STEPS):
            x, y = _batch(rng, prototypes, 32, SEQ)
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
        tmp = path.with_suffix(".tmp.onnx")
        with torch.no_grad():
            torch.onnx.export(
                model, (torch.from_numpy(_batch(rng, prototypes, 2, SEQ)[0]),), str(tmp), input_names=["x"],
                output_names=["logits"], dynamic_shapes={"x": {0: batch, 1: seq}}, dynamo=True, opset_version=18,
                external_data=False, verbose=False,
            )
        tmp.replace(path)
    finally:
        torch.set_num_threads(threads)


def _Classifier(torch):  # noqa: N802 - a factory: torch is imported lazily
    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(FEATURES, D_MODEL)
            layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.head = torch.nn.Linear(D_MODEL, CLASSES)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(dim=1))

    return Classifier()
