"""Land-cover classes of the synthetic scenes and the words that name them.

The 14 classes (:data:`CLASSES`, in label order) are the labels of generated tiles and the values
of their land-cover rasters. :data:`CLASS_SYNONYMS` lists the keywords that identify a class in a
caption and :data:`CLASS_PHRASES` the noun phrases captions are built from
(:mod:`msclip.synthetic.captions`). The spectra of each class are in
:mod:`msclip.synthetic.spectra`.
"""

from __future__ import annotations

import re

from msclip.errors import UnknownClassError

__all__ = [
    "BRIGHT_CLASSES",
    "CLASSES",
    "CLASS_INDEX",
    "CLASS_PHRASES",
    "CLASS_SYNONYMS",
    "WATER_CLASSES",
    "canonical_class",
    "caption_mentions",
    "class_slug",
]

#: The land-cover classes, in label order.
CLASSES: tuple[str, ...] = (
    "sea", "lake", "river", "snow and ice", "cloud", "forest", "cropland", "grassland",
    "bare soil", "desert", "urban", "wetland", "beach", "burnt area",
)  # fmt: skip
#: Class name -> label value (position in :data:`CLASSES`).
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}
#: Classes of open water (roads are not drawn over them).
WATER_CLASSES = frozenset({"sea", "lake", "river"})
#: Classes whose reflectance may exceed 1 (digital numbers up to 16000 instead of 10000).
BRIGHT_CLASSES = frozenset({"snow and ice", "cloud"})

#: Caption keywords of each class: every caption of a tile contains one of its main class's
#: keywords at the start of a word (see :func:`caption_mentions`).
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sea": ("sea", "ocean", "open water", "coastal water"),
    "lake": ("lake", "reservoir", "pond", "inland water"),
    "river": ("river", "stream", "waterway"),
    "snow and ice": ("snow", "ice", "glacier"),
    "cloud": ("cloud", "overcast"),
    "forest": ("forest", "wood", "tree"),
    "cropland": ("cropland", "crop", "farm", "agricultural", "arable", "cultivated"),
    "grassland": ("grass", "meadow", "pasture", "rangeland", "prairie"),
    "bare soil": ("bare", "barren", "soil", "unvegetated"),
    "desert": ("desert", "dune", "arid"),
    "urban": ("urban", "city", "built-up", "building", "town", "residential", "houses"),
    "wetland": ("wetland", "marsh", "swamp"),
    "beach": ("beach", "shore"),
    "burnt area": ("burnt", "burned", "burn scar", "wildfire", "fire", "scorched", "charred"),
}

#: Noun phrases used in captions: ``name`` forms stand alone ("a river"), ``mass`` forms follow
#: "patches of" / "some" ("trees").
CLASS_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "sea": {
        "name": (
            "the sea",
            "the ocean",
            "open water",
            "the open sea",
            "sea water",
            "coastal waters",
            "the blue sea",
        ),
        "mass": ("open water", "sea water"),
    },
    "lake": {
        "name": (
            "a lake",
            "a small lake",
            "a reservoir",
            "a pond",
            "a freshwater lake",
            "inland water",
            "a lake with calm water",
        ),
        "mass": ("ponds", "lakes"),
    },
    "river": {
        "name": (
            "a river",
            "a meandering river",
            "a stream",
            "a winding river",
            "a waterway",
            "a broad river",
        ),
        "mass": ("streams", "river water"),
    },
    "snow and ice": {
        "name": (
            "snow",
            "snow and ice",
            "a glacier",
            "snow-covered mountains",
            "snowfields",
            "ice and snow",
            "fresh snow",
            "a snowy mountain range",
        ),
        "mass": ("snow", "ice", "snow and ice"),
    },
    "cloud": {
        "name": (
            "clouds",
            "thick clouds",
            "cloud cover",
            "white clouds",
            "an overcast sky",
            "a cloudy sky",
        ),
        "mass": ("clouds", "cloud"),
    },
    "forest": {
        "name": (
            "a forest",
            "dense forest",
            "woodland",
            "trees",
            "forest canopy",
            "a wooded area",
            "a green forest",
        ),
        "mass": ("forest", "woodland", "trees"),
    },
    "cropland": {
        "name": (
            "cropland",
            "farmland",
            "agricultural fields",
            "crop fields",
            "arable land",
            "farm fields",
            "cultivated fields",
            "agricultural land",
        ),
        "mass": ("cropland", "farmland", "crop fields"),
    },
    "grassland": {
        "name": (
            "grassland",
            "meadows",
            "pasture",
            "grass",
            "rangeland",
            "green meadows",
            "a grassy plain",
        ),
        "mass": ("grass", "grassland", "meadow", "pasture"),
    },
    "bare soil": {
        "name": (
            "bare soil",
            "barren land",
            "bare ground",
            "exposed soil",
            "bare earth",
            "unvegetated land",
            "dry bare soil",
        ),
        "mass": ("bare soil", "barren ground", "exposed soil"),
    },
    "desert": {
        "name": (
            "a desert",
            "sand dunes",
            "a sandy desert",
            "arid land",
            "desert sand",
            "an arid desert",
            "dunes in a desert",
        ),
        "mass": ("desert sand", "dunes", "arid land"),
    },
    "urban": {
        "name": (
            "an urban area",
            "a city",
            "a built-up area",
            "buildings",
            "a town",
            "a residential area",
            "dense urban fabric",
            "city blocks",
        ),
        "mass": ("buildings", "houses", "built-up land"),
    },
    "wetland": {
        "name": ("a wetland", "marshland", "a swamp", "a marsh", "wetlands", "a marshy area"),
        "mass": ("marsh", "wetland"),
    },
    "beach": {
        "name": (
            "a beach",
            "a sandy beach",
            "the shore",
            "a sandy shore",
            "a wide beach",
            "a beach of pale sand",
        ),
        "mass": ("beach", "sandy beach"),
    },
    "burnt area": {
        "name": (
            "a burnt area",
            "a wildfire scar",
            "a burn scar",
            "land scorched by fire",
            "a fire-damaged area",
            "charred land",
            "a burned area",
        ),
        "mass": ("burnt land", "burned vegetation", "fire scars"),
    },
}


def canonical_class(name: str) -> str:
    """The generator's class name for a user spelling (``"Snow_and_Ice"`` -> ``"snow and ice"``).

    Args:
        name: class name in any case, with spaces, underscores or hyphens.

    Returns:
        The name as listed in :data:`CLASSES`.

    Raises:
        UnknownClassError: the name is not a known class.
    """
    key = re.sub(r"[\s_\-/]+", " ", str(name)).strip().lower()
    if key in CLASS_INDEX:
        return key
    raise UnknownClassError(
        f"unknown land-cover class {name!r}; choose one of: {', '.join(CLASSES)}"
    )


def class_slug(name: str) -> str:
    """File-name form of a class (``"snow and ice"`` -> ``"snow_and_ice"``)."""
    return canonical_class(name).replace(" ", "_")


def caption_mentions(caption: str, name: str) -> bool:
    """Whether a caption names a class or one of its synonyms (at the start of a word)."""
    text = caption.lower()
    return any(
        re.search(r"(?<![a-z])" + re.escape(k), text) for k in CLASS_SYNONYMS[canonical_class(name)]
    )
