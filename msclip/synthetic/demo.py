"""The recipe of the ``msclip-demo`` model: its training data, options and held-out benchmark.

One documented command (:mod:`msclip.cli.demo`) regenerates the shipped demo model from nothing::

    python -m msclip.cli.demo --out runs/msclip-demo

It generates labelled Sentinel-2 L2A scenes with captions (:mod:`msclip.synthetic`, fixed
seed), adds captions worded like msclip's default prompt templates (so the text tower learns the
phrasing that zero-shot classification uses), trains the ``msclip-demo`` architecture from
random weights with msclip's own contrastive pretraining (CLIP InfoNCE, :mod:`msclip.train`),
and copies the result to ``msclip/weights/msclip-demo.safetensors`` with a JSON card recording
how it was made. The model is trained on generated scenes only and is **not for real use**.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch

import msclip
from msclip.io import atomic_write

__all__ = ["TRAIN_ARGS", "USER_CLASS_NAMES", "WEIGHTS", "prepare_data", "zero_shot_accuracy"]

#: Where the shipped model and its card live.
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"

#: Training options of the shipped model (the flags of ``msclip-train``).
TRAIN_ARGS = [
    "--model", "msclip-demo",
    "--init", "random",
    "--batch-size", "128",
    "--optimizer", "adamw",
    "--lr", "2e-3",
    "--weight-decay", "0.05",
    "--warmup-steps", "50",
    "--schedule", "cosine",
    "--grad-clip-norm", "1.0",
    "--cache-images",
    "--val-fraction", "0.05",
    "--threads", "2",
    "--seed", "0",
]  # fmt: skip


#: Generator label -> the name a user would type.
USER_CLASS_NAMES = {
    "sea": "sea",
    "lake": "lake",
    "river": "river",
    "snow and ice": "snow",
    "cloud": "cloud",
    "forest": "forest",
    "cropland": "farmland",
    "grassland": "grassland",
    "bare soil": "bare soil",
    "desert": "desert",
    "urban": "city",
    "wetland": "wetland",
    "beach": "beach",
    "burnt area": "burnt area",
}


def zero_shot_accuracy(
    model: msclip.MSCLIP, root: Path, templates: list[str]
) -> tuple[float, dict[str, float]]:
    """Top-1 and per-class zero-shot accuracy on a generated class-folder set, the classes
    named as a user would type them (:data:`USER_CLASS_NAMES`)."""
    from msclip.encode import encode_images
    from msclip.synthetic import CLASSES, class_slug
    from msclip.zero_shot import build_classifier

    paths, labels = [], []
    for k, cls in enumerate(CLASSES):
        files = sorted((root / class_slug(cls)).glob("*.tif"))
        paths += files
        labels += [k] * len(files)
    tokenizer = msclip.get_tokenizer(model)
    names = [USER_CLASS_NAMES[c] for c in CLASSES]
    with torch.inference_mode():
        classifier = build_classifier(model, tokenizer, names, templates)
    result = encode_images(model, model.preprocess(), paths, batch_size=64)
    if result.failures:
        raise RuntimeError(f"unreadable generated files: {result.failures[:3]}")
    pred = (torch.from_numpy(result.embeddings) @ classifier.T).argmax(1).numpy()
    y = np.asarray(labels)[result.indices]
    per_class = {names[k]: float((pred[y == k] == k).mean()) for k in range(len(CLASSES))}
    return float((pred == y).mean()), per_class


def prepare_data(out: Path, n_per_class: int, size: int, seed: int, extra: int = 3) -> Path:
    """Generate the training scenes and a caption table with template-worded captions added.

    Returns:
        Path of the caption table to train on.
    """
    from msclip.synthetic import CLASS_PHRASES, generate_dataset
    from msclip.zero_shot import load_templates

    generate_dataset(out, n_per_class=n_per_class, size=size, seed=seed, progress=True)
    templates = load_templates()
    rng = random.Random(seed)
    with open(out / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0]) + [f"caption_{4 + i}" for i in range(extra)]
    for row in rows:
        phrases = CLASS_PHRASES[row["label"]]["name"]
        for i in range(extra):
            row[f"caption_{4 + i}"] = rng.choice(templates).format(c=rng.choice(phrases))

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(out / "captions_demo.csv", _write, ".csv")
