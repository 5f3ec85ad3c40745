"""Preprocessing of named-band rasters for a spectral CLIP model.

The order of operations is the one published with Llama3-MS-CLIP (Marimo et al., ECML PKDD 2025,
arXiv:2503.15969), and the same torchvision functions are called, so the result is identical to
the bit in float32:

1. select and order the bands by name (see :mod:`msclip.spectral.adapt` for bands the model does
   not know), cast to float32 (raw digital numbers; 8-bit RGB is divided by 255 as torchvision's
   ``ToTensor`` does);
2. fill missing values with the band mean (zero after normalisation), counting them in a warning:
   NaN and infinite values, and every band of a pixel whose every band is nodata (or not finite);
   one band reading the nodata value in a pixel whose other bands hold data (dark water at 0 in
   the SWIR bands of an L2A product whose nodata is 0) is data and is kept (:func:`fill_mask`);
3. resize the shorter side to the model size with bicubic interpolation (antialiased, on the float
   tensor), then centre-crop a square;
4. normalise per band: ``(x - mean) / std``.

For RGB CLIP baselines fed 8-bit pictures, ``pil_rgb=True`` follows OpenCLIP's own order instead
(PIL bicubic resize, centre crop, ``ToTensor``, normalise), matching ``open_clip`` transforms.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from msclip.errors import (
    BandCoverageError,
    BandCoverageWarning,
    BandError,
    ImageTypeError,
    InvalidArgumentError,
    NodataFillWarning,
    RasterSizeError,
    SmallRasterWarning,
    UndeclaredNodataWarning,
)
from msclip.spectral.adapt import map_bands
from msclip.spectral.bands import Band, default_bands_for_count, resolve_bands
from msclip.spectral.layout import to_chw
from msclip.spectral.nodata import missing_pixels

__all__ = ["SpectralPreprocess", "fill_mask", "input_problems", "report_input_problems"]

logger = logging.getLogger(__name__)

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def _tv() -> tuple[Any, Any]:
    """torchvision's functional transforms and interpolation modes, imported when first needed:
    importing torchvision costs seconds (it imports ``torch._dynamo``), and inputs already at the
    model's size never need it."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    return TF, InterpolationMode


def fill_mask(values: np.ndarray, nodata: float | None) -> torch.Tensor | None:
    """The values preprocessing fills, ``[..., C, H, W]`` bool, or ``None`` when there are none.

    A value is filled when it is NaN or infinite, or when its pixel is nodata: every band of it
    equals ``nodata`` or is not finite (:func:`msclip.spectral.nodata.missing_pixels`). A
    single band equal to ``nodata`` in a pixel whose other bands hold data is a measurement (a
    dark surface at 0 in a product whose nodata is 0) and is kept.
    """
    floating = np.issubdtype(values.dtype, np.floating)
    has_nodata = nodata is not None and not np.isnan(nodata)
    if not floating and not has_nodata:
        return None  # integer rasters cannot hold NaN: no scan (a visible cost per tile)
    nan = ~np.isfinite(values) if floating else None  # NaN and infinity
    if has_nodata:
        pixel = missing_pixels(values, nodata)[..., None, :, :]
        bad = pixel if nan is None else nan | pixel
    else:
        bad = nan
    if not bad.any():
        return None
    if bad.shape != values.shape:
        bad = np.broadcast_to(bad, values.shape).copy()
    return torch.from_numpy(bad)


def _float_extent(values: np.ndarray | None, nodata: float | None) -> tuple[float, float] | None:
    """``(lowest, highest)`` valid value (finite, not ``nodata``) of float data; ``None`` for other
    data or when no value is valid."""
    if values is None or not np.issubdtype(values.dtype, np.floating):
        return None
    ok = np.isfinite(values)  # reduced in place: no copy of the tile's values
    if nodata is not None and not np.isnan(nodata):
        ok &= values != nodata
    if not ok.any():
        return None
    return float(values.min(where=ok, initial=np.inf)), float(values.max(where=ok, initial=-np.inf))


