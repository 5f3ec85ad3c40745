"""Zero-shot inference throughput of the Llama3-MS-CLIP architecture on this machine.

Setup (the issue's reference workload): ViT-B-16 with a 10-band patch embedding
(``create_model("Llama3-MS-CLIP-Base")`` without weights has the published architecture, so the
figures are those of the real model), 64 GeoTIFF tiles of 224x224 pixels x 12 bands uint16,
10 classes x 50 templates (msclip's ``eo`` set plus the first 15 of ``sentinel2``).

Prints:

1. end-to-end ``msclip-inference --run-classification`` (model creation, text tower, reading,
   preprocessing, image tower, CSV), cold (empty text cache) and warm (cache filled by the cold
   run), in images/s, for fp32 and bf16 weights and 0 or 1 DataLoader workers;
2. the text tower alone for the 500 prompts: full 77-token prompts vs trimmed
   (``encode_text(trim=True)``), fp32 and bf16;
3. the image tower alone at batch 32: fp32 weights, bf16 weights (cast once) and
   ``torch.autocast("cpu", bfloat16)`` over fp32 weights (target: bf16 >= 9 images/s).

The machines are shared: every figure is the best of a few runs (variants interleaved where it
matters), and the load average is printed at the start and the end.

Index search figures come from ``benchmarks/index_search.py``.

Run: ``python benchmarks/inference.py`` (several minutes on 2 cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

import msclip
from msclip.cli.inference import main as inference_main
from msclip.zero_shot import format_prompts, load_templates

CLASSES = [
    "annual crop",
    "forest",
    "herbaceous vegetation",
    "highway",
    "industrial buildings",
    "pasture",
    "permanent crop",
    "residential buildings",
    "river",
    "sea or lake",
]


def make_tiles(root: Path, n: int, size: int = 224, seed: int = 0) -> list[Path]:
    """``n`` 12-band uint16 GeoTIFF tiles (L2A band order) with a UTM CRS."""
    from affine import Affine
    from rasterio.crs import CRS

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        data = rng.integers(1, 8000, size=(12, size, size), dtype=np.uint16)
        p = root / f"tile_{i:03d}.tif"
        tf = Affine(10, 0, 500000 + 10 * size * i, 0, -10, 5000000)
        msclip.write_geotiff(p, data, crs=CRS.from_epsg(32632), transform=tf, compress=None)
        paths.append(p)
    return paths


def templates_50() -> list[str]:
    return load_templates("eo") + load_templates("sentinel2")[:15]


def end_to_end(
    folder: Path, templates: Path, cache: Path, precision: str, workers: int, n_images: int
) -> float:
    """Seconds of one ``--run-classification`` call (printing suppressed)."""
    out = folder.parent / "out.csv"
    argv = [
        "--run-classification",
        "--model-name",
        "Llama3-MS-CLIP-Base",
        "--no-pretrained",
        "--images",
        str(folder),
        "--class-names",
        *CLASSES,
        "--templates",
        str(templates),
        "--text-cache-dir",
        str(cache),
        "--precision",
        precision,
        "--workers",
        str(workers),
        "--batch-size",
        "32",
        "--save-path",
        str(out),
        "--quiet",
    ]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = inference_main(argv)
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"inference failed with exit status {rc}")
    return elapsed


def text_tower(model: msclip.MSCLIP, prompts: list[str], trim: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds to encode ``prompts`` in batches of 250."""
    tokenizer = msclip.get_tokenizer(model)
    tokens = tokenizer(prompts)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(prompts), 250):
                model.encode_text(tokens[i : i + 250], trim=trim)
            best = min(best, time.perf_counter() - start)
    return best


