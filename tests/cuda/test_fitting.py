"""Launches of the loss kernels shrink their blocks to what the GPU's resources allow.

A fake kernel stands in for the Triton one: it refuses (as Triton's launcher does) any launch
whose output slice or column tile is wider than a limit, and records the ones it accepts. The
real shared-memory figures of the kernels are checked in ``test_compile.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton")
from msclip.cuda import contrastive_kernels as ck
from triton.runtime.errors import OutOfResources


class FakeKernel:
    """Refuses launches with ``sizes[name] > limit`` (shared memory), records the others."""

    def __init__(self, name: str, limit: int) -> None:
        self.__name__ = f"fake{id(self)}"
        self.name, self.limit = name, limit
        self.refused: list[int] = []
        self.launched: list[tuple[tuple[int, ...], dict]] = []

    def __getitem__(self, grid: tuple[int, ...]):
        def launch(*args, **kw):
            if kw[self.name] > self.limit:
                self.refused.append(kw[self.name])
                raise OutOfResources(kw[self.name] * 288, self.limit * 288, "shared memory")
            self.launched.append((grid, kw))

        return launch


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    monkeypatch.setattr(ck, "_FITTED", {})


def _embeddings(n: int = 40, d: int = 512, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def test_gradient_kernel_halves_its_output_slice_until_it_fits_and_remembers(monkeypatch) -> None:
    fake = FakeKernel("BLOCK_DO", 128)
    monkeypatch.setattr(ck, "_clip_grad", fake)
    x, y = _embeddings()
    backend = ck.TritonBackend(512)
    assert backend.block_do == 256
    lse = torch.zeros(40)
    backend.clip_backward(x, y, torch.tensor(1.0), (0, 40), lse, lse, (True, False))
    assert fake.refused == [256]
    ((grid, kw),) = fake.launched
    assert kw["BLOCK_DO"] == 128 and kw["BLOCK_N"] == 64 and kw["num_warps"] == 8
    assert grid == (2, 4)  # 40 rows in blocks of 32; 512 output columns in slices of 128
    # a second backend (each loss call makes one) goes straight to the size that fitted
    ck.TritonBackend(512).clip_backward(x, y, torch.tensor(1.0), (0, 40), lse, lse, (True, True))
    assert fake.refused == [256]
    assert [kw["BLOCK_DO"] for _, kw in fake.launched] == [128, 128, 128]
    # another dtype is fitted on its own
    xh, yh = _embeddings(dtype=torch.float16)
    ck.TritonBackend(512).clip_backward(xh, yh, torch.tensor(1.0), (0, 40), lse, lse, (True, False))
    assert fake.refused == [256, 256]


def test_statistics_kernels_halve_their_column_tile(monkeypatch) -> None:
    clip, sig = FakeKernel("BLOCK_N", 32), FakeKernel("BLOCK_N", 16)
    monkeypatch.setattr(ck, "_clip_stats", clip)
    monkeypatch.setattr(ck, "_siglip_stats", sig)
    x, y = _embeddings()
    backend = ck.TritonBackend(512)
    backend.clip_forward(x, y, torch.tensor(1.0))
    assert clip.refused == [64]
    assert [kw["BLOCK_N"] for _, kw in clip.launched] == [32, 32]  # rows, then columns
    assert all(kw["BLOCK_M"] == 32 for _, kw in clip.launched)
    backend.siglip_forward(x, y, torch.tensor(1.0), torch.tensor(0.0), 0)
    assert sig.refused == [64, 32]
    assert [kw["BLOCK_N"] for _, kw in sig.launched] == [16]


def test_a_kernel_that_fits_no_size_raises_the_resource_error(monkeypatch) -> None:
    fake = FakeKernel("BLOCK_DO", 8)
    monkeypatch.setattr(ck, "_siglip_grad", fake)
    x, y = _embeddings()
    with pytest.raises(OutOfResources, match="shared memory"):
        ck.TritonBackend(512).siglip_backward(
            x, y, torch.tensor(1.0), torch.tensor(0.0), (0, 40), (True, False)
        )
    assert fake.refused == [256, 128, 64, 32, 16]
    assert not fake.launched


@pytest.mark.parametrize("bad", [(16, 16), 32.0, (16, 16, True)])
def test_block_sizes_that_are_not_one_int_or_a_triple_of_ints_are_refused(bad) -> None:
    """They raised IndexError ('tuple index out of range') or TypeError from the power-of-two
    check; True passed it as 1 and was refused as not a power of two >= 16 only by chance."""
    with pytest.raises(ck.ContrastiveInputError, match="Triton block sizes"):
        ck.TritonBackend(24, bad)
    assert ck.TritonBackend(24, (np.int64(16), 16, 32)).block_m == 16