def _unit_reflectance_max(values: np.ndarray | None, nodata: float | None) -> float | None:
    """The largest valid value of float data whose values all lie within [-0.5, 2] (reflectance
    scaled to 0-1), else ``None`` (also for data that is all zero or missing)."""
    extent = _float_extent(values, nodata)
    if extent is None:
        return None
    low, top = extent
    return top if 0.0 < top <= 2.0 and low >= -0.5 else None


#: Share of an image's pixels from which one fill-like value in every band, in data that declares
#: no nodata value, is said (:func:`_undeclared_fill`).
UNDECLARED_FILL_SHARE = 0.01


def _undeclared_fill(values: np.ndarray | None, nodata: float | None) -> float | None:
    """The value that at least :data:`UNDECLARED_FILL_SHARE` of the pixels hold in every band, of
    integer or float data of several bands that declares no nodata value, where that value is 0,
    negative (-9999, -32768 ...) or the integer type's largest: no surface reflects so in every
    band at once, fill does (a scene's edge, an export without its nodata tag). ``None`` when
    there is none (8-bit pictures are not judged: a black pixel is a picture's value)."""
    if (
        values is None
        or nodata is not None
        or values.ndim != 3
        or values.shape[0] < 2
        or values.dtype.kind not in "iuf"
        or values.dtype == np.uint8
    ):
        return None
    first = values[0]
    same = np.ones(first.shape, dtype=bool)
    for band in values[1:]:  # band by band: no [C, H, W] comparison array
        same &= band == first
    if values.dtype.kind == "u":
        fill = same & ((first == 0) | (first == np.iinfo(values.dtype).max))
    else:
        fill = same & (first <= 0)  # NaN compares false: NaN is filled anyway
    if int(fill.sum()) < UNDECLARED_FILL_SHARE * first.size:
        return None
    found, counts = np.unique(first[fill], return_counts=True)
    return float(found[counts.argmax()])


def _float_picture_problem(values: np.ndarray | None, nodata: float | None) -> str | None:
    """What is wrong with float values given to a model of 8-bit pictures (it divides them by
    255): values beyond 255 (reflectance x 10000, such as a file that declares its scale gives)
    or within 0-1 (a picture scaled to 0-1); ``None`` for values that look like 0-255."""
    extent = _float_extent(values, nodata)
    if extent is None:
        return None
    top = extent[1]
    if top > 256.0:
        return (
            f"float values up to {top:.6g} for a model of 8-bit pictures (it reads 0-255): "
            "reflectance or other physical values are not a picture; give the picture's "
            "values, or use a multispectral model for reflectance"
        )
    if 0.0 < top <= 1.0:
        return (
            f"float values within 0-{top:.3g} for a model of 8-bit pictures (it divides them by "
            "255): multiply them by 255"
        )
    return None


def _interpolation(name: str) -> Any:
    modes = _tv()[1]
    return {"bicubic": modes.BICUBIC, "bilinear": modes.BILINEAR, "nearest": modes.NEAREST}[name]


def _normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, the same operations as torchvision's ``normalize``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    if (s == 0).any():
        raise InvalidArgumentError(
            f"std evaluated to zero after conversion to {x.dtype}, leading to division by zero."
        )
    return x.sub(m).div(s)


