"""Wavelength-aware multispectral patch embedding.

A drop-in replacement for the ``conv1`` patch projection of an OpenCLIP vision transformer
(kernel = stride = patch size, no bias), whose input channels are named bands. Two ways to make
one:

* from an RGB CLIP patch embedding by the zero-init rule of Llama3-MS-CLIP (Marimo et al., ECML
  PKDD 2025, arXiv:2503.15969): the blue, green and red kernels go to the bands matched to those
  colours by wavelength, every other band starts at zero, so the extended model reproduces the
  RGB model exactly on the matched bands whatever the other bands hold;
* from a checkpoint (the kernel is stored under the same ``visual.conv1.weight`` key as OpenCLIP).

Reading another band set uses the rule of :mod:`msclip.spectral.adapt` (known bands keep their
kernel, bands in between are interpolated in wavelength, bands outside the range are ignored,
absent model bands contribute nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msclip.errors import BandError
from msclip.spectral.adapt import equivalent_band, map_bands
from msclip.spectral.bands import Band, resolve_band, resolve_bands

__all__ = ["SpectralPatchEmbed", "rgb_zero_init_weight"]


def rgb_zero_init_weight(
    rgb_weight: torch.Tensor,
    bands: Sequence[str | Band],
    rgb_bands: Sequence[str | Band] = ("red", "green", "blue"),
) -> torch.Tensor:
    """Extend an RGB patch kernel ``[D, 3, P, P]`` to ``bands`` by the zero-init rule.

    Args:
        rgb_weight: kernel of the RGB model, channels in ``rgb_bands`` order.
        bands: the target band set.
        rgb_bands: band names of the RGB kernel's channels (OpenCLIP models take R, G, B).

    Returns:
        ``[D, len(bands), P, P]`` kernel: zero except the channels matched to the RGB colours.

    Raises:
        BandError: a colour has no matching target band, or two colours match the same band.
    """
    targets = resolve_bands(bands)
    colours = resolve_bands(rgb_bands)
    if rgb_weight.shape[1] != len(colours):
        raise BandError(
            f"RGB kernel has {rgb_weight.shape[1]} input channels but {len(colours)} band names "
            f"were given ({[c.name for c in colours]})"
        )
    out = rgb_weight.new_zeros((rgb_weight.shape[0], len(targets), *rgb_weight.shape[2:]))
    used: dict[str, str] = {}
    for k, colour in enumerate(colours):
        match = equivalent_band(colour, targets)
        if match is None:  # fall back to the nearest centre wavelength
            match = min(targets, key=lambda b, c=colour: abs(b.center - c.center))
        if match.name in used:
            raise BandError(
                f"colours {used[match.name]!r} and {colour.name!r} both match band {match.name!r}; "
                f"the band set {[b.name for b in targets]} cannot take an RGB initialisation"
            )
        used[match.name] = colour.name
        out[:, targets.index(match)] = rgb_weight[:, k]
    return out


class SpectralPatchEmbed(nn.Module):
    """Patch projection over a named band set.

    Args:
        bands: model band names, in channel order.
        width: embedding width (output channels).
        patch_size: kernel size and stride.
        weight: optional initial kernel ``[width, len(bands), patch, patch]``; zeros otherwise.
    """

    def __init__(
        self,
        bands: Sequence[str | Band],
        width: int,
        patch_size: int | tuple[int, int],
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.bands: tuple[str, ...] = tuple(b.name for b in resolve_bands(bands))
        ps = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.patch_size = ps
        # Mirror nn.Conv2d's attributes that OpenCLIP code reads.
        self.kernel_size = ps
        self.stride = ps
        self.in_channels = len(self.bands)
        self.out_channels = width
        shape = (width, len(self.bands), *ps)
        if weight is None:
            weight = torch.zeros(shape)
        elif tuple(weight.shape) != shape:
            raise BandError(f"patch kernel has shape {tuple(weight.shape)}, expected {shape}")
        self.weight = nn.Parameter(weight.detach().clone())
        #: float32 CPU inference as one matrix product (:func:`msclip.architecture.use_fused_fp32`)
        self.fused_fp32 = False

    @classmethod
    def from_conv(cls, conv: nn.Module, bands: Sequence[str | Band]) -> SpectralPatchEmbed:
        """Wrap an existing ``conv1`` whose channels already are ``bands`` (weights copied)."""
        if getattr(conv, "bias", None) is not None:
            raise BandError("patch projections with a bias are not supported")
        return cls(bands, conv.weight.shape[0], tuple(conv.weight.shape[2:]), conv.weight)

    @classmethod
    def from_rgb(
        cls,
        rgb_weight: torch.Tensor,
        bands: Sequence[str | Band],
        rgb_bands: Sequence[str | Band] = ("red", "green", "blue"),
    ) -> SpectralPatchEmbed:
        """Zero-init extension of an RGB kernel (see :func:`rgb_zero_init_weight`)."""
        w = rgb_zero_init_weight(rgb_weight, bands, rgb_bands)
        return cls(bands, w.shape[0], tuple(w.shape[2:]), w)

    def adapted_weight(self, input_bands: Sequence[str | Band]) -> torch.Tensor:
        """Kernel ``[width, len(input_bands), P, P]`` for inputs with the given bands."""
        mapping = map_bands(self.bands, input_bands)
        m = torch.as_tensor(mapping.matrix, dtype=self.weight.dtype, device=self.weight.device)
        return torch.einsum("dihw,ij->djhw", self.weight, m)

    def forward(self, x: torch.Tensor, bands: Sequence[str | Band] | None = None) -> torch.Tensor:
        """Project patches of ``x`` ``[B, C, H, W]``; ``bands`` names its channels if not ours."""
        if bands is None or tuple(resolve_band(b).name for b in bands) == self.bands:
            weight = self.weight
        else:
            weight = self.adapted_weight(bands)
        if x.shape[1] != weight.shape[1]:
            raise BandError(
                f"input has {x.shape[1]} channels but {weight.shape[1]} bands were declared"
            )
        weight = weight.to(x.dtype)
        if x.device.type == "cpu" and (
            x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
        ):
            # half precision on a CPU: never oneDNN's convolution, whose bf16 kernels gave wrong
            # results on an Intel Xeon with AMX where its bf16 matrix products agreed
            # (:func:`_patches_as_gemm`); autocast would run the convolution in bf16 too
            return _patches_as_gemm(x, weight)
        if self.fused_fp32 and x.dtype == torch.float32:
            from msclip.architecture import fused_cpu_inference

            if fused_cpu_inference(x, weight, fp32=True):
                return _patches_as_gemm(x, weight)
        return F.conv2d(x, weight, stride=self.patch_size)

    def extra_repr(self) -> str:
        return f"bands={list(self.bands)}, width={self.out_channels}, patch={self.patch_size}"


def _patches_as_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=kernel)`` as one matrix product over the image's patches
    laid out as rows (a stride equal to the kernel makes the patches disjoint): on a CPU, ~2x
    faster in float32 than oneDNN's convolution for the 16x16 patches of a ViT-B/16 (measured on
    a Zen 3 CPU, AVX2), and equal to it to float32 rounding. In bf16 it is the only CPU path:
    on an Intel Xeon with AMX (torch 2.11, 16 threads) oneDNN's bf16 convolution was wrong at
    both patch projections measured (relative error 1.1 for 10 -> 768 bands x 16x16 patches
    and 1.2 for 12 -> 128 x 8x8, against bf16's rounding of 1.7e-3, which its bf16 linear
    layers of the same towers met), which made the whole image tower disagree with float32;
    on a Zen 4 (AVX512_BF16) both take the same time (7.9 ms for 4 images of ViT-B/16's) and
    give the same error. Pixels past the last whole patch are left out, as by the convolution.
    Returns the convolution's ``[B, D, h, w]`` shape (as a view of a ``[B, h, w, D]`` result)."""
    b, c, height, width = x.shape
    d, _, ph, pw = weight.shape
    gh, gw = height // ph, width // pw
    rows = (
        x[:, :, : gh * ph, : gw * pw]
        .reshape(b, c, gh, ph, gw, pw)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(b * gh * gw, c * ph * pw)
    )
    return F.linear(rows, weight.reshape(d, -1)).view(b, gh, gw, d).permute(0, 3, 1, 2)
