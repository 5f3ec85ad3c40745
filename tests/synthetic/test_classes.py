"""Tests of the class vocabulary of the synthetic scenes (msclip.synthetic.classes)."""

from __future__ import annotations

import pytest

from msclip.errors import MSCLIPError, SyntheticDataError, UnknownClassError
from msclip.synthetic.classes import (
    CLASS_INDEX,
    CLASS_PHRASES,
    CLASS_SYNONYMS,
    CLASSES,
    canonical_class,
    caption_mentions,
    class_slug,
)


def test_class_table() -> None:
    assert len(CLASSES) == 14 and CLASSES[0] == "sea" and CLASSES[-1] == "burnt area"
    assert [CLASS_INDEX[c] for c in CLASSES] == list(range(14))
    assert set(CLASS_SYNONYMS) == set(CLASS_PHRASES) == set(CLASSES)


def test_canonical_class_and_slug() -> None:
    assert canonical_class("Snow_and_Ice") == "snow and ice"
    assert canonical_class(" burnt-area ") == "burnt area"
    assert class_slug("burnt area") == "burnt_area"
    assert class_slug("SNOW AND ICE") == "snow_and_ice"
    with pytest.raises(UnknownClassError, match=r"unknown land-cover class 'jungle'.*forest"):
        canonical_class("jungle")


def test_error_classes_derive_from_the_package_base() -> None:
    assert issubclass(UnknownClassError, SyntheticDataError)
    assert issubclass(SyntheticDataError, MSCLIPError)
    assert issubclass(SyntheticDataError, ValueError)


def test_caption_mentions_matches_at_word_starts() -> None:
    assert caption_mentions("A satellite image of farmland", "cropland")
    assert caption_mentions("the shore of a lake", "beach")
    assert not caption_mentions("a seaside town", "lake")
    assert not caption_mentions("overseas", "sea")  # "sea" inside a word does not count