def input_problems(
    bands: Sequence[str],
    mean: Mapping[str, float],
    divisor: float,
    dtype: np.dtype,
    missing: Sequence[str],
    names: Sequence[str],
    values: np.ndarray | None = None,
    nodata: float | None = None,
) -> dict[str, Any]:
    """What is wrong with an input for a model, by kind (the checks of
    :class:`SpectralPreprocess`, shared with :class:`msclip.heads.scene_predict.ScenePreprocess`).

    Args:
        bands: the model's bands.
        mean: the model's band means (after division by ``divisor``).
        divisor: the model's divisor (1 for reflectance models, 255 for 8-bit pictures).
        dtype: the input's data type.
        missing: the model's bands the input lacks.
        names: the input's band names.
        values: the input's values ``[C, h, w]`` (``None``: the checks of values are skipped).
        nodata: the input's nodata value.

    Returns:
        ``{kind: message}`` for each problem found (``bands``: most of the model's bands
        missing, ``8-bit``: a display-scaled picture for a reflectance model, ``unit``:
        reflectance from 0 to 1, ``picture``: float values that are no 8-bit picture) and
        ``{"fill": value}`` for one value read as data in every band of many pixels of an
        input that declares no nodata value (:func:`report_input_problems` says them).
    """
    found: dict[str, Any] = {}
    means = [mean[b] for b in bands]
    if len(missing) * 2 > len(bands):
        found["bands"] = (
            f"the input bands {list(names)} lack {len(missing)} of the model's "
            f"{len(bands)} bands ({list(missing)}, filled with their mean); the model "
            f"expects {list(bands)}"
        )
    if np.dtype(dtype) == np.uint8 and divisor == 1.0:
        found["8-bit"] = (
            "8-bit input to a model of raw reflectance values (its band means are "
            f"{min(means):.0f}-{max(means):.0f}): display-scaled pictures are "
            "not reflectance; give the sensor's reflectance values (e.g. Sentinel-2 L2A "
            "digital numbers)"
        )
    top = _unit_reflectance_max(values, nodata) if divisor == 1.0 else None
    if top is not None and min(means) > 50:
        found["unit"] = (
            "the values look like reflectance from 0 to 1 (all within -0.5 to 2) but the "
            "model reads reflectance x 10000 (its band means are "
            f"{min(means):.0f}-{max(means):.0f}, Sentinel-2 L2A digital numbers): "
            "multiply the values by 10000"
        )
    fill = _undeclared_fill(values, nodata) if divisor == 1.0 else None
    if fill is not None:
        found["fill"] = fill
    picture = _float_picture_problem(values, nodata) if divisor == 255.0 else None
    if picture is not None:
        found["picture"] = picture
    return found


def report_input_problems(
    found: Mapping[str, Any], strict_bands: bool = False, stacklevel: int = 3
) -> None:
    """Say the problems :func:`input_problems` found: the value read as data in every band as an
    :class:`~msclip.errors.UndeclaredNodataWarning`, the others in one
    :class:`~msclip.errors.BandCoverageWarning` (a :class:`~msclip.errors.BandCoverageError`
    with ``strict_bands``).
    """
    fill = found.get("fill")
    if fill is not None:
        warnings.warn(
            f"pixels holding {fill:g} in every band were read as data: no nodata value is "
            "declared, and no surface reflects so in every band; if they are missing pixels, "
            "give the value the file stores there as nodata (nodata="
            f"{fill:g} for a file that declares no scale and offset) or set it as the file's "
            "nodata value",
            UndeclaredNodataWarning,
            stacklevel=stacklevel,
        )
    problems = [found[k] for k in ("bands", "8-bit", "unit", "picture") if k in found]
    if not problems:
        return
    message = "; ".join(problems) + ": the model's output says little about such input"
    if strict_bands:
        raise BandCoverageError(message, param="bands")
    warnings.warn(message, BandCoverageWarning, stacklevel=stacklevel)


