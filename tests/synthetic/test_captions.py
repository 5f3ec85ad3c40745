"""Tests of tile captions (msclip.synthetic.captions)."""

from __future__ import annotations

import re

import pytest

from msclip.errors import SyntheticDataError
from msclip.synthetic import CLASS_SYNONYMS, CLASSES, generate_tile, iter_samples, make_captions


def _first_mention(caption: str, cls: str) -> int:
    text = caption.lower()
    hits = [
        m.start()
        for k in CLASS_SYNONYMS[cls]
        for m in re.finditer(r"(?<![a-z])" + re.escape(k), text)
    ]
    return min(hits) if hits else -1


def test_captions_name_the_main_class_first() -> None:
    seen_secondary = 0
    texts: dict[str, set[str]] = {c: set() for c in CLASSES}
    for sample in iter_samples(n_per_class=6, size=24, seed=5):
        caps = sample.captions
        assert len(caps) == 3 and all(isinstance(c, str) and c for c in caps)
        for cap in caps:
            main_at = _first_mention(cap, sample.info.main)
            assert main_at >= 0, (sample.info.main, cap)
            for other in sample.info.secondary:
                at = _first_mention(cap, other)
                if at >= 0:
                    seen_secondary += 1
                    assert main_at <= at, (cap, sample.info.main, other)
        texts[sample.info.main].update(caps)
    assert seen_secondary > 10  # secondary classes are described some of the time
    for cls, caps in texts.items():
        assert len(caps) >= 10, cls  # varied wording


def test_captions_use_synonyms_and_are_reproducible() -> None:
    _, info = generate_tile("sea", 24, 0)
    words = " ".join(c.lower() for s in range(40) for c in make_captions(info, s))
    assert all(w in words for w in ("ocean", "open water", "the sea"))
    _, crop = generate_tile("cropland", 24, 0)
    words = " ".join(c.lower() for s in range(40) for c in make_captions(crop, s))
    assert "farmland" in words and "agricultural" in words and "cropland" in words
    assert make_captions(info, 7) == make_captions(info, 7)
    assert make_captions(info, 7, n=1)[0] == make_captions(info, 7, n=3)[0]
    with pytest.raises(SyntheticDataError):
        make_captions(info, 0, n=0)


def test_burned_forest_phrasing_only_over_forest() -> None:
    for s in range(30):
        _, info = generate_tile("burnt area", 24, s)
        caps = make_captions(info, s, n=3)
        if info.roles.get("forest") != "background":
            assert not any("forest" in c.lower() for c in caps), caps
