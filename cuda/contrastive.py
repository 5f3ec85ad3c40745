"""Blockwise contrastive losses: CLIP (InfoNCE) and SigLIP without a B x B matrix.

The plain losses of :mod:`msclip.train.loss` build the ``B x B`` logit matrix and its gradient;
at ``B = 65,536`` that is 16 GiB in fp32. Here the matrix is visited in ``block x block`` tiles
and never stored, so memory is ``O(B d)`` plus one tile, with the same loss and gradients:

* **CLIP.** With ``l_ij = s x_i . y_j`` (``s = exp(t)``, ``t`` the learnable log inverse
  temperature), the loss is ``1/(2N) [sum_i (lse_i(row) - l_ii) + sum_j (lse_j(col) - l_jj)]``.
  The forward pass keeps, per row and per column, a running maximum ``m``, a rescaled sum
  ``S = sum exp(l - m)`` and ``W = sum exp(l - m) l``, updated tile by tile (the online softmax
  of Milakov and Gimelshein 2018 used by FlashAttention, Dao et al., NeurIPS 2022; applied to
  contrastive losses by Inf-CL, Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite
  Batch Size Scaling for Contrastive Loss"). ``lse = m + log S`` and the softmax-weighted mean
  logit ``e = W / S`` give the loss and the temperature derivative
  ``dL/dt = 1/(2N) [sum_i e_i(row) + sum_j e_j(col) - 2 sum_i l_ii]`` during the forward pass,
  so only the ``O(B)`` statistics are saved. The backward pass recomputes each tile and
  accumulates ``dL/dx_i = s/(2N) sum_j (P_ij + Q_ij - 2 delta_ij) y_j`` (``P``, ``Q`` the row
  and column softmaxes, rebuilt from the saved ``lse``) and the same for ``y``.
* **SigLIP** (Zhai et al., ICCV 2023): ``-1/N sum_ij log sigmoid(z_ij l_ij)`` with
  ``l_ij = s x_i . y_j + b`` and ``z_ii = 1``, ``z_ij = -1``; every term is independent, so the
  forward pass sums the loss, ``dL/dt`` and ``dL/db`` tile by tile and the backward pass
  accumulates ``-s/N sum_j z_ij sigmoid(-z_ij l_ij) y_j``.

**Across processes** (a batch gathered over ``torch.distributed``): each process handles the
rectangle of its own rows ``R`` against all columns, which is ``1/world`` of the work. Its pass
gives complete row statistics for ``R`` and partial column statistics over ``R``; the partials
are combined with an ``all_reduce`` of the maximum and of the rescaled sums (a distributed
log-sum-exp), the row ``lse`` are all-gathered for the backward pass, and the scalar loss and
temperature derivative are all-reduced. The backward pass computes the gradients of this
process's rows only (its rows of ``x`` from the ``R x all`` rectangle, of ``y`` from
``all x R``): the other rows of the gathered batch are constants in this process, exactly as in
:mod:`msclip.train.distributed`, so the summed gradients equal one process's.

Two backends compute the rectangles: ``chunked`` (PyTorch, any device; on one process one pass
serves the rows and the columns, forward and backward) and ``triton`` (the fused kernels of
:mod:`msclip.cuda.contrastive_kernels`). Both run the same algorithm and the same collectives.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from msclip.cuda import ENV_LOSS_IMPL, LOSS_IMPLS
from msclip.cuda.runtime import check_device

from msclip.errors import ContrastiveInputError, KernelUnavailableError, LossImplError

__all__ = [
    "CHUNKED_MIN_BATCH",
    "CUDA_CHUNKED_MIN_BATCH",
    "DEFAULT_CHUNK",
    "ENV_LOSS_IMPL",
    "LOSS_IMPLS",
    "LossImplError",
    "Shard",
    "blockwise_contrastive_loss",
    "check_loss_impl",
    "resolve_loss_impl",
]

logger = logging.getLogger(__name__)

#: ``auto`` without Triton uses the plain loss below this global batch and the chunked one from
#: it on. Measured with benchmarks/kernels.py on 2 CPU cores (fp32, d = 512, forward + backward,
#: see docs/kernels.md): at B = 4,096 the chunked loss takes about the plain loss's time with a
#: quarter of its peak tensor memory, and the plain loss's ``B x B`` matrices grow as ``B^2``
#: (about 5 GiB at B = 16,384) while the chunked loss stays at ``O(B d)`` plus its tiles.
CHUNKED_MIN_BATCH = 4096
#: The same threshold on a CUDA device, where ``auto`` never picks the Triton kernels. Measured
#: on one H200 (benchmarks/kernels.py, fp32 as training computes the loss, TF32 off, d = 512,
#: forward + backward, 2026-12-04): at B = 4,096 plain 2.1 ms (352 MiB), chunked 5.6 ms (52
#: MiB), Triton 16.6 ms (16 MiB); at large batches the chunked loss also ran B = 262,144 in
#: 10.9 s where Triton took 15.5 s for half of it. The plain loss, fastest, holds about
#: ``22 B^2`` bytes at its peak (1.5 GiB at 8,192): below this batch on every GPU that trains.
CUDA_CHUNKED_MIN_BATCH = 8192
#: Tile edge of the chunked PyTorch backend. A 2,048 x 2,048 fp32 tile is 16 MiB (two buffers
#: and the logits are alive at a time), independent of the batch; smaller tiles were slower on
#: the 2-core machine of the measurement (more, smaller parallel regions): 2 to 4x at 512.
DEFAULT_CHUNK = 2048


@dataclass(frozen=True)
class Shard:
    """This process's rows of a batch gathered over the default process group, in rank order.

    Attributes:
        rank: this process's rank.
        sizes: rows of every process (they may differ).
    """

    rank: int
    sizes: tuple[int, ...]

    @property
    def start(self) -> int:
        """First row of this process in the gathered batch."""
        return int(sum(self.sizes[: self.rank]))

    @property
    def stop(self) -> int:
        """One past the last row of this process."""
        return self.start + int(self.sizes[self.rank])


# -- choosing an implementation --------------------------------------------------------------
def _requested(impl: str) -> str:
    if impl not in LOSS_IMPLS:
        raise LossImplError(f"loss implementation must be one of {list(LOSS_IMPLS)}, got {impl!r}")
    if impl != "auto":
        return impl
    env = os.environ.get(ENV_LOSS_IMPL, "").strip().lower()
    if not env:
        return "auto"
    if env not in LOSS_IMPLS:
        raise LossImplError(
            f"environment variable {ENV_LOSS_IMPL}={env!r} must be one of {list(LOSS_IMPLS)}; "
            "fix or unset it"
        )
    return env


@functools.cache
def _triton_self_test(device: str) -> bool:
    """Run both loss kernels once on small data against the chunked backend."""
    dev = torch.device(device)
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = F.normalize(torch.randn(40, 32, generator=g), dim=1).to(dev)
        y = F.normalize(torch.randn(40, 32, generator=g), dim=1).to(dev)
        t = torch.tensor(math.log(10.0), device=dev)
        b = torch.tensor(-2.0, device=dev)
        for kind in ("clip", "siglip"):
            got = blockwise_contrastive_loss(x, y, t, b, kind=kind, impl="triton")
            ref = blockwise_contrastive_loss(x, y, t, b, kind=kind, impl="chunked")
            if not torch.allclose(got, ref, rtol=1e-3, atol=1e-4):
                logger.warning(
                    "Triton %s loss self-test on %s gave %.6g instead of %.6g",
                    kind,
                    device,
                    float(got),
                    float(ref),
                )
                return False
    except Exception as exc:  # any compiler or driver failure: do not use
        logger.warning("Triton loss kernels do not work on %s (%s)", device, exc)
        return False
    return True


def resolve_loss_impl(impl: str, batch: int, device: torch.device | str) -> str:
    """The implementation that ``impl`` means for a global batch of ``batch`` on ``device``.

    ``auto`` reads :data:`ENV_LOSS_IMPL` first; if that is unset or ``auto`` too: ``plain``
    below :data:`CHUNKED_MIN_BATCH` (:data:`CUDA_CHUNKED_MIN_BATCH` on a CUDA device) and
    ``chunked`` from it on. The batch alone decides, so every process of a run picks the same
    (the blockwise losses exchange statistics, the plain one does not). ``triton`` is never
    chosen by ``auto``: on the one GPU measured it was the slowest (see
    :data:`CUDA_CHUNKED_MIN_BATCH`); ask for it where its smaller memory matters. Explicit
    choices are returned as they are (see :func:`check_loss_impl`).

    Raises:
        LossImplError: Unknown ``impl`` or environment value.
    """
    choice = _requested(impl)
    if choice != "auto":
        return choice
    cuda = torch.device(device).type == "cuda"
    return "plain" if batch < (CUDA_CHUNKED_MIN_BATCH if cuda else CHUNKED_MIN_BATCH) else "chunked"


def check_loss_impl(impl: str, device: torch.device | str) -> None:
    """Fail early when ``impl`` (after the environment variable) cannot run on ``device``.

    Raises:
        LossImplError: Unknown ``impl`` or environment value.
        KernelUnavailableError: ``triton`` without Triton or a usable device, or with kernels
            that fail their self-test there (against the chunked loss, on small data).
    """
    if _requested(impl) != "triton":
        return
    what = "loss implementation 'triton'"
    if impl == "auto":  # the environment asked for it: say so, or the flag's value misleads
        what += f" (set by {ENV_LOSS_IMPL}; unset it or pass --loss-impl chunked)"
    check_device(device, "contrastive_kernels", what)
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if not _triton_self_test(f"cuda:{index}"):
            raise KernelUnavailableError(
                f"the Triton loss kernels fail their self-test on cuda:{index} (see the warning "
                "above); use --loss-impl chunked (the same loss in PyTorch, O(B d) memory too)"
            )


# -- backends --------------------------------------------------------------------------------
class _Backend(Protocol):
    """The rectangles of the algorithm; :class:`ChunkedBackend` documents each method."""

    upcast: bool  # compute fp16 / bf16 embeddings in fp32 copies

    def clip_forward(
        self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def clip_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        rows: tuple[int, int],
        lse_row: torch.Tensor,
        lse_col: torch.Tensor,
        need: tuple[bool, bool],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def siglip_forward(
        self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor, b: torch.Tensor, offset: int
    ) -> torch.Tensor: ...

    def siglip_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        b: torch.Tensor,
        rows: tuple[int, int],
        need: tuple[bool, bool],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...


class ChunkedBackend:
    """The rectangles of the blockwise losses in PyTorch, ``chunk x chunk`` tiles at a time.

    Each tile is formed by one matmul of the scaled query block with a key block; the
    positives of a tile whose first element is at global position ``(r, c)`` lie on its
    diagonal of offset ``r - c`` (an in-place view, empty when the tile misses the global
    diagonal). Element-wise work reuses one tile buffer.

    Args:
        chunk: tile edge (rows and columns).
    """

    #: fp16 / bf16 embeddings are computed in fp32 (an O(B d) copy)
    upcast = True

    def __init__(self, chunk: int = DEFAULT_CHUNK) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral):
            raise ContrastiveInputError(
                f"block size must be an integer (rows and columns of a tile), got {chunk!r}"
            )
        chunk = int(chunk)
        if chunk < 1:
            raise ContrastiveInputError(f"block size must be >= 1, got {chunk}")
        self.chunk = chunk

    # CLIP ------------------------------------------------------------------------------------
    def clip_forward(
        self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row statistics of ``q`` against all ``k``, column statistics over the rows of ``q``.

        Returns:
            ``(lse_row, e_row)`` of the ``q`` rows and ``(lse_col, e_col)`` of every ``k`` row,
            the latter over the rows of ``q`` only (``-inf`` / 0 when ``q`` is empty).
        """
        c, dt, dev = self.chunk, q.dtype, q.device
        nq, nk = q.shape[0], k.shape[0]
        lse_row = torch.empty(nq, dtype=dt, device=dev)
        e_row = torch.empty(nq, dtype=dt, device=dev)
        m_col = torch.full((nk,), -math.inf, dtype=dt, device=dev)
        s_col = torch.zeros(nk, dtype=dt, device=dev)
        w_col = torch.zeros(nk, dtype=dt, device=dev)
        buf = torch.empty((min(c, nq), min(c, nk)), dtype=dt, device=dev)
        for i in range(0, nq, c):
            qs = q[i : i + c] * s
            m = torch.full((qs.shape[0],), -math.inf, dtype=dt, device=dev)
            sr = torch.zeros(qs.shape[0], dtype=dt, device=dev)
            wr = torch.zeros(qs.shape[0], dtype=dt, device=dev)
            for j in range(0, nk, c):
                logits = qs @ k[j : j + c].T
                p = buf[: logits.shape[0], : logits.shape[1]]
                # rows: online log-sum-exp with the rescaled sums S and W
                m_new = torch.maximum(m, logits.amax(1))
                alpha = torch.exp(m - m_new)
                torch.sub(logits, m_new[:, None], out=p).exp_()
                sr = sr * alpha + p.sum(1)
                wr = wr * alpha + p.mul_(logits).sum(1)
                m = m_new
                # columns: the same over the rows of this process
                mc = m_col[j : j + c]
                mc_new = torch.maximum(mc, logits.amax(0))
                beta = torch.exp(mc - mc_new)
                torch.sub(logits, mc_new[None, :], out=p).exp_()
                s_col[j : j + c] = s_col[j : j + c] * beta + p.sum(0)
                w_col[j : j + c] = w_col[j : j + c] * beta + p.mul_(logits).sum(0)
                m_col[j : j + c] = mc_new
            lse_row[i : i + c] = m + torch.log(sr)
            e_row[i : i + c] = wr / sr
        lse_col = m_col + torch.log(s_col)
        e_col = torch.where(s_col > 0, w_col / s_col.clamp_min(torch.finfo(dt).tiny), 0.0)
        return lse_row, e_row, lse_col, e_col

    def _clip_grad_rect(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        s: torch.Tensor,
        offset: int,
        lse_q: torch.Tensor,
        lse_k: torch.Tensor,
        want_k: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``sum_j G_ij k_j`` for the ``q`` rows (global rows from ``offset``) and, with
        ``want_k``, ``sum_i G_ij q_i`` for every ``k`` row; ``G = P + Q - 2 I``."""
        c = self.chunk
        gq = torch.zeros_like(q)
        gk = torch.zeros_like(k) if want_k else None
        buf = torch.empty((min(c, q.shape[0]), min(c, k.shape[0])), dtype=q.dtype, device=q.device)
        for i in range(0, q.shape[0], c):
            qi = q[i : i + c]
            qs = qi * s
            for j in range(0, k.shape[0], c):
                kj = k[j : j + c]
                logits = qs @ kj.T
                g = buf[: logits.shape[0], : logits.shape[1]]
                torch.sub(logits, lse_q[i : i + c, None], out=g).exp_()
                g += logits.sub_(lse_k[None, j : j + c]).exp_()
                g.diagonal(offset + i - j).sub_(2.0)
                gq[i : i + c].addmm_(g, kj)
                if gk is not None:
                    gk[j : j + c].addmm_(g.T, qi)
        return gq, gk

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
        """``sum_j G_ij y_j`` for ``x`` rows ``rows`` and ``sum_i G_ij x_i`` for ``y`` rows
        ``rows``, from the full-batch ``lse_row`` and ``lse_col``."""
        a, b = rows
        if a == 0 and b == x.shape[0] and all(need):  # one process: one pass for both
            return self._clip_grad_rect(x, y, s, 0, lse_row, lse_col, True)
        gx = gy = None
        if need[0]:
            gx = self._clip_grad_rect(x[a:b], y, s, a, lse_row[a:b], lse_col, False)[0]
        if need[1]:
            gy = self._clip_grad_rect(y[a:b], x, s, a, lse_col[a:b], lse_row, False)[0]
        return gx, gy

    # SigLIP ----------------------------------------------------------------------------------
    def siglip_forward(
        self, q: torch.Tensor, k: torch.Tensor, s: torch.Tensor, b: torch.Tensor, offset: int
    ) -> torch.Tensor:
        """``[sum -log sigmoid(z l), sum w (l - b), sum w]`` over the ``q`` rows x all ``k``,
        with ``w = z sigmoid(-z l)``."""
        c = self.chunk
        out = torch.zeros(3, dtype=q.dtype, device=q.device)
        for i in range(0, q.shape[0], c):
            qs = q[i : i + c] * s
            for j in range(0, k.shape[0], c):
                dots = qs @ k[j : j + c].T
                v = torch.add(dots, b).neg_()  # z l with z = -1 ...
                v.diagonal(offset + i - j).neg_()  # ... and z = +1 for the positives
                out[0] -= F.logsigmoid(v).sum()
                w = torch.sigmoid(v.neg_()).neg_()  # -sigmoid(-z l) ...
                w.diagonal(offset + i - j).neg_()  # ... times -z: z sigmoid(-z l)
                out[1] += torch.vdot(w.view(-1), dots.view(-1))
                out[2] += w.sum()
        return out

    def _siglip_grad_rect(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        s: torch.Tensor,
        b: torch.Tensor,
        offset: int,
        want_k: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.chunk
        gq = torch.zeros_like(q)
        gk = torch.zeros_like(k) if want_k else None
        for i in range(0, q.shape[0], c):
            qi = q[i : i + c]
            qs = qi * s
            for j in range(0, k.shape[0], c):
                kj = k[j : j + c]
                logits = (qs @ kj.T).add_(b)
                # w = z sigmoid(-z l): -sigmoid(l) off the diagonal, sigmoid(-l) on it
                w = torch.sigmoid(logits).neg_()
                diag = w.diagonal(offset + i - j)
                diag.copy_(torch.sigmoid(-logits.diagonal(offset + i - j)))
                gq[i : i + c].addmm_(w, kj)
                if gk is not None:
                    gk[j : j + c].addmm_(w.T, qi)
        return gq, gk

    def siglip_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        s: torch.Tensor,
        b: torch.Tensor,
        rows: tuple[int, int],
        need: tuple[bool, bool],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``sum_j w_ij y_j`` for ``x`` rows ``rows`` and ``sum_i w_ij x_i`` for ``y`` rows
        ``rows``."""
        r0, r1 = rows
        if r0 == 0 and r1 == x.shape[0] and all(need):
            return self._siglip_grad_rect(x, y, s, b, 0, True)
        gx = gy = None
        if need[0]:
            gx = self._siglip_grad_rect(x[r0:r1], y, s, b, r0, False)[0]
        if need[1]:
            gy = self._siglip_grad_rect(y[r0:r1], x, s, b, r0, False)[0]
        return gx, gy


# -- collectives -----------------------------------------------------------------------------
def _combine_lse(lse: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine every process's partial column statistics: a distributed log-sum-exp."""
    import torch.distributed as dist

    m = lse.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    scaled = torch.exp(lse - m)  # 0 where this process saw no rows (lse = -inf)
    sums = torch.stack([scaled, torch.where(scaled > 0, scaled * e, 0.0)])
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return m + torch.log(sums[0]), sums[1] / sums[0]


def _gather_rows(t: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Concatenate a 1-D tensor of every process's rows (sizes may differ)."""
    import torch.distributed as dist

    width = max(shard.sizes)
    padded = torch.zeros(width, dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in shard.sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, shard.sizes)])


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# -- the autograd function -------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    kind: str
    backend: Any
    rows: tuple[int, int]
    shard: Shard | None


class _BlockwiseLoss(torch.autograd.Function):
    """Forward and backward of the blockwise losses (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        spec: _Spec,
    ) -> torch.Tensor:
        # fp16 / bf16 embeddings: statistics and the temperature in fp32
        cdt = torch.promote_types(image.dtype, torch.float32)
        x, y = image.detach(), text.detach()
        if spec.backend.upcast:
            x, y = x.to(cdt), y.to(cdt)
        # a single value of any shape ([], [1], [1, 1]): computed as a 0-d tensor, its gradient
        # returned in the parameter's own shape
        s = logit_scale.detach().to(cdt).reshape(()).exp()
        n = x.shape[0]
        a, b = spec.rows
        if spec.kind == "clip":
            lse_r, e_r, lse_c, e_c = spec.backend.clip_forward(x[a:b], y, s)
            lse_r, e_r, lse_c, e_c = (t.to(cdt) for t in (lse_r, e_r, lse_c, e_c))
            diag = s * (x[a:b].to(cdt) * y[a:b].to(cdt)).sum(1)
            if spec.shard is not None:
                lse_c, e_c = _combine_lse(lse_c, e_c)
                lse_all = _gather_rows(lse_r, spec.shard)
            else:
                lse_all = lse_r
            # this process's share of the loss and of dL/dt (its rows and its columns)
            parts = torch.stack(
                [
                    lse_r.sum() + lse_c[a:b].sum() - 2 * diag.sum(),
                    e_r.sum() + e_c[a:b].sum() - 2 * diag.sum(),
                ]
            )
            if spec.shard is not None:
                parts = _all_reduce_sum(parts)
            loss, d_t, d_b = parts[0] / (2 * n), parts[1] / (2 * n), None
            ctx.save_for_backward(x, y, s, lse_all, lse_c)
        else:
            bias = logit_bias.detach().to(cdt).reshape(())
            sums = spec.backend.siglip_forward(x[a:b], y, s, bias, a).to(cdt)
            if spec.shard is not None:
                sums = _all_reduce_sum(sums)
            loss, d_t, d_b = sums[0] / n, -sums[1] / n, -sums[2] / n
            ctx.save_for_backward(x, y, s, bias)
        ctx.input_dtype = image.dtype
        ctx.scale_dtype, ctx.scale_shape = logit_scale.dtype, logit_scale.shape
        ctx.bias_dtype = logit_bias.dtype if logit_bias is not None else None
        ctx.bias_shape = logit_bias.shape if logit_bias is not None else None
        ctx.spec = spec
        ctx.d_t, ctx.d_b = d_t, d_b
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        spec: _Spec = ctx.spec
        need = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
        gx = gy = None
        if any(need):
            n = ctx.saved_tensors[0].shape[0]
            if spec.kind == "clip":
                x, y, s, lse_row, lse_col = ctx.saved_tensors
                acc_x, acc_y = spec.backend.clip_backward(
                    x, y, s, spec.rows, lse_row, lse_col, need
                )
                coef = grad * s / (2 * n)
            else:
                x, y, s, bias = ctx.saved_tensors
                acc_x, acc_y = spec.backend.siglip_backward(x, y, s, bias, spec.rows, need)
                coef = -grad * s / n
            gx = _place(acc_x, coef, ctx.input_dtype, x, spec.rows) if need[0] else None
            gy = _place(acc_y, coef, ctx.input_dtype, y, spec.rows) if need[1] else None
        g_t = None
        if ctx.needs_input_grad[2]:
            g_t = (grad * ctx.d_t).to(ctx.scale_dtype).reshape(ctx.scale_shape)
        g_b = None
        if ctx.needs_input_grad[3] and ctx.d_b is not None:
            g_b = (grad * ctx.d_b).to(ctx.bias_dtype).reshape(ctx.bias_shape)
        return gx, gy, g_t, g_b, None


def _place(
    acc: torch.Tensor | None,
    coef: torch.Tensor,
    dtype: torch.dtype,
    like: torch.Tensor,
    rows: tuple[int, int],
) -> torch.Tensor:
    """Gradient of the whole gathered matrix: this process's rows, zeros elsewhere (constants)."""
    assert acc is not None
    a, b = rows
    g = (acc.to(coef.dtype) * coef).to(dtype)
    if a == 0 and b == like.shape[0]:
        return g
    out = torch.zeros(like.shape, dtype=dtype, device=like.device)
    out[a:b] = g
    return out


def _as_tensor(value: Any, name: str, image: torch.Tensor) -> torch.Tensor:
    """``logit_scale`` or ``logit_bias`` as a tensor: a Python (or NumPy) number becomes a
    constant of the loss's compute dtype on the embeddings' device, refused when it is not finite
    or when ``exp`` of a ``logit_scale`` overflows that dtype (every logit would be infinite and
    the loss NaN: the scale itself passed where its log is expected, as open_clip's ``ClipLoss``
    takes it)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ContrastiveInputError(
            f"{name} must be a tensor or a number, got {type(value).__name__} {value!r}"
        )
    cdt = torch.promote_types(image.dtype, torch.float32)
    v = float(value)
    if not math.isfinite(v):
        raise ContrastiveInputError(f"{name} must be finite, got {v}")
    if name == "logit_scale" and v > math.log(torch.finfo(cdt).max):
        raise ContrastiveInputError(
            f"logit_scale {v:g} is the log of the inverse temperature (logits are "
            f"exp(logit_scale) x . y) and exp({v:g}) overflows {cdt}; to scale the logits by "
            f"{v:g}, pass math.log({v:g})"
        )
    return torch.tensor(v, dtype=cdt, device=image.device)


def _check_inputs(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    kind: str,
    shard: Shard | None,
) -> tuple[int, int]:
    if kind not in ("clip", "siglip"):
        raise ContrastiveInputError(f"kind must be 'clip' or 'siglip', got {kind!r}")
    if image.ndim != 2 or text.shape != image.shape:
        raise ContrastiveInputError(
            f"image and text embeddings must both be [N, D] with the same shape, got "
            f"{tuple(image.shape)} and {tuple(text.shape)}"
        )
    if image.shape[0] < 1:
        raise ContrastiveInputError("the batch is empty; a contrastive loss needs pairs")
    if image.dtype != text.dtype or image.device != text.device:
        raise ContrastiveInputError(
            f"image and text embeddings differ in dtype or device ({image.dtype}, {image.device} "
            f"vs {text.dtype}, {text.device}); cast one to the other"
        )
    if logit_scale.numel() != 1:
        raise ContrastiveInputError(
            f"logit_scale must be a single value, got shape {tuple(logit_scale.shape)}"
        )
    if kind == "siglip" and (logit_bias is None or logit_bias.numel() != 1):
        raise ContrastiveInputError("the SigLIP loss needs a single-value logit_bias tensor")
    n = image.shape[0]
    if shard is None:
        return 0, n
    if not (0 <= shard.rank < len(shard.sizes)) or sum(shard.sizes) != n:
        raise ContrastiveInputError(
            f"shard (rank {shard.rank}, sizes {list(shard.sizes)}) does not describe the "
            f"{n} gathered rows; give this process's rank and every process's row count"
        )
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ContrastiveInputError(
            "a shard was given but no torch.distributed process group is initialised"
        )
    return shard.start, shard.stop


def blockwise_contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    *,
    kind: str = "clip",
    impl: str = "chunked",
    block_size: int | tuple[int, int, int] | None = None,
    shard: Shard | Sequence[Any] | None = None,
) -> torch.Tensor:
    """CLIP or SigLIP loss of matching rows, computed tile by tile (no ``N x N`` matrix).

    Equal, up to float rounding, to :class:`msclip.train.loss.ContrastiveLoss` with the same
    inputs, and differentiable with respect to ``image``, ``text``, ``logit_scale`` and
    ``logit_bias``.

    Args:
        image: ``[N, D]`` image embeddings (normalised) of the (gathered) batch.
        text: ``[N, D]`` text embeddings, row ``i`` describing image ``i``.
        logit_scale: log inverse temperature ``t`` (logits are ``exp(t) x . y``): a
            single-value tensor (of any shape; its gradient comes back in that shape), or a
            number, a constant (refused where ``exp(t)`` overflows: that is the scale, not its
            log). A tensor is not read on the host, so a huge one gives a NaN loss, as the
            plain loss does (training clamps it to ``log 100``).
        logit_bias: the SigLIP bias ``b`` (required for ``siglip``): a single-value tensor
            or a number (a constant).
        kind: ``clip`` or ``siglip``.
        impl: ``chunked`` (PyTorch, any device) or ``triton`` (fused kernels: CUDA tensors, or
            CPU tensors under ``TRITON_INTERPRET=1``).
        block_size: tile edge; default :data:`DEFAULT_CHUNK` for ``chunked``, chosen from
            ``D`` for ``triton`` (powers of two >= 16; a triple also sets the kernels' slices
            of ``D``, see :class:`msclip.cuda.contrastive_kernels.TritonBackend`).
        shard: ``Shard(rank, sizes)`` (or a ``(rank, sizes)`` pair) when ``image`` and ``text``
            were gathered over the default process group: this process computes its rows'
            share and the gradients of its rows (others get zeros: they are constants here),
            and every process returns the loss of the whole batch. Every process must call
            with its own shard.

    Returns:
        The loss, a 0-d float32 tensor (accumulated in float32 whatever the embeddings' dtype).

    Raises:
        ContrastiveInputError: Shapes, dtypes, devices or shard that do not fit; a number
            ``logit_scale`` or ``logit_bias`` that is not finite, or whose ``exp`` overflows.
        LossImplError: ``impl`` is not ``chunked`` or ``triton``.
        KernelUnavailableError: ``triton`` where the kernels cannot run.
    """
    if shard is not None and not isinstance(shard, Shard):
        rank, sizes = shard
        shard = Shard(int(rank), tuple(int(v) for v in sizes))
    logit_scale = _as_tensor(logit_scale, "logit_scale", image)
    if logit_bias is not None:
        logit_bias = _as_tensor(logit_bias, "logit_bias", image)
    rows = _check_inputs(image, text, logit_scale, logit_bias, kind, shard)
    if impl == "chunked":
        if isinstance(block_size, tuple):
            block_size = block_size[0]
        backend: _Backend = ChunkedBackend(DEFAULT_CHUNK if block_size is None else block_size)
    elif impl == "triton":
        check_device(image.device, "contrastive_kernels", "the Triton contrastive loss")
        from msclip.cuda.contrastive_kernels import TritonBackend

        if image.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ContrastiveInputError(
                f"the Triton loss takes float32, float16 or bfloat16 embeddings, got "
                f"{image.dtype}; cast them or use impl='chunked'"
            )
        backend = TritonBackend(image.shape[1], block_size)
    else:
        raise LossImplError(f"blockwise loss impl must be 'chunked' or 'triton', got {impl!r}")
    if kind == "clip":
        logit_bias = None
    spec = _Spec(kind, backend, rows, shard)
    return _BlockwiseLoss.apply(image, text, logit_scale, logit_bias, spec)
