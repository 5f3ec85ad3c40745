"""Streaming dense prediction over whole scenes, written as a georeferenced GeoTIFF / COG.

:func:`predict_scene` reads a GeoTIFF or COG one row of tiles at a time (rasterio windowed
reads), normalises the raw digital numbers with the model's statistics
(:class:`ScenePreprocess`), runs any dense predictor on batches of overlapping tiles, blends the
tiles, and writes every row as soon as no later tile can touch it
(:class:`msclip.io.GeoTiffStripWriter`). Memory does not grow with the scene: what is held is
the raw window of one batch of neighbouring tiles, one strip of accumulators
(``K x tile_size x width`` float32 sums and the summed weights), the writer's row of output
blocks and GDAL's block cache (capped, ``gdal_cache_mb``); freed heap pages are returned to the
OS after every batch (glibc's ``malloc_trim``). For a 10,980-pixel-wide scene, 64-pixel tiles
and 10 classes the accumulators take 31 MB, the output blocks 6 MB and GDAL 16 MB.

Tiling. Tiles of ``tile_size`` pixels start every ``stride = tile_size - overlap`` pixels; the
last row and column of tiles are shifted to end exactly at the border, so every edge pixel is
predicted and no tile reaches outside the scene. A scene narrower or lower than one tile is
padded by mirroring (``numpy.pad`` mode ``symmetric``) up to the tile size and cropped back.

Blending. Each tile's outputs are multiplied by a separable window ``w(y) w(x)`` and added into
the accumulators; the blended output is ``sum_t w_t p_t / sum_t w_t``. ``cosine`` uses the Hann
window sampled at pixel centres, ``w(i) = max(floor, sin^2(pi (i + 0.5) / tile_size))``, which
down-weights the tile borders where a network sees the least context (the tiling of Huang et
al., "Tiling and Stitching Segmentation Output for Remote Sensing", IGARSS 2018; the smooth
blending of e.g. ``pytorch-toolbelt``); ``uniform`` averages overlapping tiles with equal
weight. Because the weights are normalised by their sum, a predictor whose outputs are the same
in every tile covering a pixel (a constant or a pointwise model) is reproduced exactly, up to
float32 rounding. With ``overlap=0`` tiles are cut hard.

Outputs (one file):

* ``segmentation``: the predictor returns class logits (softmax is applied; pass
  ``logits=False`` when it returns probabilities); probabilities are blended. Band 1 ``class``
  is the arg-max class, band 2 ``confidence`` is its blended probability in percent (0-100,
  rounded; GDAL scale 0.01 so readers that apply scales get 0-1). Both bands are ``uint8`` for
  fewer than 255 classes, else ``uint16``; nodata is the largest value of the type.
* ``regression``: the blended values, one ``float32`` band per output, nodata NaN (or
  ``output_nodata``).

Input pixels whose every band is nodata (the file's nodata value, or ``nodata=``) or NaN are
written as nodata; tiles that hold only such pixels are not run. A pixel with only some bands
missing is predicted with those bands set to their mean (0 after normalisation), as
:class:`msclip.spectral.SpectralPreprocess` does. The windows read get the checks that
preprocessing gives every image (:meth:`ScenePreprocess.problems`), each problem said once per
run. The output has the source CRS and transform (none for a source without georeference); it is
never the scene itself.

Reproducibility. Tiles are processed and accumulated in the same order whatever the batch size,
so the output depends on batching only through the predictor; put models in ``eval()`` mode
(batch-norm in training mode mixes the tiles of a batch). The tests check that batch sizes 1 and
16 write identical files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.errors import (
    BandCoverageError,
    PredictorOutputError,
    RasterReadError,
    TilingError,
)
from msclip.hardware import resolve_device
from msclip.io.readers import (
    declares_scale,
    gdal_reason,
    image_bands,
    raster_band_names,
    read_image,
    thermal_bands,
)
from msclip.io.readers import product_scale as scale_of_product
from msclip.memory import trim_heap
from msclip.spectral.adapt import map_bands
from msclip.spectral.bands import Band, resolve_bands
from msclip.spectral.nodata import missing_pixels
from msclip.spectral.preprocess import fill_mask, input_problems, report_input_problems
from msclip.tiling import map_transform, refuse_scene_as_output

__all__ = [
    "BLEND_KINDS",
    "ScenePrediction",
    "ScenePreprocess",
    "blend_window",
    "ground_pixel_size",
    "pixel_size_range",
    "predict_scene",
    "predict_scene_with_head",
    "tile_starts",
    "warn_other_pixel_size",
]

logger = logging.getLogger(__name__)

#: Tile blending windows.
BLEND_KINDS = ("cosine", "uniform")


def blend_window(size: int, kind: str = "cosine", floor: float = 1e-3) -> np.ndarray:
    """1-D blending weights of a tile side (float64, all > 0).

    Args:
        size: tile side in pixels.
        kind: ``cosine`` (Hann window at pixel centres, clipped below at ``floor``) or
            ``uniform`` (ones).
        floor: smallest weight of the cosine window (> 0, so that every pixel has weight).
    """
    if kind not in BLEND_KINDS:
        raise TilingError(f"blend must be one of {', '.join(BLEND_KINDS)}, got {kind!r}")
    if size < 1:
        raise TilingError(f"tile size must be >= 1, got {size}")
    if kind == "uniform":
        return np.ones(size)
    if not 0 < floor <= 1:
        raise TilingError(f"window floor must be in (0, 1], got {floor}")
    i = np.arange(size, dtype=np.float64)
    return np.maximum(np.sin(np.pi * (i + 0.5) / size) ** 2, floor)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles along one axis: every ``stride``, the last one shifted to end at
    ``length`` (a single tile at 0 when ``length <= tile``)."""
    if tile < 1 or stride < 1:
        raise TilingError(f"tile size and stride must be >= 1, got {tile} and {stride}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


class ScenePreprocess:
    """Normalise raw windows ``[..., C_in, h, w]`` of a scene into the model's channels.

    The per-pixel steps of :class:`msclip.spectral.SpectralPreprocess` without resizing: select
    and map bands by name (:func:`msclip.spectral.map_bands`), divide by ``divisor``, fill
    nodata/NaN values with the band mean, ``(x - mean) / std``, and for band sets that need
    interpolation the wavelength mapping into the model's channels.

    Args:
        model_bands: the model's bands in channel order.
        mean: band name -> mean (after division by ``divisor``); must cover the model's bands.
        std: band name -> standard deviation.
        divisor: raw values are divided by it first.
        input_bands: band names of the raw windows' channels (bound later by
            :meth:`with_input` when omitted).
        nodata: raw value marking missing values.
        strict_bands: input bands that lack most of the model's, and the problems of
            :meth:`problems`, raise :class:`~msclip.errors.BandCoverageError` instead of
            warning, as :class:`msclip.spectral.SpectralPreprocess` does.
    """

    def __init__(
        self,
        model_bands: Sequence[str | Band],
        mean: Mapping[str, float],
        std: Mapping[str, float],
        divisor: float = 1.0,
        input_bands: Sequence[str | Band] | None = None,
        nodata: float | None = None,
        strict_bands: bool = False,
    ) -> None:
        self.model_bands = tuple(b.name for b in resolve_bands(model_bands))
        self.mean = {k: float(v) for k, v in mean.items()}
        self.std = {k: float(v) for k, v in std.items()}
        self.divisor = float(divisor)
        self.nodata = nodata
        self.strict_bands = bool(strict_bands)
        self.input_bands: tuple[str, ...] | None = None
        if input_bands is not None:
            self._bind(tuple(b.name for b in resolve_bands(input_bands)))

    @classmethod
    def from_model(
        cls,
        model: Any,
        input_bands: Sequence[str | Band] | None = None,
        nodata: float | None = None,
        strict_bands: bool = False,
    ) -> ScenePreprocess:
        """The preprocessing of an :class:`msclip.MSCLIP` (its bands and statistics)."""
        stats = model.config.stats
        return cls(
            model.bands, stats.mean, stats.std, stats.divisor, input_bands, nodata, strict_bands
        )

    def with_input(
        self,
        input_bands: Sequence[str | Band],
        nodata: float | None = None,
        strict_bands: bool | None = None,
    ) -> ScenePreprocess:
        """A copy bound to ``input_bands`` (and ``nodata`` and ``strict_bands`` when given)."""
        return ScenePreprocess(
            self.model_bands,
            self.mean,
            self.std,
            self.divisor,
            input_bands,
            self.nodata if nodata is None else nodata,
            self.strict_bands if strict_bands is None else strict_bands,
        )

    def _bind(self, names: tuple[str, ...]) -> None:
        mapping = map_bands(self.model_bands, names)
        coverage = input_problems(
            self.model_bands, self.mean, self.divisor, np.float32, mapping.missing, names
        )
        report_input_problems(coverage, self.strict_bands, stacklevel=4)
        perm = mapping.permutation
        if perm is not None:
            idx = list(perm)
            mean = [self.mean[b] for b in self.model_bands]
            std = [self.std[b] for b in self.model_bands]
            self._matrix = None
        else:
            idx = mapping.used_inputs
            model_mean = [self.mean[b] for b in self.model_bands]
            model_std = [self.std[b] for b in self.model_bands]
            d_mean, d_std = mapping.input_stats(model_mean, model_std)
            mean = [self.mean.get(names[j], d_mean[j]) for j in idx]
            std = [self.std.get(names[j], d_std[j]) for j in idx]
            self._matrix = torch.as_tensor(mapping.matrix[:, idx], dtype=torch.float32)
        self.input_bands = names
        self._idx = idx
        self._mean = torch.tensor(mean, dtype=torch.float32)
        self._std = torch.tensor(std, dtype=torch.float32)

    @property
    def out_channels(self) -> int:
        """Channels of the normalised output (the model's band count)."""
        return len(self.model_bands)

    def problems(self, raw: np.ndarray) -> dict[str, Any]:
        """What is wrong with the values of a raw window ``[C_in, h, w]`` for the model, by kind,
        as :class:`msclip.spectral.SpectralPreprocess` checks each input
        (:func:`msclip.spectral.preprocess.input_problems`: 8-bit pictures or reflectance from
        0 to 1 for a model of reflectance x 10000, one value in every band of many pixels of a
        scene that declares no nodata value); the band coverage is checked when the input bands
        are bound. Say them with :func:`msclip.spectral.preprocess.report_input_problems`."""
        names = self.input_bands or ()
        return input_problems(
            self.model_bands, self.mean, self.divisor, raw.dtype, (), names, raw, self.nodata
        )

    def valid(self, raw: np.ndarray) -> np.ndarray:
        """``[..., h, w]`` true where at least one band is neither nodata nor non-finite."""
        return ~missing_pixels(raw, self.nodata)

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        """Normalised float32 ``[..., C_model, h, w]`` of raw ``[..., C_in, h, w]``."""
        if self.input_bands is None:
            raise TilingError("ScenePreprocess has no input bands; call with_input(bands) first")
        if raw.shape[-3] != len(self.input_bands):
            raise TilingError(
                f"raw window has {raw.shape[-3]} bands but {len(self.input_bands)} input bands "
                f"are named: {list(self.input_bands)}"
            )
        sel = np.take(raw, self._idx, axis=-3)
        x = torch.from_numpy(np.ascontiguousarray(sel).astype(np.float32, copy=False))
        if self.divisor != 1.0:
            x = x / self.divisor
        shape = (-1, 1, 1)
        mean, std = self._mean.view(shape), self._std.view(shape)
        bad = fill_mask(sel, self.nodata)
        if bad is not None:
            x = torch.where(bad, mean.expand_as(x), x)
        x = (x - mean) / std
        if self._matrix is not None:
            x = torch.einsum("ij,...jhw->...ihw", self._matrix, x)
        return x


@dataclass
class ScenePrediction:
    """What :func:`predict_scene` wrote.

    Attributes:
        path: the output file.
        height, width: scene size in pixels.
        task: ``segmentation`` or ``regression``.
        num_outputs: classes or regression outputs of the predictor.
        tiles: tiles in the grid.
        tiles_run: tiles given to the predictor (the others held only nodata).
        seconds: wall time.
        tiles_per_s: tiles of the grid per second.
        megapixels_per_s: scene megapixels per second.
        band_names: band descriptions of the output.
        nodata: nodata value of the output.
        unreadable: with ``skip_unreadable``, one entry per tile that could not be read (a
            damaged block), ``rows a-b, columns c-d: GDAL's reason``; its pixels are nodata
            unless a readable neighbouring tile covers them.
    """

    path: Path
    height: int
    width: int
    task: str
    num_outputs: int
    tiles: int
    tiles_run: int
    seconds: float
    tiles_per_s: float
    megapixels_per_s: float
    band_names: tuple[str, ...]
    nodata: float
    unreadable: tuple[str, ...] = ()


def _pad_to(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    ph, pw = rows - a.shape[-2], cols - a.shape[-1]
    if ph <= 0 and pw <= 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))]
    return np.pad(a, pad, mode="symmetric")


