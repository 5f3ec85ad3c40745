"""Retrieval metrics of msclip.train's validation."""

from __future__ import annotations

import torch

from msclip.train.evaluate import retrieval_metrics


def test_the_same_image_in_several_pairs_is_one_image() -> None:
    """A validation table of one row per caption holds an image in several pairs: each of its
    captions is a positive of it, and its copies (the same embedding) are one image, so a
    model that ranks all its captions first scores recall 1."""
    e = torch.eye(4)
    a, b, c = e[0], e[1], e[2]
    image = torch.stack([a, a, b, c])  # the first two pairs are one image file
    a1 = torch.nn.functional.normalize(0.8 * e[0] + 0.6 * e[3], dim=0)
    text = torch.stack([a1, a, b, c])  # its second caption is the nearer one
    captions = ["a one", "a two", "b", "c"]
    files = ["/d/a.tif", "/d/a.tif", "/d/b.tif", "/d/c.tif"]
    out = retrieval_metrics(image, text, captions, ks=(1,), images=files)
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0
    assert (out["n_pairs"], out["n_images"], out["n_captions"]) == (4, 3, 4)
    # without the file names every pair is an image of its own: the first pair misses
    assert retrieval_metrics(image, text, captions, ks=(1,))["i2t_r1"] == 0.75
