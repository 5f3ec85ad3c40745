"""Triton kernels of the blockwise contrastive losses (see :mod:`msclip.cuda.contrastive`).

Each kernel walks one rectangle of the logit matrix: a program owns ``BLOCK_M`` rows of ``q``
and loops over all rows of ``k`` in ``BLOCK_N`` tiles, forming each ``BLOCK_M x BLOCK_N`` logit
tile in registers from ``BLOCK_D``-wide slices of the embeddings (``tl.dot`` with fp32
accumulation), so no logit ever reaches global memory:

* ``_clip_stats``: online log-sum-exp of every ``q`` row (running max, rescaled sum ``S`` and
  logit-weighted sum ``W``), as FlashAttention's forward pass (Dao et al., NeurIPS 2022) and
  Inf-CL (Cheng et al. 2024). Launched twice: rows of ``x`` against ``y``, then rows of ``y``
  against ``x`` (the columns).
* ``_clip_grad``: ``sum_j (exp(l_ij - lse_q_i) + exp(l_ij - lse_k_j) - 2 delta_ij) k_j`` for a
  ``BLOCK_DO`` slice of the output columns, the logits recomputed from the saved ``lse``.
* ``_siglip_stats`` / ``_siglip_grad``: the per-row sums of the sigmoid loss (loss, ``dL/dt``,
  ``dL/db`` numerators) and ``sum_j z_ij sigmoid(-z_ij l_ij) k_j``.

The diagonal (positive pairs) is where the global row index ``offset + i`` equals the column
index ``j``. fp32 inputs use IEEE fp32 products unless torch allows TF32 for matmuls
(``torch.backends.cuda.matmul.allow_tf32``), so the kernels round as the plain loss does.

Block sizes are fixed by the embedding width and untuned (no GPU was available when they were
written): ``BLOCK_M = 32``, ``BLOCK_N = 64``, ``BLOCK_D = 64``, ``BLOCK_DO <= 256``. A launch that
needs more shared memory than the device has is retried with half the output slice
(``BLOCK_DO``, gradient kernels) or half the column tile (``BLOCK_N``, statistics kernels), down
to 16, and the sizes that fitted are kept for that device: compiled for a Turing GPU (sm_75, 64
KB of shared memory per block), the fp32 gradient kernels at ``BLOCK_DO = 256`` need 72 KB and
run at 128. ``BLOCK_DO`` only divides the output columns among programs: each output is summed
over the same tiles in the same order whatever its value.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from msclip.cuda.runtime import launch_device
from triton.runtime.errors import OutOfResources

from msclip.errors import ContrastiveInputError

__all__ = ["INTERPRETED", "TritonBackend"]

#: Whether this module's kernels were decorated under Triton's CPU interpreter.
INTERPRETED = bool(triton.knobs.runtime.interpret)

logger = logging.getLogger(__name__)

#: (kernel, device, dtype, sizes asked for) -> the sizes that fitted the device's resources
_FITTED: dict[tuple[Any, ...], dict[str, int]] = {}
_MIN_BLOCK = 16


@triton.jit
def _dot_tile(
    q_ptr,
    k_ptr,
    rows,
    row_ok,
    cols,
    col_ok,
    dim,
    stride_q,
    stride_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` fp32 tile of ``q[rows] . k[cols]``, summed over ``BLOCK_D``-wide
    slices of the embeddings (0 where a row or a column is out of range)."""
    offs_d = tl.arange(0, BLOCK_D)
    dots = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d_ok = (d0 + offs_d) < dim
        q = tl.load(
            q_ptr + rows[:, None] * stride_q + (d0 + offs_d)[None, :],
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        k = tl.load(
            k_ptr + cols[:, None] * stride_k + (d0 + offs_d)[None, :],
            mask=col_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if DOT_F32:
            q, k = q.to(tl.float32), k.to(tl.float32)
        dots = tl.dot(q, tl.trans(k), dots, input_precision=PRECISION)
    return dots


@triton.jit
def _accumulate_rows(
    acc,
    w,
    k_ptr,
    cols,
    col_ok,
    out_d,
    out_ok,
    stride_k,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """``acc + w @ k[cols, out_d]``: the weighted ``k`` rows of one tile, in fp32 (``w`` is
    rounded to the embeddings' dtype first, as the plain loss multiplies)."""
    kv = tl.load(
        k_ptr + cols[:, None] * stride_k + out_d[None, :],
        mask=col_ok[:, None] & out_ok[None, :],
        other=0.0,
    )
    w = w.to(kv.dtype)
    if DOT_F32:
        w, kv = w.to(tl.float32), kv.to(tl.float32)
    return tl.dot(w, kv, acc, input_precision=PRECISION)


@triton.jit
def _store_rows(out_ptr, acc, rows, row_ok, out_d, out_ok, stride_o):
    """Write the ``[BLOCK_M, BLOCK_DO]`` block ``acc`` at ``out[rows, out_d]``."""
    tl.store(
        out_ptr + rows[:, None] * stride_o + out_d[None, :],
        acc,
        mask=row_ok[:, None] & out_ok[None, :],
    )


@triton.jit
def _clip_stats(
    q_ptr,
    k_ptr,
    scale_ptr,
    lse_ptr,
    e_ptr,
    n_q,
    n_k,
    dim,
    stride_q,
    stride_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_q
    offs_n = tl.arange(0, BLOCK_N)
    s = tl.load(scale_ptr).to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s_i = tl.zeros([BLOCK_M], tl.float32)
    w_i = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_k, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < n_k
        dots = _dot_tile(
            q_ptr, k_ptr, rows, row_ok, cols, col_ok, dim, stride_q, stride_k,
            BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, DOT_F32,
        )  # fmt: skip
        logits = tl.where(col_ok[None, :], dots * s, 0.0)
        m_new = tl.maximum(m_i, tl.max(tl.where(col_ok[None, :], logits, float("-inf")), 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.where(col_ok[None, :], tl.exp(logits - m_new[:, None]), 0.0)
        s_i = s_i * alpha + tl.sum(p, 1)
        w_i = w_i * alpha + tl.sum(p * logits, 1)
        m_i = m_new
    tl.store(lse_ptr + rows, m_i + tl.log(s_i), mask=row_ok)
    tl.store(e_ptr + rows, w_i / s_i, mask=row_ok)


@triton.jit
def _clip_grad(
    q_ptr,
    k_ptr,
    scale_ptr,
    lse_q_ptr,
    lse_k_ptr,
    out_ptr,
    n_q,
    n_k,
    dim,
    offset,
    stride_q,
    stride_k,
    stride_o,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_o = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_q
    offs_n = tl.arange(0, BLOCK_N)
    out_d = pid_o * BLOCK_DO + tl.arange(0, BLOCK_DO)
    out_ok = out_d < dim
    s = tl.load(scale_ptr).to(tl.float32)
    lse_q = tl.load(lse_q_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
    for start in range(0, n_k, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < n_k
        dots = _dot_tile(
            q_ptr, k_ptr, rows, row_ok, cols, col_ok, dim, stride_q, stride_k,
            BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, DOT_F32,
        )  # fmt: skip
        logits = dots * s
        lse_k = tl.load(lse_k_ptr + cols, mask=col_ok, other=0.0)
        g = tl.exp(logits - lse_q[:, None]) + tl.exp(logits - lse_k[None, :])
        diag = (rows[:, None] + offset) == cols[None, :]
        g = tl.where(diag, g - 2.0, g)
        g = tl.where(col_ok[None, :], g, 0.0)
        acc = _accumulate_rows(
            acc, g, k_ptr, cols, col_ok, out_d, out_ok, stride_k, PRECISION, DOT_F32
        )
    _store_rows(out_ptr, acc, rows, row_ok, out_d, out_ok, stride_o)


@triton.jit
def _log1p(x):
    # log(1 + x) accurate for small x without libdevice (Goldberg 1991, "What every computer
    # scientist should know about floating-point arithmetic", theorem 4)
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _siglip_stats(
    q_ptr,
    k_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    n_q,
    n_k,
    dim,
    offset,
    stride_q,
    stride_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_q
    offs_n = tl.arange(0, BLOCK_N)
    s = tl.load(scale_ptr).to(tl.float32)
    b = tl.load(bias_ptr).to(tl.float32)
    loss = tl.zeros([BLOCK_M], tl.float32)
    d_t = tl.zeros([BLOCK_M], tl.float32)
    d_b = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_k, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < n_k
        dots = _dot_tile(
            q_ptr, k_ptr, rows, row_ok, cols, col_ok, dim, stride_q, stride_k,
            BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, DOT_F32,
        )  # fmt: skip
        dots = dots * s
        z = tl.where((rows[:, None] + offset) == cols[None, :], 1.0, -1.0)
        v = z * (dots + b)
        ev = tl.exp(-tl.abs(v))
        # -log sigmoid(v) = max(-v, 0) + log1p(exp(-|v|)); sigmoid(-v) = exp(min(-v, 0)) / (1 + ev)
        nls = tl.maximum(-v, 0.0) + _log1p(ev)
        w = z * tl.exp(tl.minimum(-v, 0.0)) / (1.0 + ev)
        nls = tl.where(col_ok[None, :], nls, 0.0)
        w = tl.where(col_ok[None, :], w, 0.0)
        loss += tl.sum(nls, 1)
        d_t += tl.sum(w * dots, 1)
        d_b += tl.sum(w, 1)
    tl.store(out_ptr + rows, loss, mask=row_ok)
    tl.store(out_ptr + n_q + rows, d_t, mask=row_ok)
    tl.store(out_ptr + 2 * n_q + rows, d_b, mask=row_ok)


@triton.jit
def _siglip_grad(
    q_ptr,
    k_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    n_q,
    n_k,
    dim,
    offset,
    stride_q,
    stride_k,
    stride_o,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_o = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_q
    offs_n = tl.arange(0, BLOCK_N)
    out_d = pid_o * BLOCK_DO + tl.arange(0, BLOCK_DO)
    out_ok = out_d < dim
    s = tl.load(scale_ptr).to(tl.float32)
    b = tl.load(bias_ptr).to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
    for start in range(0, n_k, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < n_k
        dots = _dot_tile(
            q_ptr, k_ptr, rows, row_ok, cols, col_ok, dim, stride_q, stride_k,
            BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, DOT_F32,
        )  # fmt: skip
        z = tl.where((rows[:, None] + offset) == cols[None, :], 1.0, -1.0)
        v = z * (dots * s + b)
        w = z * tl.exp(tl.minimum(-v, 0.0)) / (1.0 + tl.exp(-tl.abs(v)))
        w = tl.where(col_ok[None, :], w, 0.0)
        acc = _accumulate_rows(
            acc, w, k_ptr, cols, col_ok, out_d, out_ok, stride_k, PRECISION, DOT_F32
        )
    _store_rows(out_ptr, acc, rows, row_ok, out_d, out_ok, stride_o)


def _dot_f32(t: torch.Tensor) -> bool:
    """Widen bf16 tiles to fp32 before ``tl.dot`` under the interpreter: Triton 3.8's interpreter
    multiplies bf16 tiles as their raw bits. Exact either way: products of bf16 values are exact
    in fp32, and the GPU accumulates them in fp32."""
    return INTERPRETED and t.dtype == torch.bfloat16


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _launch_fitting(
    kernel: Any,
    grid: Callable[[dict[str, int]], tuple[int, ...]],
    args: tuple[Any, ...],
    sizes: dict[str, int],
    shrink: str,
    device: torch.device,
    dtype: torch.dtype,
    **consts: Any,
) -> None:
    """Launch ``kernel`` with the block ``sizes``, halving ``sizes[shrink]`` (down to 16) while the
    device lacks the shared memory (or threads) a launch needs; what fitted is kept per kernel,
    device and dtype, so later launches go straight to it.

    Raises:
        triton.runtime.errors.OutOfResources: Even the smallest size does not fit.
    """
    name = getattr(kernel, "__name__", None) or repr(kernel)
    key = (name, str(device), dtype, tuple(sorted(sizes.items())), tuple(sorted(consts.items())))
    fitted = dict(_FITTED.get(key, sizes))
    while True:
        try:
            with launch_device(device):
                kernel[grid(fitted)](*args, **fitted, **consts)
        except OutOfResources as exc:
            if fitted[shrink] <= _MIN_BLOCK:
                raise
            smaller = fitted[shrink] // 2
            logger.info("%s on %s: %s; retrying with %s=%d", name, device, exc, shrink, smaller)
            fitted[shrink] = smaller
            continue
        _FITTED[key] = fitted
        return


class TritonBackend:
    """The rectangles of :mod:`msclip.cuda.contrastive` with the fused kernels.

    Args:
        dim: embedding width ``D``.
        block_size: ``BLOCK_M = BLOCK_N`` (an int), or ``(rows and columns, BLOCK_D, BLOCK_DO)``
            to also set the slice of ``D`` per ``tl.dot`` and per output program (tests use
            small ones to exercise every loop). Powers of two >= 16.
    """

    #: the kernels read fp16 / bf16 embeddings as they are and accumulate in fp32
    upcast = False

    def __init__(self, dim: int, block_size: int | tuple[int, int, int] | None = None) -> None:
        d2 = max(16, _pow2(dim))
        self.block_m, self.block_n = 32, 64
        self.block_d, self.block_do = min(64, d2), min(256, d2)
        if isinstance(block_size, tuple):
            if len(block_size) != 3:
                raise ContrastiveInputError(
                    "Triton block sizes are one int or a triple (rows and columns, slice of D, "
                    f"output slice), got {block_size!r}"
                )
            self.block_m = self.block_n = block_size[0]
            self.block_d, self.block_do = block_size[1], block_size[2]
        elif block_size is not None:
            self.block_m = self.block_n = block_size
        for v in (self.block_m, self.block_d, self.block_do):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 16 or v & (v - 1):
                raise ContrastiveInputError(
                    f"Triton block sizes must be powers of two >= 16, got {block_size!r}"
                )
        self.block_m, self.block_n = int(self.block_m), int(self.block_n)
        self.block_d, self.block_do = int(self.block_d), int(self.block_do)

    @staticmethod
    def _precision(t: torch.Tensor) -> str:
        if t.dtype == torch.float32 and t.is_cuda and torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        return "ieee"

    def _stats(self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nq = q.shape[0]
        lse = torch.full((nq,), float("-inf"), dtype=torch.float32, device=q.device)
        e = torch.zeros(nq, dtype=torch.float32, device=q.device)
        if nq and k.shape[0]:
            _launch_fitting(
                _clip_stats, lambda b: (triton.cdiv(nq, b["BLOCK_M"]),),
                (q, k, s, lse, e, nq, k.shape[0], q.shape[1], q.stride(0), k.stride(0)),
                {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n}, "BLOCK_N", q.device, q.dtype,
                BLOCK_D=self.block_d, PRECISION=self._precision(q), DOT_F32=_dot_f32(q),
            )  # fmt: skip
        return lse, e

    def clip_forward(
        self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """See :meth:`msclip.cuda.contrastive.ChunkedBackend.clip_forward`."""
        q, k, s = q.contiguous(), k.contiguous(), s.float().reshape(1)
        lse_r, e_r = self._stats(q, k, s)
        lse_c, e_c = self._stats(k, q, s)  # columns: k's rows against this process's rows
        return lse_r, e_r, lse_c, e_c

    def _grad(
        self,
        kernel: triton.JITFunction,
        q: torch.Tensor,
        k: torch.Tensor,
        extra: tuple[torch.Tensor, ...],
        offset: int,
    ) -> torch.Tensor:
        nq, d = q.shape
        out = torch.empty((nq, d), dtype=torch.float32, device=q.device)
        if nq == 0:
            return out
        _launch_fitting(
            kernel, lambda b: (triton.cdiv(nq, b["BLOCK_M"]), triton.cdiv(d, b["BLOCK_DO"])),
            (q, k, *extra, out, nq, k.shape[0], d, offset, q.stride(0), k.stride(0),
             out.stride(0)),
            {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_DO": self.block_do},
            "BLOCK_DO", q.device, q.dtype,
            BLOCK_D=self.block_d, PRECISION=self._precision(q), DOT_F32=_dot_f32(q), num_warps=8,
        )  # fmt: skip
        return out

    def clip_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        rows: tuple[int, int],
        lse_row: torch.Tensor,
        lse_col: torch.Tensor,
        need: tuple[bool, bool],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """See :meth:`msclip.cuda.contrastive.ChunkedBackend.clip_backward`."""
        a, b = rows
        x, y, s = x.contiguous(), y.contiguous(), s.float().reshape(1)
        lse_row, lse_col = lse_row.float().contiguous(), lse_col.float().contiguous()
        gx = gy = None
        if need[0]:
            gx = self._grad(_clip_grad, x[a:b], y, (s, lse_row[a:b], lse_col), a)
        if need[1]:
            gy = self._grad(_clip_grad, y[a:b], x, (s, lse_col[a:b], lse_row), a)
        return gx, gy

    def siglip_forward(
        self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor, b: torch.Tensor, offset: int
    ) -> torch.Tensor:
        """See :meth:`msclip.cuda.contrastive.ChunkedBackend.siglip_forward`."""
        nq = q.shape[0]
        q, k = q.contiguous(), k.contiguous()
        out = torch.zeros((3, nq), dtype=torch.float32, device=q.device)
        if nq:
            _launch_fitting(
                _siglip_stats, lambda b_: (triton.cdiv(nq, b_["BLOCK_M"]),),
                (q, k, s.float().reshape(1), b.float().reshape(1), out, nq, k.shape[0],
                 q.shape[1], offset, q.stride(0), k.stride(0)),
                {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n}, "BLOCK_N", q.device, q.dtype,
                BLOCK_D=self.block_d, PRECISION=self._precision(q), DOT_F32=_dot_f32(q),
            )  # fmt: skip
        return out.sum(1)

    def siglip_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        b: torch.Tensor,
        rows: tuple[int, int],
        need: tuple[bool, bool],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """See :meth:`msclip.cuda.contrastive.ChunkedBackend.siglip_backward`."""
        r0, r1 = rows
        x, y = x.contiguous(), y.contiguous()
        sb = (s.float().reshape(1), b.float().reshape(1))
        gx = self._grad(_siglip_grad, x[r0:r1], y, sb, r0) if need[0] else None
        gy = self._grad(_siglip_grad, y[r0:r1], x, sb, r0) if need[1] else None
        return gx, gy