def predict_scene(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    preprocess: ScenePreprocess | Any,
    *,
    task: str = "segmentation",
    tile_size: int = 64,
    overlap: int | None = None,
    batch_size: int = 16,
    blend: str = "cosine",
    window_floor: float = 1e-3,
    bands: Sequence[str | Band] | None = None,
    sensor: str | None = None,
    nodata: float | None = None,
    logits: bool = True,
    num_outputs: int | None = None,
    output_names: Sequence[str] | None = None,
    output_nodata: float | None = None,
    value_scale: float = 1.0,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    cog: bool = False,
    compress: str | None = "deflate",
    block_size: int = 256,
    gdal_cache_mb: int = 16,
    progress: bool = True,
    tags: Mapping[str, str] | None = None,
    skip_unreadable: bool = False,
    strict_bands: bool = False,
) -> ScenePrediction:
    """Predict a whole scene tile by tile and write the blended result as a GeoTIFF.

    Args:
        src: the scene (GeoTIFF / COG), any size and band set the preprocessing can map.
        dst: output GeoTIFF (written atomically).
        predict_fn: maps a normalised batch ``[B, C_model, T, T]`` to ``[B, K, T, T]``
            (e.g. :meth:`msclip.heads.dense.DenseModel.predict` or
            :class:`msclip.heads.maskclip.MaskCLIP`); called under ``torch.inference_mode``.
        preprocess: a :class:`ScenePreprocess`, or an :class:`msclip.MSCLIP` whose bands and
            statistics build one (its :meth:`~msclip.MSCLIP.output_tags` then tag the output).
            Bound to the file's bands unless it already has input bands.
        task: ``segmentation`` (class + confidence bands) or ``regression`` (value bands).
        tile_size: tile side ``T`` in pixels (the model's training size is a natural choice).
        overlap: pixels shared by neighbouring tiles (default ``T // 4``); 0 cuts hard.
        batch_size: tiles per predictor call.
        blend: ``cosine`` or ``uniform`` (see the module docstring).
        window_floor: smallest cosine weight.
        bands: band names of the file when it does not name them (band descriptions).
        sensor: the sensor whose band order unnamed bands follow (``planetscope4``, ...), as
            for :func:`msclip.io.read_raster`.
        nodata: raw nodata value (default: the file's).
        logits: segmentation predictor returns logits (softmax applied) rather than
            probabilities.
        num_outputs: ``K``; found by running the predictor on one tile when omitted.
        output_names: band names of regression outputs.
        output_nodata: nodata of regression outputs (NaN by default).
        value_scale: regression outputs are divided by it before writing (the loss's target
            ``scale``, to write values in the units of the raw labels; by default the file
            holds the scaled units the head was trained and scored in).
        class_names: names of the classes, stored in the ``msclip_class_names`` tag (JSON).
        device: where batches are sent (default: the CPU).
        cog: write a Cloud-Optimised GeoTIFF (with overviews).
        compress: output compression.
        block_size: output tile side.
        gdal_cache_mb: GDAL block cache while reading and writing (bounds memory). Each
            row of tiles decodes the input blocks it touches; a cache that holds one row of
            input blocks (width x block height x bands x bytes per value) decodes every block
            once and reads several times faster, at that much more memory.
        progress: show a tqdm bar (tiles/s).
        tags: extra metadata of the output.
        skip_unreadable: a tile that cannot be read (a damaged block of the file) is left out
            and named in :attr:`ScenePrediction.unreadable` (its pixels are nodata unless a
            readable neighbouring tile covers them; the output's ``msclip_unreadable_tiles``
            tag counts them), instead of stopping the run with :class:`RasterReadError`.
        strict_bands: refuse a scene that lacks most of the model's bands, is an 8-bit picture
            or holds reflectance from 0 to 1 for a model of reflectance x 10000
            (:class:`~msclip.errors.BandCoverageError`) instead of warning
            (:class:`~msclip.errors.BandCoverageWarning`). Either way each problem is said once
            per run, when the first window that shows it is read, as is a value read as data in
            every band of many pixels of a scene that declares no nodata value (0 at the swath
            edges of a product exported without its nodata tag:
            :class:`~msclip.errors.UndeclaredNodataWarning`; give ``nodata=``).

    Raises:
        RasterReadError: unreadable source, or an unreadable tile without
            ``skip_unreadable``.
        OutputPathError: ``dst`` is the scene itself.
        TilingError: bad tile parameters or task.
        BandCoverageError: with ``strict_bands``, a scene the model cannot read well.
        PredictorOutputError: the predictor returns a wrong shape.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    from msclip.io import GeoTiffStripWriter
    from msclip.progress import progress_bar

    if task not in ("segmentation", "regression"):
        raise TilingError(f"task must be 'segmentation' or 'regression', got {task!r}")
    t = int(tile_size)
    ov = t // 4 if overlap is None else int(overlap)
    if t < 1 or not 0 <= ov < t:
        raise TilingError(
            f"tile_size must be >= 1 and 0 <= overlap < tile_size, got {tile_size} and {overlap}"
        )
    if batch_size < 1:
        raise TilingError(f"batch_size must be >= 1, got {batch_size}")
    if not math.isfinite(value_scale) or value_scale == 0:
        raise TilingError(f"value_scale must be finite and non-zero, got {value_scale}")
    owner = getattr(predict_fn, "__self__", predict_fn)
    if isinstance(owner, torch.nn.Module) and owner.training:
        warnings.warn(
            f"the predictor ({type(owner).__name__}) is in training mode: batch-norm and dropout "
            "then make each tile depend on its batch; call .eval() first",
            stacklevel=2,
        )
    src_path = os.fspath(src)
    if not os.path.isfile(src_path):
        raise RasterReadError(f"scene file not found: {src_path}")
    refuse_scene_as_output(src_path, dst)
    weight1 = blend_window(t, blend, window_floor).astype(np.float32)
    weight2 = np.outer(weight1, weight1)
    device = resolve_device(device)
    dev = torch.device("cpu") if device is None else torch.device(device)

    start_time = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=int(gdal_cache_mb) * 1024 * 1024):
        try:
            ds = rasterio.open(src_path)
        except RasterioIOError as err:
            raise RasterReadError(f"cannot open scene {src_path}: {err}") from err
        with ds:
            height, width = ds.height, ds.width
            # the value of missing pixels as stored in the file: a rescaled read (below) marks
            # them NaN, so ``nodata=`` must reach the reader, not only the preprocessing
            stored_nodata = ds.nodata if nodata is None else nodata
            raw_nodata = stored_nodata
            product_scale = None  # the sensor's, once the bands are named (below)

            def read(window: Window) -> np.ndarray:
                try:
                    return read_image(
                        ds, window, nodata=stored_nodata, promote=True,
                        default_scale=product_scale, thermal=thermal,
                    )[0]  # fmt: skip
                except RasterioIOError as err:  # a damaged block: the file, where and why
                    _clear_gdal_error(ds)
                    raise RasterReadError(
                        f"cannot read scene {src_path} at {_where(window, gdal_reason(err))}"
                    ) from err

            def read_group(window: Window, starts: Sequence[int]) -> tuple[np.ndarray, set[int]]:
                """The raw pixels of a group of neighbouring tiles and the starts of those that
                cannot be read; with ``skip_unreadable``, a group whose window fails is read tile
                by tile, and what no readable tile covers is NaN (missing)."""
                try:
                    return read(window), set()
                except RasterReadError as err:
                    if not skip_unreadable:
                        raise
                    first = err
                c0, r0 = int(window.col_off), int(window.row_off)
                h, w = int(window.height), int(window.width)
                raw = np.full((len(image), h, w), np.nan, dtype=np.float32)
                failed: set[int] = set()
                for c in starts:
                    tile = Window(c, r0, min(t, width - c), h)
                    try:
                        part = read(tile)
                    except RasterReadError as err:
                        failed.add(c)
                        unreadable.append(_where(tile, gdal_reason(err.__cause__ or err)))
                        continue
                    raw[:, :, c - c0 : c - c0 + part.shape[-1]] = part
                if not failed:  # the group's window failed where no tile of it does
                    raise first
                return raw, failed

            prep = preprocess
            if not isinstance(prep, ScenePreprocess):
                prep = ScenePreprocess.from_model(preprocess)
            strict = strict_bands or prep.strict_bands
            names = prep.input_bands or raster_band_names(src_path, bands, sensor, src=ds)
            # a file that names its bands as another sensor's keeps its values (read_raster)
            product_scale = scale_of_product(sensor, names)
            if declares_scale(ds, sensor, names):  # read rescaled (float32): missing pixels NaN
                raw_nodata = None
            if prep.input_bands is None or raw_nodata != prep.nodata or strict != prep.strict_bands:
                try:
                    prep = prep.with_input(names, raw_nodata, strict)
                except BandCoverageError as err:
                    raise BandCoverageError(f"{src_path}: {err}", param="bands") from None
            image = image_bands(ds)  # an alpha band is a mask, not an image band
            if len(prep.input_bands) != len(image):
                raise TilingError(
                    f"{src_path} has {len(image)} image bands but the preprocessing expects "
                    f"{len(prep.input_bands)}: {list(prep.input_bands)}"
                )
            thermal = thermal_bands(prep.input_bands)  # read as read_raster reads them
            rows = tile_starts(height, t, t - ov)
            cols = tile_starts(width, t, t - ov)
            acc_w = max(width, t)
            said: set[str] = set()  # the kinds of input problems already said

            def check_values(raw: np.ndarray, window: Window) -> None:
                found = {k: v for k, v in prep.problems(raw).items() if k not in said}
                if not found:
                    return
                said.update(found)
                if "fill" in found:
                    logger.info("%s: undeclared nodata first seen at %s", src_path,
                                _where(window, f"{found['fill']:g} in every band"))  # fmt: skip
                try:
                    report_input_problems(found, strict, stacklevel=4)
                except BandCoverageError as err:
                    raise BandCoverageError(
                        f"{src_path} at {_where(window, str(err))}", param="bands"
                    ) from None

            def run(raw: np.ndarray) -> np.ndarray:
                x = prep(raw).to(dev)
                with torch.inference_mode():
                    y = predict_fn(x)
                if (
                    not isinstance(y, torch.Tensor)
                    or y.ndim != 4
                    or y.shape[0] != len(raw)
                    or (tuple(y.shape[-2:]) != (t, t))
                ):
                    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                    raise PredictorOutputError(
                        f"the predictor returned {shape} for a batch of shape {tuple(x.shape)}; "
                        f"it must return [B, K, {t}, {t}]"
                    )
                y = y.float()
                if task == "segmentation" and logits:
                    y = y.softmax(dim=1)
                elif task == "regression" and value_scale != 1.0:
                    y = y / value_scale
                return y.cpu().numpy()

            unreadable: list[str] = []
            k = num_outputs
            if k is None:  # the outputs of the first tile (of zeros when it cannot be read:
                # the tile loop names it)
                corner = Window(0, 0, min(t, width), min(t, height))
                try:
                    probe = read(corner)
                except RasterReadError:
                    if not skip_unreadable:
                        raise
                    probe = np.zeros((len(image), corner.height, corner.width), np.float32)
                k = int(run(_pad_to(probe, t, t)[None]).shape[1])
            if task == "segmentation":
                dtype = np.uint8 if k < 255 else np.uint16
                out_nodata: float = float(np.iinfo(dtype).max)
                band_names: tuple[str, ...] = ("class", "confidence")
                count, scales, resampling = 2, (1.0, 0.01), "nearest"
            else:
                dtype = np.float32
                out_nodata = float("nan") if output_nodata is None else float(output_nodata)
                band_names = (
                    tuple(output_names)
                    if output_names
                    else tuple(f"value_{i}" if k > 1 else "value" for i in range(k))
                )
                if len(band_names) != k:
                    raise TilingError(f"{len(band_names)} output names for {k} outputs")
                count, scales, resampling = k, None, "average"
            meta = {"msclip_scene": os.path.abspath(os.fspath(src)), "msclip_task": task,
                    "msclip_tile_size": str(t), "msclip_overlap": str(ov),
                    "msclip_blend": blend, "msclip_num_outputs": str(k)}  # fmt: skip
            if class_names is not None:
                if task != "segmentation" or len(class_names) != k:
                    raise TilingError(
                        f"{len(class_names)} class names for a {task} predictor of {k} outputs"
                    )
                meta["msclip_class_names"] = json.dumps([str(c) for c in class_names])
            if hasattr(preprocess, "output_tags"):  # an MSCLIP: the model that made the map
                meta.update(preprocess.output_tags())
            meta.update(tags or {})
            acc = np.zeros((k, t, acc_w), dtype=np.float32)
            wsum = np.zeros((t, acc_w), dtype=np.float32)
            valid = np.zeros((t, acc_w), dtype=bool)  # input validity of the current strip
            n_tiles = len(rows) * len(cols)
            tiles_run = 0
            bar = progress_bar(
                total=n_tiles, unit=" tiles", desc=Path(src_path).name, disable=not progress
            )
            writer = GeoTiffStripWriter(
                dst, width, height, count, np.dtype(dtype).name, ds.crs,
                map_transform(ds.crs, ds.transform),  # none for a scene without georeference
                out_nodata, band_names, block_size, compress, cog, resampling, meta, scales,
            )  # fmt: skip
            with writer:
                for i, r in enumerate(rows):
                    n_rows = min(t, height - r)
                    # One read per group of batch_size neighbouring tiles (not per strip): the
                    # raw window held is batch_size tiles wide, and neighbouring groups share
                    # their edge blocks through GDAL's cache.
                    for g0 in range(0, len(cols), batch_size):
                        group = cols[g0 : g0 + batch_size]
                        c0, c1 = group[0], group[-1] + t
                        raw, failed = read_group(Window(c0, r, min(c1, width) - c0, n_rows), group)
                        if not failed:  # each problem of the values said once, where first seen
                            check_values(raw, Window(c0, r, raw.shape[-1], n_rows))
                        raw = _pad_to(raw, t, c1 - c0)  # only a scene smaller than a tile
                        # valid where any read found data: neighbouring groups share columns,
                        # and neighbouring strips rows (the same pixels, unless a tile of one
                        # of them could not be read)
                        valid[:, c0:c1] |= prep.valid(raw)
                        chunk = [c for c in group if c not in failed and valid[:, c : c + t].any()]
                        bar.update(len(group) - len(chunk))
                        if failed:
                            bar.set_postfix(unreadable=len(unreadable), refresh=False)
                        if not chunk:
                            continue
                        out = run(np.stack([raw[:, :, c - c0 : c - c0 + t] for c in chunk]))
                        if out.shape[1] != k:
                            raise PredictorOutputError(
                                f"the predictor returned {out.shape[1]} outputs, expected {k}"
                            )
                        for j, c in enumerate(chunk):
                            acc[:, :, c : c + t] += out[j] * weight2
                            wsum[:, c : c + t] += weight2
                        tiles_run += len(chunk)
                        bar.update(len(chunk))
                        del raw, out
                        trim_heap()  # the strips' numpy and GDAL temporaries
                    final = (rows[i + 1] if i + 1 < len(rows) else height) - r
                    writer.write(
                        _finish(acc[:, :final, :width], wsum[:final, :width],
                                valid[:final, :width], task, dtype, out_nodata)
                    )  # fmt: skip
                    keep = t - final
                    if keep > 0:
                        acc[:, :keep] = acc[:, final:]
                        wsum[:keep] = wsum[final:]
                        valid[:keep] = valid[final:]
                    acc[:, keep:] = 0.0
                    wsum[keep:] = 0.0
                    valid[keep:] = False
                if unreadable:
                    writer.update_tags(msclip_unreadable_tiles=str(len(unreadable)))
            bar.close()
    seconds = time.perf_counter() - start_time
    result = ScenePrediction(
        Path(dst), height, width, task, k, n_tiles, tiles_run, seconds,
        n_tiles / seconds if seconds > 0 else float("inf"),
        height * width / 1e6 / seconds if seconds > 0 else float("inf"),
        band_names, out_nodata, tuple(unreadable),
    )  # fmt: skip
    logger.info(
        "%s: %d tiles (%d run) in %.1f s, %.2f Mpx/s -> %s",
        src_path, n_tiles, tiles_run, seconds, result.megapixels_per_s, dst,
    )  # fmt: skip
    return result


def predict_scene_with_head(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    head: Any,
    model: Any,
    *,
    task: str | None = None,
    adapters: str | os.PathLike | None = None,
    **kwargs: Any,
) -> ScenePrediction:
    """Predict a scene with a trained dense head (:mod:`msclip.heads.dense_head`).

    The head is bound to ``model`` first (:func:`msclip.heads.checkpoint.bind_head`: refused on
    another encoder; LoRA adapters merged when the head needs them), then the decoder of one
    task runs on the streamed tiles of :func:`predict_scene`: a segmentation head writes the
    class band and the confidence band, a pixel-regression head its value band(s), with the
    source CRS, transform and nodata.

    Args:
        src: the scene.
        dst: the output GeoTIFF.
        head: a :class:`~msclip.heads.dense_head.DenseHeadCheckpoint` or its file.
        model: the :class:`msclip.MSCLIP` the head was trained on.
        task: the head's task to predict (default: its first).
        adapters: LoRA adapter file (default: the one recorded next to the head).
        **kwargs: options of :func:`predict_scene` (``tile_size`` defaults to the size of the
            crops the head was trained on, :meth:`DenseHeadCheckpoint.crop_size
            <msclip.heads.dense_head.DenseHeadCheckpoint.crop_size>`: the windows its test
            images were scored in).

    Raises:
        CheckpointMismatchError: the head was trained on another encoder.
        CheckpointError: not a dense head file, or no such task.
    """
    from msclip.heads.checkpoint import bind_head
    from msclip.heads.dense_head import read_dense_head

    ckpt = head if not isinstance(head, (str, os.PathLike)) else read_dense_head(head)
    entry = ckpt.task(task)
    bind_head(ckpt, model, adapters)  # type: ignore[arg-type]
    warn_other_pixel_size(ckpt.info.get("pixel_size_m"), src)
    dense = ckpt.dense_model(model)
    name = entry["name"]
    kind = "segmentation" if entry["kind"] == "segmentation" else "regression"
    if kwargs.get("tile_size") is None:  # the head's training crops: what its scores measured
        kwargs["tile_size"] = ckpt.crop_size(model)
    kwargs.setdefault("device", model.device)
    tags = {"msclip": f"dense {entry['kind']} head {ckpt.method}"}
    if ckpt.path is not None:  # absolute, as the scene's tag: the map outlives the folder it
        tags["msclip_head"] = os.path.abspath(ckpt.path)  # was made in
    tags.update(kwargs.pop("tags", None) or {})
    if kind == "segmentation":
        kwargs.setdefault("class_names", list(entry["names"]))
    else:
        kwargs.setdefault("output_names", list(entry["names"]))

    def predict(x: torch.Tensor) -> torch.Tensor:
        return dense.predict(x, name)

    return predict_scene(src, dst, predict, model, task=kind, num_outputs=int(
        entry["num_outputs"]), tags=tags, **kwargs)  # fmt: skip


#: Metres of one degree of latitude (and of longitude at the equator), for the ground size of
#: pixels in a geographic CRS; the ellipsoid's variation (under 1 %) does not matter here.
_METRES_PER_DEGREE = 111_320.0
#: A scene whose pixels are this many times larger or smaller than the training images' is
#: named in a warning (10 m against 20 or 30 m, or 1 m; not 10 m against 10.5 m).
PIXEL_SIZE_TOLERANCE = 1.5


def ground_pixel_size(ds: Any) -> float | None:
    """The ground size in metres of an open raster's pixels (the mean of their two sides): the
    transform's pixel size in a projected CRS's linear unit, or in degrees of a geographic CRS
    at the raster's central latitude; ``None`` without a georeference."""
    from rasterio.errors import CRSError

    t = ds.transform
    if ds.crs is None or map_transform(ds.crs, t) is None:
        return None
    sx, sy = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    if ds.crs.is_geographic:
        lat = (t * (ds.width / 2, ds.height / 2))[1]
        if not -90 <= lat <= 90:
            return None
        sx, sy = sx * _METRES_PER_DEGREE * math.cos(math.radians(lat)), sy * _METRES_PER_DEGREE
    else:
        try:
            factor = float(ds.crs.linear_units_factor[1])
        except (CRSError, TypeError, ValueError, IndexError):
            return None
        sx, sy = sx * factor, sy * factor
    size = (sx + sy) / 2
    return size if math.isfinite(size) and size > 0 else None


