"""Dense decoders: output shapes at patch and non-patch sizes, gradients, parameter counts."""

from __future__ import annotations

import pytest
import torch

from msclip.errors import DecoderError
from msclip.heads.decoders import (
    DECODERS,
    LinearDecoder,
    UPerNetDecoder,
    build_decoder,
    count_parameters,
    list_decoders,
)

C, K, P = 24, 5, 8


def _taps(n: int = 4, b: int = 2, h: int = 4, w: int = 6, c: int = C) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, c, h, w, generator=g) for _ in range(n)]


def _small(name: str) -> dict:
    return {"linear": {}, "fcn": {"channels": 16}, "upernet": {"channels": 16},
            "segformer": {"embed_dim": 16}}[name]  # fmt: skip


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("grid", [(4, 6), (1, 1), (3, 5)])
def test_output_shape_default_and_given_size(name, grid):
    torch.manual_seed(0)
    dec = build_decoder(name, [C] * 4, K, P, **_small(name)).eval()
    taps = _taps(h=grid[0], w=grid[1])
    assert dec(taps).shape == (2, K, grid[0] * P, grid[1] * P)
    # An explicit size that is not a multiple of the patch (what DenseModel crops to).
    assert dec(taps, (grid[0] * P - 3, grid[1] * P - 5)).shape == (
        2, K, grid[0] * P - 3, grid[1] * P - 5,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(DECODERS))
def test_gradients_reach_every_parameter_and_the_taps(name):
    torch.manual_seed(0)
    dec = build_decoder(name, [C] * 4, K, P, **_small(name)).train()
    taps = [t.requires_grad_(True) for t in _taps()]
    dec(taps).square().mean().backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in taps)


def test_parameter_counts_match_the_documented_formulas():
    c, k, ch, n = 128, 5, 256, 4
    lin = build_decoder("linear", [c] * n, k, 8)
    assert count_parameters(lin) == n * (2 * c + c * k + k) + n
    fcn = build_decoder("fcn", [c] * n, k, 8, channels=ch, num_convs=2)
    assert count_parameters(fcn) == 9 * n * c * ch + 9 * ch * ch + 2 * 2 * ch + ch * k + k
    seg = build_decoder("segformer", [c] * n, k, 8, embed_dim=ch)
    assert count_parameters(seg) == n * (c * ch + ch) + n * ch * ch + 2 * ch + ch * k + k
    up = build_decoder("upernet", [c] * n, k, 8)  # 256 channels by default
    b = 4
    expected = (12 * c * c + 5 * c + b * (c * ch + 2 * ch) + 9 * (c + b * ch) * ch + 2 * ch
                + 3 * (c * ch + 2 * ch) + 3 * (9 * ch * ch + 2 * ch) + 36 * ch * ch + 2 * ch
                + ch * k + k)  # fmt: skip
    assert count_parameters(up) == expected == 7_217_029
    frozen = build_decoder("linear", [c] * n, k, 8)
    frozen.heads.requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == n * 2 * c + n


def test_linear_layer_weights_are_a_softmax():
    dec = LinearDecoder([C] * 3, K, P)
    assert torch.allclose(dec.layer_weights, torch.full((3,), 1 / 3))
    with torch.no_grad():
        dec.layer_logits.copy_(torch.tensor([0.0, 100.0, 0.0]))
    dec.eval()
    taps = _taps(3)
    # All weight on layer 1: the output is that layer's own 1x1 convolution, upsampled.
    only = dec.heads[1](dec.norms[1](taps[1]))
    expected = torch.nn.functional.interpolate(only, scale_factor=P, mode="bilinear")
    assert torch.allclose(dec(taps), expected, atol=1e-5)


def test_upernet_maps_taps_to_pyramid_levels():
    assert UPerNetDecoder([C] * 4, K, P, channels=8).level_taps == [0, 1, 2, 3]
    assert UPerNetDecoder([C] * 2, K, P, channels=8).level_taps == [0, 0, 1, 1]
    assert UPerNetDecoder([C], K, P, channels=8).level_taps == [0, 0, 0, 0]
    dec = UPerNetDecoder([C, 2 * C], K, P, channels=8).eval()
    out = dec([torch.randn(1, C, 4, 4), torch.randn(1, 2 * C, 4, 4)])
    assert out.shape == (1, K, 32, 32)


def test_taps_of_other_sizes_are_resampled_to_the_first():
    dec = build_decoder("fcn", [C, C], K, P, channels=8).eval()
    out = dec([torch.randn(1, C, 4, 4), torch.randn(1, C, 2, 2)])
    assert out.shape == (1, K, 32, 32)


def test_bad_requests_are_refused_with_clear_messages():
    with pytest.raises(DecoderError, match="unknown decoder 'unet'"):
        build_decoder("unet", [C], K, P)
    with pytest.raises(DecoderError, match="bad options"):
        build_decoder("linear", [C], K, P, channels=3)
    with pytest.raises(DecoderError, match="num_outputs"):
        build_decoder("linear", [C], 0, P)
    dec = build_decoder("linear", [C, C], K, P)
    with pytest.raises(DecoderError, match="built for 2 taps but got 1"):
        dec(_taps(1))
    with pytest.raises(DecoderError, match=r"expected \[B, 24, h, w\]"):
        dec(_taps(2, c=12))
    assert list_decoders() == ["linear", "fcn", "upernet", "segformer"]
    assert build_decoder("UPerNet", [C], K, P, channels=8).name == "upernet"
