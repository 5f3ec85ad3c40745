"""Tiny benchmark datasets in every layout of ``benchmark_datasets/README.md``, made in code.

Used by the evaluation tests (and to produce the example in ``docs/evaluation.md``). Every raster
is a few pixels wide; pixel values are random but seeded, so runs are reproducible.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

import msclip
from msclip.eval.datasets import load_classnames
from msclip.eval.layouts import BIGEARTHNET_BANDS

EUROSAT_CLASSES = load_classnames("eurosat").labels
RESISC45_CLASSES = load_classnames("resisc45").labels
AID_CLASSES = load_classnames("aid").labels
METERML_CLASSES = load_classnames("meterml").labels
FORESTNET_CLASSES = load_classnames("forestnet").labels

#: Resolution (pixels per side at 10 m = 12) of each BigEarthNet band file.
BEN_SIDE = {"B01": 2, "B09": 2, "B05": 6, "B06": 6, "B07": 6, "B8A": 6, "B11": 6, "B12": 6}

#: BigEarthNet v1 label sets of the mini patches (43-class CORINE names).
BEN_LABELS: list[list[str]] = [
    ["Continuous urban fabric", "Industrial or commercial units"],
    ["Non-irrigated arable land", "Pastures"],
    ["Coniferous forest", "Mixed forest", "Water bodies"],
    ["Sea and ocean", "Beaches, dunes, sands"],
    ["Transitional woodland/shrub", "Peatbogs"],
    ["Airports"],  # no 19-class counterpart: the patch has no positive class
]


def _jpg(path: Path, rng: np.random.Generator, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _png(path: Path, rng: np.random.Generator, size: int = 16, channels: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "RGBA" if channels == 4 else "RGB"
    Image.fromarray(rng.integers(0, 256, (size, size, channels), dtype=np.uint8), mode).save(path)


def _tif(path: Path, rng: np.random.Generator, count: int, size: int = 16, **kw: object) -> None:
    data = rng.integers(1, 5000, (count, size, size)).astype(np.uint16)
    res = 120.0 / size  # every band covers the same 120 m x 120 m footprint
    geo = {"crs": CRS.from_epsg(32632), "transform": Affine(res, 0, 500000, 0, -res, 5000000)}
    msclip.write_geotiff(path, data, **geo, **kw)  # type: ignore[arg-type]


def eurosat_ms(root: Path, n_per_class: int = 2, seed: int = 0) -> Path:
    """``EuroSAT_MS/2750/<Class>/<Class>_<n>.tif`` (13 bands, no descriptions) + split file
    listing the first image of each class (as ``.jpg`` names, as the published lists do)."""
    rng = np.random.default_rng(seed)
    ds = root / "EuroSAT_MS"
    for c in EUROSAT_CLASSES:
        for i in range(1, n_per_class + 1):
            _tif(ds / "2750" / c / f"{c}_{i}.tif", rng, 13)
    (ds / "eurosat-test.txt").write_text("".join(f"{c}_1.jpg\n" for c in EUROSAT_CLASSES))
    return ds


def eurosat_rgb(root: Path, n_per_class: int = 2, seed: int = 1) -> Path:
    """``EuroSAT_RGB/2750/<Class>/<Class>_<n>.jpg`` (no split file: every image is used)."""
    rng = np.random.default_rng(seed)
    ds = root / "EuroSAT_RGB"
    for c in EUROSAT_CLASSES:
        for i in range(1, n_per_class + 1):
            _jpg(ds / "2750" / c / f"{c}_{i}.jpg", rng)
    return ds


def bigearthnet(root: Path, seed: int = 2, labels: Sequence[Sequence[str]] = BEN_LABELS) -> Path:
    """``BigEarthNet/<patch>/<patch>_<band>.tif`` at 10/20/60 m + ``_labels_metadata.json``
    and a BigEarthNet-MM style split file (``S2 patch,S1 patch`` rows)."""
    rng = np.random.default_rng(seed)
    ds = root / "BigEarthNet"
    names = []
    for k, labs in enumerate(labels):
        patch = f"S2A_MSIL2A_20170613T101031_{k}_{k + 40}"
        names.append(patch)
        folder = ds / patch
        for band in BIGEARTHNET_BANDS:
            _tif(folder / f"{patch}_{band}.tif", rng, 1, size=BEN_SIDE.get(band, 12))
        meta = {"labels": list(labs), "acquisition_date": "2017-06-13 10:10:31"}
        (folder / f"{patch}_labels_metadata.json").write_text(json.dumps(meta))
    (ds / "bigearthnet-test.csv").write_text("".join(f"{n},S1A_IW_GRDH_{n[-5:]}\n" for n in names))
    return ds


def meterml(root: Path, seed: int = 3) -> Path:
    """``METER-ML/test_dataset.geojson`` + ``test_images/<folder>/`` with the three Sentinel-2
    arrays (channel-last) and ``naip.png``; one image per class plus one with two facility types
    (left out by the single-label protocol)."""
    rng = np.random.default_rng(seed)
    ds = root / "METER-ML"
    types = [*METERML_CLASSES, "CAFOs-Landfills"]
    features = []
    for k, kind in enumerate(types):
        folder = f"test_images/{k:03d}_site"
        d = ds / folder
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "sentinel-2-10m.npy", rng.integers(1, 4000, (12, 12, 4)).astype(np.uint16))
        np.save(d / "sentinel-2-20m.npy", rng.integers(1, 4000, (6, 6, 6)).astype(np.uint16))
        np.save(d / "sentinel-2-60m.npy", rng.integers(1, 4000, (2, 2, 3)).astype(np.uint16))
        _png(d / "naip.png", rng, size=20, channels=4)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-100.0 + k, 35.0]},
            "properties": {"Image_Folder": folder, "Type": kind},
        })  # fmt: skip
    doc = {"type": "FeatureCollection", "features": features}
    (ds / "test_dataset.geojson").write_text(json.dumps(doc))
    return ds


def resisc45(root: Path, seed: int = 4) -> Path:
    """``RESISC45_RGB/<class>/<class>_001.jpg`` for the 45 classes + ``resisc45-test.txt``."""
    rng = np.random.default_rng(seed)
    ds = root / "RESISC45_RGB"
    for c in RESISC45_CLASSES:
        for i in (1, 2):
            _jpg(ds / c / f"{c}_{i:03d}.jpg", rng)
    (ds / "resisc45-test.txt").write_text("".join(f"{c}_001.jpg\n" for c in RESISC45_CLASSES))
    return ds


def aid(root: Path, seed: int = 5) -> Path:
    """``AID_RGB/<Class>/<class>_1.jpg`` for the 30 classes (no split file)."""
    rng = np.random.default_rng(seed)
    ds = root / "AID_RGB"
    for c in AID_CLASSES:
        _jpg(ds / c / f"{c.lower()}_1.jpg", rng)
    return ds


def forestnet(root: Path, n_per_class: int = 2, seed: int = 6) -> Path:
    """``ForestNet_RGB/test.csv`` + ``examples/<lat>_<lon>/images/visible/composite.png``."""
    rng = np.random.default_rng(seed)
    ds = root / "ForestNet_RGB"
    rows = []
    for k, c in enumerate(FORESTNET_CLASSES):
        for i in range(n_per_class):
            ex = f"examples/{-1.5 + k:.3f}_{110.0 + i:.3f}"
            _png(ds / ex / "images" / "visible" / "composite.png", rng, size=20)
            rows.append({"label": c, "merged_label": c, "latitude": -1.5 + k,
                         "longitude": 110.0 + i, "year": 2012, "example_path": ex})  # fmt: skip
    with open(ds / "test.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return ds


def custom_multilabel(root: Path, seed: int = 7) -> Path:
    """A custom multi-label CSV dataset of 4-band GeoTIFFs declared in ``my_crops.yaml``."""
    rng = np.random.default_rng(seed)
    ds = root / "custom"
    rows = [("a.tif", "maize;water"), ("b.tif", "wheat"), ("c.tif", "water"),
            ("d.tif", "maize;wheat"), ("e.tif", "")]  # fmt: skip
    for name, _ in rows:
        _tif(ds / "img" / name, rng, 4, bands=["B02", "B03", "B04", "B08"])
    (ds / "test.csv").write_text("file,labels\n" + "".join(f"img/{n},{lab}\n" for n, lab in rows))
    yaml_path = root / "my_crops.yaml"
    yaml_path.write_text(
        "name: MyCrops\n"
        "layout: csv\n"
        "root: custom\n"
        "task: multi_label\n"
        "classes: {maize: maize field, wheat: wheat field, water: open water}\n"
        "templates: short\n"
        "csv: {file: '{split}.csv', path_column: file, label_column: labels, separator: ';'}\n"
    )
    return yaml_path


def all_layouts(root: Path) -> dict[str, Path]:
    """Write every mini dataset under ``root``; returns name -> dataset folder (or YAML)."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        "EuroSAT_MS": eurosat_ms(root),
        "EuroSAT_RGB": eurosat_rgb(root),
        "BigEarthNet": bigearthnet(root),
        "METER-ML": meterml(root),
        "RESISC45_RGB": resisc45(root),
        "AID_RGB": aid(root),
        "ForestNet_RGB": forestnet(root),
        "MyCrops": custom_multilabel(root),
    }