def pixel_size_range(paths: Sequence[str | os.PathLike], most: int = 64) -> list[float] | None:
    """``[smallest, largest]`` ground pixel size in metres (:func:`ground_pixel_size`) of the
    images ``paths`` (the headers of at most ``most`` of them, spread over the list; files that
    cannot be opened or have no georeference are passed over), or ``None`` when none has one:
    what a dense head keeps of its training images' resolution."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if not len(paths):
        return None
    picked = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, most).round())]
    sizes = []
    for path in picked:
        with contextlib.suppress(RasterioIOError, OSError), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an image without georeference: passed over
            with rasterio.open(path) as ds:
                size = ground_pixel_size(ds)
            if size is not None:
                sizes.append(size)
    return [min(sizes), max(sizes)] if sizes else None


def warn_other_pixel_size(trained: Sequence[float] | None, src: str | os.PathLike) -> None:
    """A warning when the pixels of the scene ``src`` are far larger or smaller on the ground
    than those of a head's training images (``trained``: their ``[smallest, largest]`` size in
    metres): a head learns objects at the size in pixels it saw them, so the map of a 30 m or
    1 m scene by a head of 10 m images says little. Nothing is said when either size is
    unknown."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from msclip.errors import shown_when_quiet

    if not trained:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(src) as ds:
                size = ground_pixel_size(ds)
    except (RasterioIOError, OSError):
        return  # the prediction names an unreadable scene
    lo, hi = float(min(trained)), float(max(trained))
    if size is None or lo / PIXEL_SIZE_TOLERANCE <= size <= hi * PIXEL_SIZE_TOLERANCE:
        return
    train = f"{lo:.3g} m" if math.isclose(lo, hi, rel_tol=0.01) else f"{lo:.3g}-{hi:.3g} m"
    shown_when_quiet.warning(
        "the pixels of %s are %.3g m on the ground, but the head was trained on images of "
        "%s pixels: it learnt objects at the size in pixels it saw them, so its map of this "
        "scene may be wrong; resample the scene to the training resolution (e.g. gdalwarp "
        "-tr), or train a head on images of this resolution",
        os.fspath(src), size, train,
    )  # fmt: skip


