"""Wavelength-aware band adaptation: kernel form, channel form, and the rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.faults import wrong_half_precision_conv2d

from msclip.errors import BandError, OutOfRangeBandWarning
from msclip.spectral import LLAMA3_MS_CLIP_BANDS, S2_L2A_BANDS, SpectralPatchEmbed, map_bands
from msclip.spectral.bands import resolve_band


def _embed(bands=LLAMA3_MS_CLIP_BANDS, width=8, patch=4, seed=0):
    torch.manual_seed(seed)
    return SpectralPatchEmbed(bands, width, patch, torch.randn(width, len(bands), patch, patch))


def test_exact_band_set_is_identity():
    m = map_bands(LLAMA3_MS_CLIP_BANDS, LLAMA3_MS_CLIP_BANDS)
    assert np.array_equal(m.matrix, np.eye(10)) and m.permutation == list(range(10))
    pe = _embed()
    assert torch.equal(pe.adapted_weight(LLAMA3_MS_CLIP_BANDS), pe.weight)


def test_permuted_bands_keep_kernels():
    pe = _embed()
    perm = list(reversed(LLAMA3_MS_CLIP_BANDS))
    x = torch.randn(2, 10, 8, 8)
    x_perm = x[:, list(reversed(range(10)))]
    assert torch.allclose(pe(x_perm, bands=perm), pe(x), atol=1e-6)
    assert torch.equal(pe.adapted_weight(perm), pe.weight[:, list(reversed(range(10)))])


def test_l2a_file_bands_map_to_published_selection():
    # B01 is outside the model's range (warning); B09 lies between B8A and B11, which the file
    # also holds, so it is left out: exactly the published 12 -> 10 selection.
    with pytest.warns(UserWarning, match="B01"):
        m = map_bands(("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
                      ("B01", *S2_L2A_BANDS[1:]))  # fmt: skip
    assert m.permutation == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    assert m.kinds[9] == "redundant" and m.kinds[0] == "ignored"


def test_interpolation_between_model_bands():
    model = ("B04", "B08")  # red 0.6646 um and NIR 0.8328 um
    m = map_bands(model, ("B06",))  # red edge 0.7405 um, neither neighbour given
    t = (resolve_band("B06").center - 0.6646) / (0.8328 - 0.6646)
    assert m.kinds == ("interpolated",)
    assert m.matrix[:, 0] == pytest.approx([1 - t, t])
    pe = _embed(model)
    w = pe.adapted_weight(("B06",))
    assert torch.allclose(w[:, 0], (1 - t) * pe.weight[:, 0] + t * pe.weight[:, 1], atol=1e-6)


def test_out_of_range_band_is_ignored_with_warning():
    with pytest.warns(UserWarning, match="outside the model's spectral range"):
        m = map_bands(("B02", "B03", "B04"), ("B02", "B03", "B04", "B12"))
    assert m.kinds[-1] == "ignored" and not m.matrix[:, -1].any()
    with pytest.raises(BandError, match="none of the input bands"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        map_bands(("B02", "B03"), ("B12",))


def test_missing_model_band_contributes_nothing():
    pe = _embed()
    present = [b for b in LLAMA3_MS_CLIP_BANDS if b != "B05"]
    x = torch.randn(1, 9, 8, 8)
    out = pe(x, bands=present)
    # Same as the full model band set with B05 filled with its mean (zero after normalising).
    full = torch.zeros(1, 10, 8, 8)
    full[:, [LLAMA3_MS_CLIP_BANDS.index(b) for b in present]] = x
    assert torch.allclose(out, pe(full), atol=1e-6)
    assert map_bands(LLAMA3_MS_CLIP_BANDS, present).missing == ("B05",)


def test_cross_sensor_equivalence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = map_bands(LLAMA3_MS_CLIP_BANDS, ("OLI_B4", "OLI_B5", "OLI_B8"))
    # OLI red is B04, OLI NIR (0.865 um) is B8A; the broad panchromatic band is not green.
    assert m.kinds[:2] == ("equivalent", "equivalent")
    assert m.matrix[LLAMA3_MS_CLIP_BANDS.index("B04"), 0] == 1.0
    assert m.matrix[LLAMA3_MS_CLIP_BANDS.index("B8A"), 1] == 1.0
    assert m.kinds[2] == "interpolated"  # B03/B04: B03 is absent, so pan stands in


def test_kernel_form_equals_channel_form():
    pe = _embed()
    bands = ("B12", "OLI_B4", "B06", "B02")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = map_bands(LLAMA3_MS_CLIP_BANDS, bands)
    x = torch.randn(2, 4, 8, 8)
    kernel_form = pe(x, bands=bands)
    channel_form = F.conv2d(
        torch.einsum("ij,bjhw->bihw", torch.as_tensor(m.matrix, dtype=x.dtype), x),
        pe.weight,
        stride=4,
    )
    assert torch.allclose(kernel_form, channel_form, atol=1e-5)


def test_input_stats_follow_mapping():
    m = map_bands(("B04", "B08"), ("B06", "B08"))
    mean, std = m.input_stats([100.0, 300.0], [10.0, 30.0])
    t = m.matrix[1, 0]
    assert mean[0] == pytest.approx(100 * (1 - t) + 300 * t)
    assert mean[1] == pytest.approx(300.0) and std[1] == pytest.approx(30.0)


def test_one_input_band_per_model_band():
    # Landsat green and the panchromatic band are both equivalent to an RGB model's green: they
    # must not add up to twice the signal. The closer band feeds green, the other is left out.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = map_bands(("red", "green", "blue"), ("OLI_B2", "OLI_B3", "OLI_B4", "OLI_B8"))
    assert m.kinds == ("equivalent", "equivalent", "equivalent", "redundant")
    assert m.matrix.sum(axis=1).tolist() == [1.0, 1.0, 1.0]
    assert m.permutation == [2, 1, 0]
    # the same band under its own name wins over an equivalent one
    m = map_bands(LLAMA3_MS_CLIP_BANDS, (*LLAMA3_MS_CLIP_BANDS, "red"))
    assert m.kinds[-1] == "redundant" and m.permutation == list(range(10))


def test_a_narrow_band_is_not_read_as_the_broad_band_that_contains_it():
    """An RGB green (500-600 nm) is equivalent to Landsat green (525-600) and to its panchromatic
    band (500-680), and overlaps the broad one more: picked by the overlap alone, green fed the
    panchromatic kernel, a Landsat model's green band stayed empty, and PlanetScope red, taken
    for panchromatic too, was left out beside it. The overlap relative to the union decides,
    as it does between two input bands; the zero-init from RGB follows the same rule."""
    landsat = ("OLI_B1", "OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7", "OLI_B8")
    m = map_bands(landsat, ("red", "green", "blue"))
    fed = {landsat[i]: m.input_bands[int(np.flatnonzero(m.matrix[i])[0])]
           for i in range(len(landsat)) if m.matrix[i].any()}  # fmt: skip
    assert fed == {"OLI_B2": "blue", "OLI_B3": "green", "OLI_B4": "red"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = map_bands(landsat, ("PS2_B1", "PS2_B2", "PS2_B3", "PS2_B4"))
    assert ps.kinds[:3] == ("equivalent",) * 3
    assert ps.matrix[landsat.index("OLI_B4"), 2] == 1.0 and "OLI_B8" in ps.missing
    rgb = torch.randn(4, 3, 2, 2)
    w = SpectralPatchEmbed.from_rgb(rgb, landsat).weight
    assert torch.equal(w[:, landsat.index("OLI_B3")], rgb[:, 1])
    assert not w[:, landsat.index("OLI_B8")].any()


def test_a_band_overlapping_the_first_model_band_stands_in_for_it():
    """NAIP blue (420-492 nm) ends 0.4 nm short of B02's centre: beyond the model's range, yet
    the only blue band of an RGBN file; it feeds B02 when nothing else does. S2 B01 (no overlap)
    stays ignored, and a real B02 keeps its place."""
    naip = ("NAIP_R", "NAIP_G", "NAIP_B", "NAIP_N")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is ignored any more: no warning
        m = map_bands(LLAMA3_MS_CLIP_BANDS, naip)
    b02 = m.model_bands.index("B02")
    assert m.matrix[b02].tolist() == [0.0, 0.0, 1.0, 0.0] and "B02" not in m.missing
    assert m.kinds[2] == "equivalent" and not m.ignored
    with pytest.warns(OutOfRangeBandWarning, match="NAIP_B"):
        both = map_bands(LLAMA3_MS_CLIP_BANDS, ("B02", "B03", "B04", "NAIP_B"))
    assert both.kinds == ("exact", "exact", "exact", "ignored")
    with pytest.warns(OutOfRangeBandWarning, match="B01"):
        s2 = map_bands(LLAMA3_MS_CLIP_BANDS, ("B01", "B03", "B04"))
    assert s2.kinds[0] == "ignored" and "B02" in s2.missing


def test_patch_projection_as_one_matrix_product_equals_the_convolution(monkeypatch):
    """The float32 CPU path asked for by ``auto`` (``fused_fp32``): the patches as rows of one
    product, equal to the convolution to float32 rounding, sides that are not a multiple of
    the patch included (the remainder is left out, as by the convolution); never with gradients
    or when the fused path is switched off."""
    from msclip.architecture import FUSED_ENV
    from msclip.spectral import patch_embed

    pe = _embed(patch=4)
    calls = []
    real = patch_embed._patches_as_gemm
    monkeypatch.setattr(
        patch_embed, "_patches_as_gemm", lambda x, w: calls.append(x.shape) or real(x, w)
    )
    for shape in [(3, 10, 16, 16), (2, 10, 18, 23), (1, 10, 4, 8)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            conv = pe(x)
            pe.fused_fp32 = True
            gemm = pe(x)
            pe.fused_fp32 = False
        assert gemm.shape == conv.shape and torch.allclose(gemm, conv, atol=1e-5, rtol=1e-5)
    assert len(calls) == 3
    pe.fused_fp32 = True
    pe(torch.randn(1, 10, 8, 8))  # gradients recorded: the convolution
    monkeypatch.setenv(FUSED_ENV, "0")
    with torch.no_grad():
        pe(torch.randn(1, 10, 8, 8))  # switched off: the convolution
        pe.double()(torch.randn(1, 10, 8, 8, dtype=torch.float64))  # float32 only
    assert len(calls) == 3


def test_half_precision_patch_projection_on_a_cpu_is_one_matrix_product(monkeypatch):
    """In bf16 on a CPU the projection never runs the convolution (whose bf16 kernels were wrong
    on an AMX Xeon): with bf16 weights, with gradients, and under autocast from float32, it
    equals the float64 convolution to bf16's rounding, and gradients reach the kernel."""
    calls = wrong_half_precision_conv2d(monkeypatch)
    pe = _embed(patch=4)
    x = torch.randn(2, 10, 18, 23)
    ref = F.conv2d(x.double(), pe.weight.double(), stride=4)
    low = _embed(patch=4).bfloat16()
    with torch.no_grad():
        got = [low(x.bfloat16())]
    got.append(low(x.bfloat16()))  # gradients recorded
    got[-1].float().square().sum().backward()
    assert low.weight.grad is not None and low.weight.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got.append(pe(x))
    assert calls == []
    for out in got:
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        err = float((out.double() - ref).norm() / ref.norm())
        assert err < 1e-2, err
    # float32 keeps OpenCLIP's convolution (bit for bit); the wrong kernel is seen where it runs
    assert torch.equal(pe(x), F.conv2d(x, pe.weight, stride=4))
    F.conv2d(x.bfloat16(), low.weight, stride=4)
    assert calls == [torch.bfloat16]
