"""Captions of the synthetic scenes: varied sentences that say what a tile shows.

:func:`make_captions` names the tile's main class first and its secondary classes some of the
time, with a relation that depends on how the secondary class takes part (a river *crossing*
farmland, a lake *surrounded by* forest, clouds *partly hiding* a city), noun phrases from
:data:`msclip.synthetic.classes.CLASS_PHRASES` and varied prefixes ("a Sentinel-2 image of ...",
"... seen from above"), so one image is paired with both short and detailed descriptions, as in
remote-sensing caption sets (RSICD, Lu et al. 2018, IEEE TGRS 56:2183).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from msclip.errors import SyntheticDataError
from msclip.synthetic.classes import CLASS_PHRASES
from msclip.synthetic.tiles import TileInfo

__all__ = ["make_captions"]

_BURNED_FOREST_PHRASES = ("a burned forest", "a burnt forest")
_ROCK_PHRASES = ("bare rock", "bare rocky ground", "barren rocky slopes")
_PREFIXES = (
    "{x}", "{x}", "a satellite image of {x}", "a Sentinel-2 image of {x}", "satellite view of {x}",
    "an aerial view of {x}", "a multispectral image of {x}", "{x} seen from above",
    "{x} seen from space", "a remote sensing image showing {x}", "a top-down view of {x}",
    "an overhead image of {x}",
)  # fmt: skip

_RELATIONS: dict[str, tuple[str, ...]] = {
    "background:river": ("{m} crossing {s}", "{m} flowing through {s}", "{m} winding through {s}",
                         "{m} running through {s}"),
    "background:lake": ("{m} surrounded by {s}", "{m} in the middle of {s}", "{m} bordered by {s}",
                        "{m} among {s}"),
    "background:cloud": ("{m} over {s}", "{m} obscuring {s}", "{m} partly hiding {s}",
                         "{m} above {s}"),
    "background:burnt area": ("{m} in {s}", "{m} surrounded by {s}", "{m} within {s}"),
    "background:snow and ice": ("{m} above {s}", "{m} with {s} below",
                                "{m} and {s} below the snowline"),
    "background": ("{m} with {s}", "{m} next to {s}"),
    "coast:sea": ("{m} on the coast of {s}", "{m} next to {s}", "{m} by {s}", "{m} along {s}"),
    "coast": ("{m} along {s}", "{m} next to {s}", "{m} meeting {s}", "{m} bordering {s}"),
    "crossing": ("{m} with {s} running through it", "{m} crossed by {s}", "{m} along {s}",
                 "{m} divided by {s}"),
    "inset": ("{m} with {s}", "{m} around {s}", "{m} surrounding {s}", "{m} and {s}"),
    "patch": ("{m} with patches of {s}", "{m} and some {s}", "{m} next to {s}", "{m} with {s}"),
    "riparian": ("{m} lined by {s}", "{m} between banks of {s}", "{m} with {s} on its banks"),
    "overlay": ("{m} partly covered by {s}", "{m} under scattered {s}", "{m} with a few {s}"),
}  # fmt: skip
_MASS_ROLES = frozenset({"patch", "riparian", "overlay"})
_ROAD_SUFFIXES = (" crossed by a road", " with a road", " and a road", ", with a road across it")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _phrase(
    rng: np.random.Generator, cls: str, form: str, info: TileInfo, other: str | None = None
) -> str:
    """A noun phrase for ``cls``; ``other`` is the class the same caption also names."""
    options = CLASS_PHRASES[cls][form]
    if cls == "burnt area" and form == "name" and other != "forest":
        if info.roles.get("forest") == "background":
            options = options + _BURNED_FOREST_PHRASES
    elif cls == "bare soil" and info.main == "snow and ice":
        options = _ROCK_PHRASES  # ground left bare above the tree line is rock and scree
    elif cls == "cloud" and form == "mass":
        options = ("clouds",)
    return _pick(rng, options)


def _one_caption(rng: np.random.Generator, info: TileInfo, p_secondary: float) -> str:
    other = None
    if info.secondary and rng.random() < p_secondary:
        other = _pick(rng, info.secondary)
    body = _phrase(rng, info.main, "name", info, other)
    if other is not None:
        role = info.roles.get(other, "patch")
        key = f"{role}:{info.main}" if role == "background" else role
        if role == "coast" and other == "sea" and info.main != "beach":
            key = "coast:sea"
        templates = _RELATIONS.get(key, _RELATIONS.get(role, _RELATIONS["patch"]))
        form = "mass" if role in _MASS_ROLES else "name"
        body = _pick(rng, templates).format(m=body, s=_phrase(rng, other, form, info, info.main))
    if "road" in info.features and rng.random() < 0.5:
        body += _pick(rng, _ROAD_SUFFIXES)
    text = _pick(rng, _PREFIXES).format(x=body)
    text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
    return text + "." if rng.random() < 0.5 else text


def make_captions(
    info: TileInfo, rng: np.random.Generator | int | None = None, n: int = 3
) -> list[str]:
    """Captions of a tile, varied in wording; the main class always comes first.

    The first caption mentions a secondary class (when there is one) most often, later ones
    less often, so a dataset pairs each image with both short and detailed descriptions.

    Args:
        info: the tile's :class:`TileInfo`.
        rng: random generator, or a seed for one.
        n: number of captions (distinct when the vocabulary allows).

    Returns:
        ``n`` captions.

    Raises:
        SyntheticDataError: ``n`` below 1.
    """
    if n < 1:
        raise SyntheticDataError(f"n={n} captions requested; ask for at least 1")
    rng = np.random.default_rng(rng)
    out: list[str] = []
    for i in range(n):
        p = (0.8, 0.5, 0.25)[min(i, 2)]
        cap = _one_caption(rng, info, p)
        for _ in range(6):
            if cap not in out:
                break
            cap = _one_caption(rng, info, p)
        out.append(cap)
    return out