def _clear_gdal_error(ds: Any) -> None:
    """Let go of the error a failed read leaves set: rasterio raises GDAL's last error again
    from the dataset's next checked call (the colour interpretation that every read asks for),
    which would fail the next tile, readable or not."""
    # rasterio's private CPLE_* classes: the error already reported
    with contextlib.suppress(Exception):
        ds.colorinterp  # noqa: B018 (the call that raises it, once)


def _where(window: Any, reason: str) -> str:
    """``rows a-b, columns c-d: reason`` of a window that could not be read."""
    r, c = int(window.row_off), int(window.col_off)
    return f"rows {r}-{r + int(window.height)}, columns {c}-{c + int(window.width)}: {reason}"


def _finish(
    acc: np.ndarray,
    wsum: np.ndarray,
    valid: np.ndarray,
    task: str,
    dtype: Any,
    nodata: float,
) -> np.ndarray:
    """Output rows from the final accumulator rows."""
    ok = valid & (wsum > 0)
    denom = np.where(wsum > 0, wsum, 1.0)
    if task == "segmentation":
        best = acc.argmax(axis=0)
        conf = np.take_along_axis(acc, best[None], axis=0)[0] / denom
        cls = best.astype(dtype)
        pct = np.clip(np.rint(conf * 100.0), 0, 100).astype(dtype)
        cls[~ok] = nodata
        pct[~ok] = nodata
        return np.stack([cls, pct])
    values = (acc / denom).astype(np.float32)
    values[:, ~ok] = nodata
    return values
