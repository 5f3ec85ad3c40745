"""Smooth random fields and pixel frames for the synthetic scenes.

Texture, abundance maps, coastlines, cloud opacity and terrain are Gaussian-smoothed or power-law
("fractal", spectrum ~ f^-beta, the spectral synthesis of fractional Brownian surfaces, Saupe
1988, *The Science of Fractal Images*, ch. 2) filtered white noise made with the numpy FFT (no
SciPy). Every field is drawn from the caller's :class:`numpy.random.Generator`, so a seed fixes
it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

__all__ = ["pixel_grid", "quantile", "random_field", "rotated_frame", "weighted_choice"]


# Grids up to this many pixels (tiles) keep their frequency grids and filters in a cache; those
# of large scenes, each region of its own size, are recomputed rather than held in memory.
_CACHE_MAX_PIXELS = 640 * 640


def _freq(h: int, w: int) -> np.ndarray:
    return _freq_cached(h, w) if h * w <= _CACHE_MAX_PIXELS else _make_freq(h, w)


@functools.lru_cache(maxsize=32)
def _freq_cached(h: int, w: int) -> np.ndarray:
    return _make_freq(h, w)


def _make_freq(h: int, w: int) -> np.ndarray:
    """Radial spatial frequency (cycles per pixel) of an ``rfft2`` grid."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f.setflags(write=False)
    return f


@functools.lru_cache(maxsize=256)
def _fft_size(n: int) -> int:
    """Smallest ``m >= n`` whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _filter(h: int, w: int, scale: float | None, beta: float | None) -> np.ndarray:
    if h * w <= _CACHE_MAX_PIXELS:
        return _filter_cached(h, w, scale, beta)
    return _make_filter(h, w, scale, beta)


@functools.lru_cache(maxsize=64)
def _filter_cached(h: int, w: int, scale: float | None, beta: float | None) -> np.ndarray:
    return _make_filter(h, w, scale, beta)


def _make_filter(h: int, w: int, scale: float | None, beta: float | None) -> np.ndarray:
    """Transfer function of the field's filter on an ``rfft2`` grid of ``(h, w)``."""
    f = _freq(h, w)
    if scale is not None:
        # Transfer function of a Gaussian blur with standard deviation `scale` pixels.
        filt = np.exp(-2.0 * (np.pi * f * scale) ** 2)
    else:
        # Power-law ("fractal") spectrum: amplitude ~ f^(-beta/2), no DC component.
        with np.errstate(divide="ignore"):
            filt = np.where(f > 0, f, np.inf) ** (-0.5 * float(beta))  # type: ignore[arg-type]
    filt = filt.astype(np.float32)
    filt.setflags(write=False)
    return filt


def random_field(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    scale: float | None = None,
    beta: float | None = None,
    count: int = 1,
) -> np.ndarray:
    """Zero-mean, unit-std random fields: Gaussian-smoothed or power-law filtered white noise.

    The FFT makes fields periodic, so they are drawn on a grid about 1.25 times larger and
    cropped, which hides the wrap-around.

    Args:
        rng: random generator.
        shape: ``(H, W)`` of each field.
        scale: correlation length in pixels (Gaussian filter); exclusive with ``beta``.
        beta: power-law exponent of the power spectrum (2-4: cloud- and terrain-like).
        count: number of independent fields.

    Returns:
        ``float32`` array ``[count, H, W]`` (``[H, W]`` when ``count`` is 1).
    """
    h, w = shape
    ph, pw = _fft_size(h + h // 4 + 2), _fft_size(w + w // 4 + 2)
    white = rng.standard_normal((count, ph, pw), dtype=np.float32)
    # Rounded parameters keep the filter cache small; the difference is invisible.
    spec = np.fft.rfft2(white) * _filter(
        ph, pw, None if scale is None else round(scale, 1), None if beta is None else round(beta, 1)
    )
    out = np.fft.irfft2(spec, s=(ph, pw))[:, :h, :w].astype(np.float32)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return out[0] if count == 1 else out


@functools.lru_cache(maxsize=16)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only ``float32`` row and column coordinates ``(yy, xx)`` of an ``(h, w)`` grid."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def rotated_frame(
    shape: tuple[int, int], angle: float, center: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle``: ``u`` along the direction, ``v`` across it."""
    h, w = shape
    yy, xx = pixel_grid(h, w)
    cy, cx = center if center is not None else ((h - 1) / 2, (w - 1) / 2)
    c, s = math.cos(angle), math.sin(angle)
    x, y = xx - cx, yy - cy
    return x * c + y * s, -x * s + y * c


def quantile(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values``, ``q`` clipped to 0-1."""
    return float(np.quantile(values, min(max(q, 0.0), 1.0)))


def weighted_choice(rng: np.random.Generator, options: Mapping[str, float]) -> str:
    """One key of ``options`` drawn with probability proportional to its value."""
    keys = list(options)
    p = np.asarray([options[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]
