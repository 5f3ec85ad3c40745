"""build_index as a notebook calls it: folders and patterns among the images, as on the command
line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS

import msclip
from msclip.errors import ImageSetError
from msclip.index import IndexStore
from msclip.index.build import build_index


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    """tiles/{sea,forest}/*.tif: two 10-band 32x32 files per class."""
    root = tmp_path_factory.mktemp("api_tiles") / "tiles"
    rng = np.random.default_rng(1)
    for c in ("sea", "forest"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            data = rng.integers(1, 6000, (10, 32, 32)).astype("uint16")
            tf = Affine(10, 0, 500000 + 400 * i, 0, -10, 5000000)
            msclip.write_geotiff(
                root / c / f"{c}_{i}.tif", data, crs=CRS.from_epsg(32632), transform=tf
            )
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = msclip.create_model("msclip-tiny")
    return m, m.preprocess()


def _names(index: Path) -> list[str]:
    return sorted(Path(s.key).name for s in IndexStore.open(index).sources)


ALL = ["forest_0.tif", "forest_1.tif", "sea_0.tif", "sea_1.tif"]


@pytest.mark.parametrize(
    "given",
    [
        lambda t: str(t),  # one folder, as a string
        lambda t: t,  # one folder, as a Path
        lambda t: [str(t / "sea"), t / "forest"],  # folders in a list
        lambda t: [str(t / "*" / "*.tif")],  # a glob pattern
    ],
)
def test_a_folder_or_pattern_is_its_images(tmp_path, tiles, model, given) -> None:
    m, pre = model
    report = build_index(tmp_path / "i", m, pre, given(tiles), commit_seconds=0)
    assert report.failures == [] and report.count == 4
    assert _names(tmp_path / "i") == ALL


def test_a_folder_of_scenes_is_its_rasters(tmp_path, tiles, model) -> None:
    m, pre = model
    report = build_index(tmp_path / "i", m, pre, scenes=tiles / "sea", tile_size=16)
    assert report.failures == [] and report.tiles == 8  # two scenes of 2x2 tiles


def test_an_empty_folder_is_refused_before_anything_is_written(tmp_path, model) -> None:
    m, pre = model
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetError, match=r"empty holds no image files") as info:
        build_index(tmp_path / "i", m, pre, [tmp_path / "empty"])
    assert info.value.param == "images"
    with pytest.raises(ImageSetError, match=r"matches no image files") as info:
        build_index(tmp_path / "i", m, pre, scenes=[str(tmp_path / "empty" / "*.tif")])
    assert info.value.param == "scenes"
    assert not (tmp_path / "i").exists()


def test_nothing_given_creates_an_empty_index_with_a_warning(tmp_path, model, caplog) -> None:
    """An empty index is a valid start for later adds, but a call given no images and no scenes
    (an empty list from a glob in a notebook) says so, once, rather than nothing."""
    m, pre = model
    index = tmp_path / "empty.index"
    with caplog.at_level("WARNING", logger="msclip.index.build"):
        report = build_index(index, m, pre, images=[], scenes=[])
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert report.count == 0 and IndexStore.open(index).count == 0
    assert len(said) == 1 and "no images or scenes given" in said[0]
    assert "created an empty index" in said[0] and "msclip-index add" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="msclip.index.build"):
        build_index(index, m, pre)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and "the index is unchanged" in said[0]
