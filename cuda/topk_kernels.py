"""Triton kernel of the fused top-k scan (see :mod:`msclip.cuda.topk`).

A program owns ``BLOCK_Q`` queries and one split of the stored rows. It forms the
``BLOCK_Q x K`` score tile of the next ``K`` rows in registers (``tl.dot`` of fp16 / bf16
slices with fp32 accumulation; int8 codes are widened to the query's dtype, which is exact),
packs every score with its row id into one int64 key (:func:`msclip.cuda.topk.pack_keys`:
larger key = higher score, then lower id) and, when some query's tile maximum beats the lowest
key it keeps, merges the tile into its running top ``K`` (kept sorted descending): the tile is
sorted ascending by a bitonic network (Batcher, AFIPS 1968), the elementwise maximum of the two
lists is the top ``K`` of their union as a bitonic sequence (the bitonic top-k of Shanbhag, Pirk
and Madden, SIGMOD 2018), and one bitonic merge sorts it. Each program writes its ``K`` best
keys per query; the host merges the splits. No score matrix is written.

The compare-and-swap steps view a ``[BLOCK_Q, K]`` block as ``[BLOCK_Q, K / 2J, 2, J]`` and take
the maximum and minimum over the pair axis, plain reductions that Triton compiles to register
shuffles and that its CPU interpreter runs as NumPy calls (its ``tl.sort`` uses an XOR
reduction that the interpreter evaluates element by element, far too slow for the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from msclip.cuda.runtime import launch_device

__all__ = ["INTERPRETED", "MIN_KEY", "launch_topk"]

#: Whether this module's kernels were decorated under Triton's CPU interpreter.
INTERPRETED = bool(triton.knobs.runtime.interpret)
#: Key of "no row" (below every real key).
MIN_KEY = -(2**63)


@triton.jit
def _merge_tile(best, keys, BQ: tl.constexpr, K: tl.constexpr, LOG_K: tl.constexpr):
    """Top ``K`` of ``best`` (rows sorted descending) and ``keys``, rows sorted descending.

    A compare-and-swap of the pairs ``(i, i + J)`` views the block as ``[BQ, K / 2J, 2, J]``:
    the pair's maximum goes left when its direction is descending. (Written out twice, not as
    a helper: the interpreter re-patches the language on every nested call.)
    """
    right = tl.reshape(tl.arange(0, 2), [1, 1, 2, 1])
    # 1. bitonic sort of the tile, ascending: blocks of 2^s alternate direction by bit s
    x = keys
    for s in tl.static_range(1, LOG_K + 1):
        for t in tl.static_range(0, s):
            # pairs (i, i + J), J = 2^(s-1-t), seen as [BQ, K / 2J, 2, J] (shapes written inline:
            # a named value would become a tensor, and shapes must be compile-time constants)
            h = tl.reshape(x, [BQ, K >> (s - t), 2, 1 << (s - 1 - t)])
            hi = tl.max(h, axis=2, keep_dims=True)
            lo = tl.min(h, axis=2, keep_dims=True)
            if s < LOG_K:
                desc = tl.reshape((tl.arange(0, K >> (s - t)) >> t) & 1, [1, K >> (s - t), 1, 1])
            else:
                desc = tl.zeros([1, K >> (s - t), 1, 1], tl.int32)
            x = tl.reshape(tl.where((right ^ desc) != 0, hi, lo), [BQ, K])
    # 2. the elementwise maximum of a descending and an ascending list is bitonic and holds the
    # K largest of the union; one bitonic merge sorts it descending
    x = tl.maximum(best, x)
    for t in tl.static_range(0, LOG_K):
        h = tl.reshape(x, [BQ, 1 << t, 2, K >> (t + 1)])
        hi = tl.max(h, axis=2, keep_dims=True)
        lo = tl.min(h, axis=2, keep_dims=True)
        x = tl.reshape(tl.where(right == 0, hi, lo), [BQ, K])
    return x


@triton.jit
def _topk_scan(
    q_ptr,
    x_ptr,
    out_ptr,
    n_q,
    n_x,
    dim,
    rows_per_split,
    stride_q,
    stride_x,
    stride_oq,
    stride_os,
    BLOCK_Q: tl.constexpr,
    K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WIDEN: tl.constexpr,
    LOG_K: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = qs < n_q
    offs_k = tl.arange(0, K)
    offs_d = tl.arange(0, BLOCK_D)
    lo = pid_s * rows_per_split
    hi = tl.minimum(lo + rows_per_split, n_x)
    best = tl.full([BLOCK_Q, K], -(2**63), tl.int64)
    for start in range(lo, hi, K):
        rows = start + offs_k
        r_ok = rows < hi
        acc = tl.zeros([BLOCK_Q, K], tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            d_ok = (d0 + offs_d) < dim
            q = tl.load(
                q_ptr + qs[:, None] * stride_q + (d0 + offs_d)[None, :],
                mask=q_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            x = tl.load(
                x_ptr + rows[:, None].to(tl.int64) * stride_x + (d0 + offs_d)[None, :],
                mask=r_ok[:, None] & d_ok[None, :],
                other=0,
            )
            if WIDEN:
                x = x.to(q.dtype)
            if DOT_F32:
                q, x = q.to(tl.float32), x.to(tl.float32)
            acc = tl.dot(q, tl.trans(x), acc)
        # order-preserving int32 image of the float score (+0 and -0 alike), then the id
        bits = acc.to(tl.int32, bitcast=True)
        key32 = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key32 = tl.where(acc == 0.0, 0, key32)
        low = tl.full([K], 4294967295, tl.int64) - rows.to(tl.int64)
        keys = (key32.to(tl.int64) << 32) | low[None, :]
        keys = tl.where(r_ok[None, :], keys, -(2**63))
        improves = tl.max(keys, 1) > tl.min(best, 1)
        if tl.sum(improves.to(tl.int32), 0) > 0:
            best = _merge_tile(best, keys, BLOCK_Q, K, LOG_K)
    tl.store(
        out_ptr + qs[:, None] * stride_oq + pid_s * stride_os + offs_k[None, :],
        best,
        mask=q_ok[:, None],
    )


def launch_topk(
    queries: torch.Tensor, stored: torch.Tensor, k: int, splits: int, block_d: int = 64
) -> torch.Tensor:
    """Per-split top-``k`` keys ``[Q, splits, k]`` of ``queries @ stored.T``.

    Args:
        queries: ``[Q, D]`` float16 / bfloat16 (contiguous).
        stored: ``[N, D]`` of the queries' dtype, or int8 codes (widened in the kernel), with
            unit stride along ``D``.
        k: keys kept per query and split: a power of two in [16, 256], also the row tile.
        splits: programs per query block along the rows.
        block_d: slice of ``D`` per ``tl.dot``.
    """
    n_q, d = queries.shape
    n_x = stored.shape[0]
    rows_per_split = triton.cdiv(triton.cdiv(n_x, splits), k) * k
    splits = triton.cdiv(n_x, rows_per_split)
    out = torch.empty((n_q, splits, k), dtype=torch.int64, device=queries.device)
    block_q = 16
    grid = (triton.cdiv(n_q, block_q), splits)
    with launch_device(queries.device):
        _topk_scan[grid](
            queries, stored, out, n_q, n_x, d, rows_per_split,
            queries.stride(0), stored.stride(0), out.stride(0), out.stride(1),
            BLOCK_Q=block_q, K=k, BLOCK_D=block_d, WIDEN=stored.dtype == torch.int8,
            LOG_K=k.bit_length() - 1, num_warps=4 if k <= 64 else 8,
            # Triton 3.8's interpreter multiplies bf16 tiles as raw bits: widen them (exact)
            DOT_F32=INTERPRETED and queries.dtype == torch.bfloat16,
        )  # fmt: skip
    return out
