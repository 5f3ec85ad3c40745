"""encode_images given a folder or a pattern where image files go, as a notebook might."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msclip
from msclip.encode import encode_images
from msclip.errors import ImageSetError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = msclip.create_model("msclip-tiny")
    return m, m.preprocess()


def test_one_folder_or_pattern_is_refused_naming_list_images(tmp_path, model) -> None:
    m, pre = model
    (tmp_path / "tiles").mkdir()
    msclip.write_geotiff(tmp_path / "tiles" / "a.tif", np.ones((10, 32, 32), "uint16"))
    for given, what in (
        (tmp_path / "tiles", "folder"),
        (str(tmp_path / "tiles" / "*.tif"), "glob"),
    ):
        with pytest.raises(ImageSetError, match=rf"is a {what}.*msclip\.io\.list_images\(\["):
            encode_images(m, pre, given)
    assert encode_images(m, pre, str(tmp_path / "tiles" / "a.tif")).indices == [0]


def test_a_folder_in_a_list_fails_naming_list_images(tmp_path, model) -> None:
    m, pre = model
    (tmp_path / "tiles").mkdir()
    result = encode_images(m, pre, [tmp_path / "tiles"])
    assert [f.index for f in result.failures] == [0]
    assert "msclip.io.list_images([" in result.failures[0].reason