def image_tower(model: msclip.MSCLIP, batch: int, autocast: bool) -> tuple[float, float]:
    """Images/s of one ``encode_image`` call on a random batch: by wall time, and by CPU time
    (process CPU seconds spread over the intra-op threads), which other processes on a shared
    machine disturb much less."""
    x = torch.randn(batch, len(model.bands), model.image_size, model.image_size)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        wall, cpu = time.perf_counter(), time.process_time()
        model.encode_image(x)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return batch / wall, batch / (cpu / torch.get_num_threads())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 images, fewer variants (smoke run)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=3, help="runs per model-alone figure")
    p.add_argument("--e2e-repeats", type=int, default=2, help="runs per end-to-end figure")
    p.add_argument("--skip-end-to-end", action="store_true", help="model-alone figures only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_images = 8 if args.quick else 64
    repeats = 1 if args.quick else args.repeats
    e2e_repeats = 1 if args.quick else args.e2e_repeats
    # The machines are shared: a load average above the core count means contended figures.
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; {n_images} tiles 224x224x12 uint16, "
        f"{len(CLASSES)} classes x 50 templates"
    )

    if not args.skip_end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            folder = root / "tiles"
            folder.mkdir()
            make_tiles(folder, n_images)
            tpl = root / "templates.txt"
            tpl.write_text("\n".join(templates_50()) + "\n")

            # 1. end to end
            rows = []
            variants = (
                [("fp32", 0), ("bf16", 0)]
                if args.quick
                else [("fp32", 0), ("fp32", 1), ("bf16", 0), ("bf16", 1)]
            )
            for precision, workers in variants:
                colds, warms = [], []
                for r in range(e2e_repeats):  # cold (fresh cache) then warm, best of the repeats
                    cache = root / f"cache-{precision}-{workers}-{r}"
                    colds.append(end_to_end(folder, tpl, cache, precision, workers, n_images))
                    warms.append(end_to_end(folder, tpl, cache, precision, workers, n_images))
                cold, warm = min(colds), min(warms)
                rows.append([precision, workers, cold, n_images / cold, warm, n_images / warm])
            print(
                f"\nEnd-to-end --run-classification, best of {e2e_repeats} (includes model "
                "creation and hashing of the random weights for the cache key)"
            )
            print(
                tabulate(
                    rows,
                    headers=["weights", "workers", "cold s", "cold img/s", "warm s", "warm img/s"],
                    floatfmt=".2f",
                )
            )

    # 2. text tower
    prompts = [pr for c in CLASSES for pr in format_prompts(c, templates_50())]
    rows = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = msclip.create_model("Llama3-MS-CLIP-Base", precision=precision)
        start = time.perf_counter()
        _ = model.checkpoint_sha256
        hash_s = time.perf_counter() - start
        full = text_tower(model, prompts, False, 1) if not args.quick else float("nan")
        trimmed = text_tower(model, prompts, True, repeats)
        rows.append([precision, len(prompts), full, trimmed, hash_s])
    print("\nText tower, 10 classes x 50 templates")
    print(
        tabulate(
            rows,
            headers=["weights", "prompts", "77 tokens s", "trimmed s", "weights hash s"],
            floatfmt=".2f",
        )
    )

    # 3. image tower at batch 32: variants interleaved, best of `repeats` (the machine is shared;
    # the best run is the one least disturbed by other processes).
    torch.manual_seed(0)
    fp32 = msclip.create_model("Llama3-MS-CLIP-Base")
    bf16 = msclip.create_model("Llama3-MS-CLIP-Base", precision="bf16")
    towers = [
        ("fp32 weights", fp32, False),
        ("bf16 weights (cast once)", bf16, False),
        ("autocast bf16 over fp32", fp32, True),
    ]
    for _, model, autocast in towers:  # warm-up
        image_tower(model, 4, autocast)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in towers}
    for _ in range(repeats):
        for name, model, autocast in towers:
            runs[name].append(image_tower(model, 32, autocast))
    rows = [
        [name, max(w for w, _ in v), float(np.median([w for w, _ in v])), max(c for _, c in v)]
        for name, v in runs.items()
    ]
    print("\nImage tower alone, batch 32 (target: bf16 weights >= 9 img/s)")
    print(
        tabulate(
            rows,
            headers=[
                "variant",
                f"best of {repeats} img/s",
                "median img/s",
                "by CPU time img/s",
            ],
            floatfmt=".2f",
        )
    )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
