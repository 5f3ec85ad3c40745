"""Tests of the random fields of the synthetic scenes (msclip.synthetic.noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msclip.synthetic.noise import (
    _make_filter,
    quantile,
    random_field,
    rotated_frame,
    weighted_choice,
)


@pytest.mark.parametrize("kw", [{"scale": 3.0}, {"beta": 3.0}])
def test_random_fields_are_standardised_and_seeded(kw: dict) -> None:
    f = random_field(np.random.default_rng(1), (30, 50), **kw)
    assert f.shape == (30, 50) and f.dtype == np.float32
    assert abs(float(f.mean())) < 1e-4 and float(f.std()) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(f, random_field(np.random.default_rng(1), (30, 50), **kw))
    assert random_field(np.random.default_rng(1), (30, 50), count=3, **kw).shape == (3, 30, 50)


def test_smoother_fields_for_longer_correlation_lengths() -> None:
    def roughness(scale: float) -> float:
        f = random_field(np.random.default_rng(0), (64, 64), scale=scale)
        return float(np.abs(np.diff(f, axis=1)).mean())

    assert roughness(8.0) < roughness(2.0) < roughness(0.5)


def test_large_grids_give_the_cached_values() -> None:
    # Filters of large (scene) grids are computed each time instead of cached: same values.
    from msclip.synthetic.noise import _filter_cached

    np.testing.assert_array_equal(
        _make_filter(40, 21, 2.0, None), _filter_cached(40, 21, 2.0, None)
    )


def test_frame_quantile_and_choice() -> None:
    u, v = rotated_frame((5, 7), math.pi / 2)
    assert u.shape == (5, 7)
    np.testing.assert_allclose(u[:, 3], np.arange(5) - 2, atol=1e-5)  # u runs down the rows
    np.testing.assert_allclose(v[2], 3 - np.arange(7), atol=1e-5)  # v runs across, leftwards
    assert quantile(np.arange(11.0), 1.7) == 10.0  # q clipped to 1
    rng = np.random.default_rng(0)
    draws = [weighted_choice(rng, {"a": 0.9, "b": 0.1, "c": 0.0}) for _ in range(200)]
    assert "c" not in draws and draws.count("a") > 150