class SpectralPreprocess:
    """Turn a band array (or a PIL image) into the model's input tensor.

    The output is ``[len(bands), image_size, image_size]`` float32 in the model's band order,
    whatever the input's band order or sensor. Picklable (DataLoader workers).

    Args:
        bands: the model's bands, in channel order.
        mean: band name -> mean (after division by ``divisor``); must cover the model's bands and
            may cover others (used for inputs of those bands).
        std: band name -> standard deviation.
        image_size: output side in pixels.
        divisor: raw values are divided by it first (255 for 8-bit RGB models, else 1).
        resize_mode: ``shortest`` (resize the shorter side, centre-crop) or ``squash``.
        interpolation: ``bicubic`` (published), ``bilinear`` or ``nearest``.
        input_bands: band names of inputs that do not name their bands (arrays, unnamed files).
        layout: ``CHW``/``HWC`` for arrays whose layout cannot be known from the shape.
        sensor: sensor whose local band names apply when reading files.
        pil_rgb: follow OpenCLIP's PIL pipeline for 8-bit 3-band inputs (RGB baselines).
        patch_size: the model's patch size: smaller inputs are refused.
        strict_bands: raise :class:`~msclip.errors.BandCoverageError` where the input lacks most
            of the model's bands or is display-scaled 8-bit for a reflectance model, instead of
            warning (:class:`~msclip.errors.BandCoverageWarning`).

    Checks of each input (warnings carry no file name, so a run can count and report them once;
    see :mod:`msclip.encode`):

    - more than half of the model's bands absent (mean-filled): :class:`BandCoverageWarning`;
    - 8-bit data for a model whose statistics are of raw reflectance digital numbers (divisor 1):
      display-scaled pictures are not reflectance, :class:`BandCoverageWarning`;
    - a side under ``patch_size``: :class:`~msclip.errors.RasterSizeError`; the shorter side under
      a quarter of ``image_size``: upsampled, :class:`~msclip.errors.SmallRasterWarning`;
    - nodata/NaN pixels filled with the band mean: :class:`~msclip.errors.NodataFillWarning`.
    """

    def __init__(
        self,
        bands: Sequence[str | Band],
        mean: Mapping[str, float],
        std: Mapping[str, float],
        image_size: int = 224,
        divisor: float = 1.0,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        input_bands: Sequence[str | Band] | None = None,
        layout: str | None = None,
        sensor: str | None = None,
        pil_rgb: bool = False,
        patch_size: int = 1,
        strict_bands: bool = False,
    ) -> None:
        self.bands = tuple(b.name for b in resolve_bands(bands))
        missing = [b for b in self.bands if b not in mean or b not in std]
        if missing:
            raise BandError(f"no mean/std given for model bands {missing}")
        if resize_mode not in ("shortest", "squash"):
            raise InvalidArgumentError(
                f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}",
                param="resize_mode",
            )
        if interpolation not in _INTERPOLATIONS:
            raise InvalidArgumentError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}"
            )
        self.mean = {k: float(v) for k, v in mean.items()}
        self.std = {k: float(v) for k, v in std.items()}
        self.image_size = int(image_size)
        self.divisor = float(divisor)
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        # the sensor's local names apply to input_bands (Landsat "B5" is NIR, not S2 red edge)
        self.input_bands = (
            None
            if input_bands is None
            else tuple(b.name for b in resolve_bands(input_bands, sensor))
        )
        self.layout = layout
        self.sensor = sensor
        self.pil_rgb = pil_rgb
        self.patch_size = int(patch_size)
        self.strict_bands = bool(strict_bands)

    def __repr__(self) -> str:
        return (
            f"SpectralPreprocess(bands={list(self.bands)}, image_size={self.image_size}, "
            f"divisor={self.divisor}, resize_mode={self.resize_mode!r}, "
            f"interpolation={self.interpolation!r})"
        )

    # -- input handling ---------------------------------------------------------------------
    def load(self, x: Any) -> tuple[np.ndarray, tuple[str, ...], float | None, str]:
        """Data ``[C, H, W]``, band names, nodata and a display name of an in-memory input.

        Accepts a PIL image, a numpy array or a tensor (``[C, H, W]`` or ``[H, W, C]``; bands named
        by ``input_bands``, or the model's bands when the count matches, or the count's default
        set). Files are read by :class:`msclip.transforms.ImageTransform`, which the model's
        ``preprocess()`` returns; this class reads nothing from disk.
        """
        if hasattr(x, "mode") and hasattr(x, "convert"):  # PIL image
            if x.mode in ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
                x = np.moveaxis(np.asarray(x.convert("RGB")), -1, 0)  # as open_clip does
                return x, ("red", "green", "blue"), None, "image"
            # 16-bit and float single-band pictures ("I;16", "I", "F"): their values, one band
            x = np.asarray(x)
        if isinstance(x, torch.Tensor):
            if x.is_meta:  # torch: "Cannot copy out of meta tensor", which names no cause
                raise ImageTypeError(
                    f"cannot preprocess a tensor on the meta device (shape {tuple(x.shape)}): it "
                    "holds no values; give the image's values (a tensor on the CPU or a GPU)"
                )
            x = x.detach().cpu()
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.float()  # numpy has no bfloat16
            x = x.numpy()
        if not isinstance(x, np.ndarray):
            raise ImageTypeError(
                f"cannot preprocess a {type(x).__name__}; pass a PIL image or a numpy array / "
                "tensor (files and msclip.io.Raster objects go through the model's preprocess(), "
                "an msclip.transforms.ImageTransform)"
            )
        if x.dtype.kind not in "uif":
            raise ImageTypeError(
                f"cannot preprocess an array of dtype {x.dtype}: images are integer or float "
                "values (a boolean mask, complex or object array is not an image)"
            )
        n = len(self.input_bands) if self.input_bands else None
        data, _ = to_chw(x, self.layout, n)
        if self.input_bands is not None:
            names = self.input_bands
        elif data.shape[0] == len(self.bands):
            names = self.bands
        else:
            try:
                names = default_bands_for_count(data.shape[0])
            except BandError:
                from msclip.spectral.bands import COUNT_DEFAULTS

                n = data.shape[0]
                counts = sorted({*COUNT_DEFAULTS, len(self.bands)})
                raise BandError(
                    f"cannot tell which bands an array of shape {tuple(x.shape)} holds, read as "
                    f"{n} band{'s' if n != 1 else ''} ({self.layout or 'layout from the shape'}):"
                    f" only {', '.join(map(str, counts))} bands have a default (the model's "
                    f"{len(self.bands)}, or a sensor's); name them in the preprocessing, "
                    "model.preprocess(input_bands=['B08', ...]), and give layout='CHW' or 'HWC' "
                    "where the band axis is the other one",
                    param="input_bands",
                ) from None
            if data.shape[0] == 4:
                from msclip.errors import GenericBandNamesWarning

                warnings.warn(
                    "4 unnamed bands are taken as red, green, blue, NIR (NAIP order); a "
                    "blue-green-red-NIR stack (Sentinel-2 B02, B03, B04, B08; PlanetScope) needs "
                    "input_bands=['B02', 'B03', 'B04', 'B08'] or its sensor's names",
                    GenericBandNamesWarning,
                    stacklevel=3,
                )
        if len(names) != data.shape[0]:
            raise BandError(f"array has {data.shape[0]} bands but {len(names)} names: {names}")
        return data, tuple(names), None, "array"

    # -- the pipeline -----------------------------------------------------------------------
    def __call__(self, x: Any) -> torch.Tensor:
        data, names, nodata, where = self.load(x)
        return self.process(data, names, nodata, where)

    def process(
        self,
        data: np.ndarray,
        names: Sequence[str],
        nodata: float | None = None,
        where: str = "array",
    ) -> torch.Tensor:
        """Preprocess bands-first ``data`` whose channels are ``names``."""
        self._check_size(data.shape[1], data.shape[2])
        mapping = map_bands(self.bands, names)
        self._check_coverage(data.dtype, mapping.missing, tuple(names), data, nodata)
        perm = mapping.permutation
        if perm is not None:
            idx = perm
            mean = [self.mean[b] for b in self.bands]
            std = [self.std[b] for b in self.bands]
        else:
            idx = mapping.used_inputs
            model_mean = [self.mean[b] for b in self.bands]
            model_std = [self.std[b] for b in self.bands]
            derived_mean, derived_std = mapping.input_stats(model_mean, model_std)
            mean = [self.mean.get(names[j], derived_mean[j]) for j in idx]
            std = [self.std.get(names[j], derived_std[j]) for j in idx]
        sel = data[idx]

        if (
            self.pil_rgb
            and sel.dtype == np.uint8
            and len(idx) == 3
            and nodata is None
            and perm is not None
        ):
            out = self._pil_pipeline(sel, mean, std)
        else:
            out = self._tensor_pipeline(sel, nodata, mean, std, where, [names[j] for j in idx])
        if perm is None:
            m = torch.as_tensor(mapping.matrix[:, idx], dtype=out.dtype)
            out = torch.einsum("ij,jhw->ihw", m, out)
        return out

    def _check_size(self, height: int, width: int) -> None:
        if min(height, width) < self.patch_size:
            raise RasterSizeError(
                f"a raster of {width}x{height} pixels is smaller than one {self.patch_size}-pixel "
                f"patch of the model; give images of at least {self.patch_size}x"
                f"{self.patch_size} pixels (the model input is {self.image_size} pixels)"
            )
        if min(height, width) * 4 < self.image_size:
            warnings.warn(
                f"rasters of {width}x{height} pixels are upsampled "
                f"{self.image_size / min(height, width):.1f}x to the model's {self.image_size}-"
                "pixel input: the model sees interpolated pixels",
                SmallRasterWarning,
                stacklevel=3,
            )

    def _check_coverage(
        self,
        dtype: np.dtype,
        missing: Sequence[str],
        names: tuple[str, ...],
        values: np.ndarray | None = None,
        nodata: float | None = None,
    ) -> None:
        found = input_problems(
            self.bands, self.mean, self.divisor, dtype, missing, names, values, nodata
        )
        report_input_problems(found, self.strict_bands, stacklevel=4)

    def _tensor_pipeline(
        self,
        sel: np.ndarray,
        nodata: float | None,
        mean: list[float],
        std: list[float],
        where: str,
        names: list[str],
    ) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(sel).astype(np.float32, copy=False))
        if self.divisor == 255.0 and sel.dtype == np.uint16:
            x = x.div(65535.0)  # a 16-bit picture for a model of 0-1 scaled 8-bit pictures
        elif self.divisor != 1.0:
            x = x.div(self.divisor)
        bad = fill_mask(sel, nodata)
        n_bad = 0 if bad is None else int(bad.sum())
        if n_bad:
            fill = torch.tensor(mean, dtype=x.dtype)[:, None, None].expand_as(x)
            x = torch.where(bad, fill, x)
            per_band = {n: int(c) for n, c in zip(names, bad.sum(dim=(1, 2)).tolist()) if c}
            logger.debug("%s: %d nodata/NaN values filled (per band: %s)", where, n_bad, per_band)
            warnings.warn(
                "nodata/NaN pixel values are filled with the band mean",
                NodataFillWarning,
                stacklevel=3,
            )
        s = self.image_size
        if tuple(x.shape[-2:]) != (s, s):  # at the model's size, resizing and cropping are no-ops
            TF = _tv()[0]
            interp = _interpolation(self.interpolation)
            if self.resize_mode == "shortest":
                x = TF.resize(x, [s], interpolation=interp, antialias=True)
                x = TF.center_crop(x, [s, s])
            else:
                x = TF.resize(x, [s, s], interpolation=interp, antialias=True)
        return _normalize(x, mean, std)

    def _pil_pipeline(self, sel: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(np.moveaxis(sel, 0, -1)))
        TF = _tv()[0]
        interp = _interpolation(self.interpolation)
        s = self.image_size
        size = [s] if self.resize_mode == "shortest" else [s, s]
        img = TF.center_crop(TF.resize(img, size, interpolation=interp), [s, s])
        return TF.normalize(TF.to_tensor(img), mean=mean, std=std)
