"""Top-k inner-product search over stored embeddings: int8 coarse scan, exact re-rank.

Algorithm (a flat index with a quantised short-list stage and exact re-ranking, the scheme of
Jégou, Tavenard, Douze and Amsaleg, "Searching in one billion vectors: re-rank with source
coding", ICASSP 2011, with the scalar quantiser in place of product quantisation):

1. Quantised copy. Each dimension ``j`` is centred on its mid-range ``c_j`` and coded as
   ``round((x_j - c_j) / s_j)`` in int8 with ``s_j = (max_j - min_j) / 254`` (per-dimension
   uniform scalar quantisation, the "SQ8" code of faiss's ``ScalarQuantizer``). The centring is a
   constant shift of every score of a query by ``q . c``, so it changes no ranking, but it shrinks
   the values to code, and the per-dimension step copes with the few high-magnitude dimensions
   typical of CLIP embeddings. The copy takes a quarter of the float32 bytes and can be cached on
   disk next to the index.
2. Coarse scan. The query is multiplied by the steps (asymmetric distance computation: the
   query side stays unquantised as long as the kernel allows) and scored against all codes in
   chunks. The kernel is chosen by measuring (:mod:`msclip.index.calibrate`, once per CPU kind,
   cached in the index's search cache): ``torch.ops.aten._weight_int8pack_mm`` (a bandwidth-bound
   int8-weight GEMV with bf16 activations), ``torch._int_mm`` (int8 x int8 -> int32, VNNI on
   x86, with the query rounded to int8), the dynamic int8 linear layer of fbgemm or of oneDNN
   over prepacked codes, a float matmul over the codes, a bf16 copy of the rows, or the plain
   float32 rows, separately for one query and for batches. The ``candidates`` best approximate
   scores per query are kept by a running-threshold selection that only looks inside groups of
   32 rows whose maximum beats the current threshold, which avoids a full top-k over every
   score.
3. Re-rank. The candidates' float32 rows are read from the (memory-mapped) store and each
   query is scored in float64 against its own candidates; the score returned is that value
   rounded to float32, so a score does not depend on which path or which batch produced it.
   Results are sorted by
   :func:`msclip.retrieval.sort_top_k` (score descending, ties by lower id), the rule of every
   ranking in msclip.

``exact=True`` replaces step 2 by a float32 BLAS scan that keeps ``2k + 16`` candidates and then
certifies the result with the forward error bound of a floating-point dot product,
``|fl(q.x) - q.x| <= gamma_D * |q| * |x|`` with ``gamma_D = D u / (1 - D u)`` (Higham,
"Accuracy and Stability of Numerical Algorithms", 2nd ed., section 3.1): a query whose k-th score
is not provably above every discarded score is redone by a float64 scan. The exact path is the
reference the tests and the benchmark compare with.

Threads: the heavy kernels use torch's intra-op threads; the small bookkeeping operations between
them run with ``torch.set_num_threads(1)`` (restored right after), because on a small shared
machine a two-thread parallel region over 0.1 ms of work waited milliseconds for a descheduled
thread (ten times slower 100-query searches under load). The setting is process-wide in torch:
torch work running concurrently in another thread may briefly run on one thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from msclip.arrays import as_numpy
from msclip.cache import note_damaged, note_unwritable
from msclip.encode import single_thread
from msclip.errors import EmptyIndexError, invalid_rows
from msclip.hardware import is_auto_device
from msclip.index.calibrate import CACHE_FIX, COPY_KERNELS, regime
from msclip.index.store import (
    SEARCH_CACHE_DIR,
    DimensionMismatchError,
    IndexStore,
    InvalidEmbeddingsError,
)
from msclip.io import atomic_write, write_json
from msclip.io.writers import abandoned_temp
from msclip.retrieval import sort_top_k

__all__ = ["KERNELS", "EmptyIndexError", "SearchIndex", "SearchResult", "default_candidates"]

logger = logging.getLogger(__name__)

KERNELS = (
    "auto", "int8-gemv", "int8-gemm", "int8-fbgemm", "int8-onednn", "dequant", "bf16", "fp32"
)  # fmt: skip
# 2: a constant dimension's step is 0 (1.0 before, which spoiled the int8 query rounding)
CACHE_VERSION = 2
_CACHE_PREFIX = "sq8-"
# The int8 kernels of torch 2.x on x86 were seen to return wrong values or crash for a reduction
# length that is not a multiple of 32, so codes and queries are zero-padded to a multiple of 64.
_DIM_ALIGN = 64
_GROUP = 32  # rows per group of the running-threshold selection
_GEMV_CHUNK_ROWS = 1 << 20  # the GEMV has a per-call cost: few large calls
# int32 scores per GEMM chunk: few kernel calls (each a parallel region), yet within the L3 cache
_GEMM_CHUNK_SCORE_BYTES = 1 << 24
_BUILD_CHUNK_ROWS = 2048
# Rows per prepacked block of the packed kernels (fbgemm, oneDNN). Each call returns [Q, rows]
# float32 scores: at 65,536 rows 100 queries get 26 MB per call, which the allocator handed back
# and faulted in afresh on some calls (measured on Zen 4 with fbgemm: 100,000 page faults and
# 0.45 s per 100-query search over 10^6 rows, against none and 0.30 s at 32,768 rows); one query
# is as fast either way.
_PACKED_CHUNK_ROWS = 1 << 15
# Chunks of at least this many scores are selected on every intra-op thread (the small ones on
# one, see _serial_torch): 100 queries' running-threshold bookkeeping took ~50 ms of a search
# serially.
_PARALLEL_SELECT_SCORES = 1 << 20
_FLOAT_CHUNK_BYTES = 1 << 25
# Candidate rows gathered at once by the exact re-rank (float32 bytes).
_RERANK_GATHER_BYTES = 1 << 25
# Kernels of ``torch.ops.quantized.linear_dynamic`` over prepacked codes -> the quantised engine
# that packs them (None: torch's default, which packs for fbgemm on x86 and for QNNPACK on Arm).
# The engine is chosen when packing: a packed weight runs its own engine's kernel whatever
# ``torch.backends.quantized.engine`` says later. Measured on a 2-core Zen 4
# (AVX512-VNNI), 100 queries over 10^6 x 512 codes: oneDNN's product 243-294 ms against 292-331
# ms for fbgemm's, and fbgemm's faster for one query (22 against 31 ms); AVX2-only CPUs differ
# again, so the calibration measures both.
_PACKED_ENGINES: dict[str, str | None] = {"int8-fbgemm": None, "int8-onednn": "onednn"}
_ENGINE_LOCK = threading.Lock()
# The share of the available memory that a kernel's prepared copy of the index
# (calibrate.COPY_KERNELS: packed codes, bf16 rows) may take when the calibration picks it; above
# it the fastest kernel without a copy is used (a copy is the size of the codes or twice it:
# 0.5-1 GB per 10^6 x 512 rows).
_COPY_MEMORY_SHARE = 0.5


class SearchResult(NamedTuple):
    """Top-k result of a batch of queries.

    Attributes:
        scores: ``[Q, k]`` float32 inner products (cosine similarities for unit vectors),
            descending along each row.
        ids: ``[Q, k]`` int64 embedding ids (rows of the store), ties broken by lower id.
    """

    scores: np.ndarray
    ids: np.ndarray


def default_candidates(k: int) -> int:
    """Default short-list length per query for the quantised path: ``max(10 k, 100)``."""
    return max(10 * k, 100)


def _readonly_tensor(a: np.ndarray) -> torch.Tensor:
    """Wrap a (read-only, e.g. memory-mapped) array without copying; it is never written."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


@functools.cache
def _kernel_works(kernel: str) -> bool:
    """Probe an int8 kernel once on small data against an exact integer product."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (40, _DIM_ALIGN), generator=gen, dtype=torch.int8)
    q = torch.randint(-127, 128, (3, _DIM_ALIGN), generator=gen, dtype=torch.int8)
    ref = q.double() @ codes.double().T
    if kernel in ("dequant", "bf16", "fp32"):
        return True
    try:
        with torch.inference_mode():
            if kernel in _PACKED_ENGINES:
                packed = _int8_pack(codes, _PACKED_ENGINES[kernel])
                got = torch.ops.quantized.linear_dynamic(q.float(), packed, True).double()
                # the query is quantised on the fly (7 bits): close, not exact
                ok = bool(((got - ref).abs().max() <= 0.05 * ref.abs().max() + 1.0).item())
            elif kernel == "int8-gemv":
                ones = torch.ones(codes.shape[0], dtype=torch.bfloat16)
                got = torch.ops.aten._weight_int8pack_mm(q.bfloat16(), codes, ones).double()
                ok = bool(torch.allclose(got, ref, rtol=1e-2, atol=2.0))
            else:
                got = torch._int_mm(q, codes.T).double()
                ok = bool(torch.equal(got, ref))
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        logger.info("int8 kernel %s unavailable in this torch build: %s", kernel, exc)
        return False
    if not ok:
        logger.warning("int8 kernel %s returned wrong values in a self-test; not using it", kernel)
    return ok


def _int8_pack(codes: torch.Tensor, engine: str | None = None) -> Any:
    """Prepack int8 codes ``[rows, D]`` as the weight of the dynamic int8 linear layer of a
    quantised ``engine`` (e.g. ``onednn``; None: torch's default engine).

    Raises:
        RuntimeError: This torch build lacks the engine.
    """
    if engine is not None and engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this torch build has no quantised engine {engine!r}")
    with warnings.catch_warnings():  # quantised tensors announce their move to torchao
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        qweight = torch._make_per_tensor_quantized_tensor(codes.contiguous(), 1.0, 0)
        if engine is None:
            return torch.ops.quantized.linear_prepack(qweight, None)
        # the engine is a process-wide setting, read by the packing: set for it alone
        with _ENGINE_LOCK:
            before = torch.backends.quantized.engine
            torch.backends.quantized.engine = engine
            try:
                return torch.ops.quantized.linear_prepack(qweight, None)
            finally:
                torch.backends.quantized.engine = before


_SERIAL_BOOKKEEPING = True


@contextlib.contextmanager
def _serial_torch() -> Iterator[None]:
    """Run the enclosed small torch operations on one thread.

    On two shared cores a parallel region waits for its slowest thread, and a thread that has
    lost its core costs a scheduler time slice (milliseconds) for an operation that takes
    0.1 ms serially; the heavy kernels keep all threads. The setting is process-wide in torch,
    so it is restored at once.
    """
    with single_thread() if _SERIAL_BOOKKEEPING else contextlib.nullcontext():
        yield


def _select_top(
    chunks: Iterator[tuple[int, torch.Tensor]], n_queries: int, c: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``c`` highest scores per query over a stream of ``(first id, [Q, rows])`` chunks.

    A running per-query cut filters groups of ``_GROUP`` rows by their maximum; the groups that
    reach it are set aside, and their scores that still reach the cut are merged into the top
    ``c`` once enough have gathered (a merge raises the cut to the lowest kept score). The first
    cut is the first chunk's ``c``-th largest group maximum, which at least ``c`` of its scores
    reach. A score below the cut is below the final threshold too (the cut only rises, and it is
    never above the final threshold), so it is dropped without a trace; a score that reaches the
    cut and loses a merge is recorded for ties. Merging a few chunks' groups at once rather than
    each chunk's: a merge is some twenty small operations whatever its size, and after the first
    chunks few groups reach the cut (100 queries over 31 chunks of 10^6 rows: about 28 against 35
    ms of selection on a 2-core Zen 4).

    Returns:
        ``(ids [Q, c] int64, threshold [Q], scores [Q, c], tie_cut [Q] bool)``: unordered ids of
        the kept scores, the lowest kept score per query (every discarded score is at most this),
        the kept scores themselves, and whether a discarded score equals the threshold (rows
        tied at the cut were kept or dropped arbitrarily).
    """
    fill: float = -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min
    pool_v = torch.full((n_queries, c), fill, dtype=dtype)
    pool_i = torch.full((n_queries, c), -1, dtype=torch.int64)
    thr = torch.full((n_queries, 1), fill, dtype=dtype)
    cut = thr  # at most the final threshold: everything below it can go
    lost = torch.full((n_queries,), fill, dtype=dtype)  # the highest score a merge discarded
    # groups that reached the cut, not merged yet: (query [P], first row id [P], scores [P, G])
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    pending_scores = 0
    # a merge once the groups set aside hold as many scores as c groups per query would
    merge_at = n_queries * c * _GROUP
    first = True
    full = False  # every query's cut above the padding value (no padding can reach it)

    def merge() -> None:
        nonlocal pool_v, pool_i, thr, cut, lost, full, pending_scores
        several = len(pending) > 1
        qq, gid, vals = (torch.cat(p) for p in zip(*pending)) if several else pending[0]
        pending.clear()
        pending_scores = 0
        keep = vals >= cut.view(-1).index_select(0, qq)[:, None]
        if not full:
            keep &= vals > fill
        flat = keep.view(-1).nonzero()[:, 0]  # the scores that reach the cut, by query
        if flat.numel() == 0:
            return
        pe = flat // _GROUP
        eq = qq.index_select(0, pe)
        ev = vals.view(-1).index_select(0, flat)
        eid = gid.index_select(0, pe) + flat % _GROUP
        if several:  # each chunk's groups are by query, not those of several chunks
            order = torch.argsort(eq, stable=True)
            eq, ev, eid = eq[order], ev[order], eid[order]
        counts = torch.bincount(eq, minlength=n_queries)
        slot = torch.arange(eq.numel()) - (torch.cumsum(counts, 0) - counts)[eq]
        width = int(counts.max())
        new_v = torch.full((n_queries, width), fill, dtype=dtype)
        new_i = torch.full((n_queries, width), -1, dtype=torch.int64)
        new_v[eq, slot] = ev
        new_i[eq, slot] = eid
        all_v = torch.cat([pool_v, new_v], dim=1)
        all_i = torch.cat([pool_i, new_i], dim=1)
        pool_v, pick = torch.topk(all_v, c, dim=1, sorted=False)
        pool_i = torch.gather(all_i, 1, pick)
        thr = pool_v.amin(dim=1, keepdim=True)
        cut = torch.maximum(cut, thr)
        if not full:
            full = bool((cut > fill).all())
        lost = torch.maximum(lost, all_v.scatter(1, pick, fill).amax(dim=1))

    for start, scores in chunks:
        rows = scores.shape[1]
        if rows == 0:
            continue
        big = scores.numel() >= _PARALLEL_SELECT_SCORES
        with contextlib.nullcontext() if big else _serial_torch():
            n_groups = -(-rows // _GROUP)
            if n_groups * _GROUP != rows:
                scores = F.pad(scores, (0, n_groups * _GROUP - rows), value=fill)
            grouped = scores.view(n_queries, n_groups, _GROUP)
            group_max = grouped.amax(dim=2)
            # a NaN or +inf anywhere makes the largest maximum NaN or +inf: one reduction
            if dtype.is_floating_point and not bool(group_max.max() < math.inf):
                _refuse_rows(start, scores[:, :rows])
            if first and n_groups >= c:
                cut = torch.topk(group_max, c, dim=1, sorted=False).values.amin(1, keepdim=True)
                full = bool((cut > fill).all())
            first = False
            hit = group_max >= cut
            if not full:
                hit &= group_max > fill
            hits = hit.view(-1).nonzero()[:, 0]  # query * n_groups + group, by query
            if hits.numel() == 0:
                continue
            qq = hits // n_groups
            # the groups' scores are copied out: the chunk itself is not kept
            vals = grouped.reshape(-1, _GROUP).index_select(0, hits)  # [P, G]
            pending.append((qq, start + (hits - qq * n_groups) * _GROUP, vals))
            pending_scores += vals.numel()
            if pending_scores >= merge_at:
                merge()
    if pending:
        with _serial_torch():
            merge()
    tie_cut = (lost >= thr[:, 0]) & (lost > fill)
    return pool_i, thr[:, 0], pool_v, tie_cut


def _refuse_rows(start: int, scores: torch.Tensor) -> None:
    """Name the rows whose scores are NaN or infinite (rows of NaN or infinity: the queries are
    checked before the scan), so that they never rank first nor leave empty result slots."""
    bad = (torch.isnan(scores) | torch.isposinf(scores)).any(dim=0).nonzero()[:, 0] + start
    invalid_rows(bad.numpy())


def _max_squared_norm(start: int, chunk: np.ndarray) -> float:
    """The largest squared row norm of ``chunk`` (rows ``start`` on), naming its rows of NaN or
    infinity: memory-mapped rows are checked here, in passing (a NaN norm would pass ``max()``
    unseen)."""
    sq = float(np.einsum("ij,ij->i", chunk, chunk).max())  # NaN or inf where such a row is
    if not math.isfinite(sq):
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad.size:  # else finite rows whose squares overflow float32
            invalid_rows(bad + start)
    return sq


def _uncertified(scores: np.ndarray, bound: np.ndarray | None, k: int) -> np.ndarray:
    """Queries whose ``k``-th exact float32 score is not above ``bound`` (every unseen row's
    float64 score is at most ``bound``, hence its float32 rounding at most ``bound32``)."""
    if bound is None:
        return np.empty(0, dtype=np.int64)
    bound32 = np.nextafter(bound.astype(np.float32), np.float32(np.inf))
    return np.flatnonzero(~(bound32 < scores[:, k - 1]))


def _cut_through_top(
    approx: torch.Tensor,
    thr: torch.Tensor,
    tie_cut: torch.Tensor,
    exact: np.ndarray,
    kth: np.ndarray,
) -> np.ndarray:
    """Queries whose short-list may have cut through their top ``k``: rows tied at the
    short-list's threshold were discarded (``tie_cut``: which of them were kept is arbitrary)
    and a kept one at the threshold reaches the ``k``-th exact score."""
    at_cut = (approx <= thr[:, None]).numpy() & tie_cut.numpy()[:, None]
    return np.flatnonzero((at_cut & (exact >= kth[:, None])).any(axis=1))


def _residual(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of ``sqrt(1 - r^2)``, ``r`` the correlation of approximate and exact
    scores: the residual of the best affine fit relative to the spread of the exact scores."""
    out = []
    for a, e in zip(approx, exact):
        if a.std() == 0 or e.std() == 0:
            out.append(0.0 if np.allclose(a, a[0]) == np.allclose(e, e[0]) else 1.0)
            continue
        r = float(np.corrcoef(a, e)[0, 1])
        out.append(float(np.sqrt(max(0.0, 1.0 - r * r))))
    return float(np.mean(out)) if out else 0.0


def _unit_max(qs: torch.Tensor) -> torch.Tensor:
    """Each query divided by its largest magnitude. The packed kernels (fbgemm, oneDNN) quantise
    their input with one scale from the input's range, and the step-scaled queries are tiny
    (~1e-4): measured with fbgemm, their scores came out with a 40% error against 3% once scaled
    to 1. A positive factor per query changes no ranking."""
    return qs / qs.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)


def _int8_queries(q_np: np.ndarray) -> torch.Tensor:
    """Queries rounded to int8 with one scale per query, padded to 17 rows (``torch._int_mm``
    needs more than 16)."""
    scale = np.maximum(np.abs(q_np).max(axis=1, keepdims=True), 1e-30) / 127
    q_i8 = np.rint(q_np / scale).astype(np.int8)
    if q_i8.shape[0] <= 16:
        q_i8 = np.concatenate([q_i8, np.zeros((17 - q_i8.shape[0], q_i8.shape[1]), np.int8)])
    return torch.from_numpy(q_i8)


def _gamma(n: int, unit_roundoff: float) -> float:
    nu = n * unit_roundoff
    return nu / (1.0 - nu)


class SearchIndex:
    """Fast top-k search over a float32 embedding matrix (usually a store's memory map).

    Example:
        >>> index = SearchIndex.from_store(IndexStore.open("archive.index"))
        >>> scores, ids = index.search(text_embeddings, k=10)   # [Q, 10] each
        >>> store.metadata.loc[ids[0]]                          # rows of the first query's hits

    The quantised copy (``count * ceil(dim / 64) * 64`` bytes) is held in memory; the float32
    rows stay where they are (a memory map is read only for the candidates). The index is
    read-only after construction; build a new one for a grown store.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        *,
        quantize: bool = True,
        candidates: int | None = None,
        kernel: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        cache_key: str | None = None,
        device: str = "auto",
    ) -> None:
        """Prepare search over ``embeddings``, building (or loading) the quantised copy.

        Args:
            embeddings: ``[N, D]`` float32 matrix, e.g. :attr:`IndexStore.embeddings`; it must
                not change while the index is used.
            quantize: Build the int8 copy for the fast path; without it every search is exact.
            candidates: Short-list length per query for the quantised path; default
                :func:`default_candidates` of ``k``. Larger is slower and closer to exact.
            kernel: ``"auto"`` (chosen by measuring on this CPU, :mod:`msclip.index.calibrate`),
                or force ``"int8-gemv"`` (int8-weight GEMV), ``"int8-gemm"`` (int8 GEMM),
                ``"int8-fbgemm"`` (fbgemm dynamic int8 linear over prepacked codes),
                ``"int8-onednn"`` (the same layer of oneDNN),
                ``"dequant"`` (float matmul over the codes), ``"bf16"`` (a bf16 copy of the
                rows) or ``"fp32"`` (the float32 rows). Every kernel's candidates are re-ranked
                exactly.
            cache_dir: Directory to load the quantised copy from and save it to; None keeps it
                in memory only.
            cache_key: Identity of the embeddings' content, required with ``cache_dir``; a cache
                is used only for the same key, row count and dimension.
            device: Where to search: ``"auto"`` (a CUDA device when one is visible and the fused
                Triton kernel works there, else the CPU paths), ``"cpu"``, ``"cuda"`` or
                ``"cuda:<n>"``. On a GPU every search is exact (see :meth:`_search_fused`).

        Raises:
            InvalidEmbeddingsError: ``embeddings`` is not a 2-D float32 matrix, or has rows with
                NaN or infinity (an in-memory matrix is checked here, a memory map as its int8
                copy is built or, without one, as a search scans it).
            ValueError: Unknown ``kernel`` or ``device``, bad ``candidates``, or ``cache_dir``
                without key.
        """
        if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
            raise InvalidEmbeddingsError(
                "embeddings must be a 2-D numpy array [N, D] (e.g. IndexStore.embeddings), got "
                f"{type(embeddings).__name__} {getattr(embeddings, 'shape', '')}"
            )
        if embeddings.dtype != np.float32:
            raise InvalidEmbeddingsError(
                f"embeddings must be float32, got {embeddings.dtype}; convert with "
                "np.asarray(x, dtype=np.float32)"
            )
        if any(st < 0 for st in embeddings.strides):  # x[::-1]: torch takes no negative strides
            embeddings = np.ascontiguousarray(embeddings)
        if not isinstance(embeddings, np.memmap):
            # an index's memory-mapped rows were checked when written; a matrix given here is
            # checked now: one NaN row would spoil every search
            for s in range(0, embeddings.shape[0], _BUILD_CHUNK_ROWS * 32):
                chunk = embeddings[s : s + _BUILD_CHUNK_ROWS * 32]
                bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
                if bad.size:
                    invalid_rows(bad + s)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if candidates is not None and (
            isinstance(candidates, bool)
            or not isinstance(candidates, (int, np.integer))
            or candidates < 1
        ):
            raise ValueError(f"candidates must be a positive integer or None, got {candidates!r}")
        if cache_dir is not None and not cache_key:
            raise ValueError("cache_dir needs a cache_key naming the embeddings' content")
        if cache_key is not None and re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", str(cache_key)) is None:
            raise ValueError(
                f"cache_key {str(cache_key)!r} is part of the cache's file names: use 1 to 64 "
                "letters, digits, '.', '_' or '-' (e.g. a uuid4().hex)"
            )
        if cache_key is not None and set(str(cache_key)) == {"."}:
            raise ValueError(f"cache_key {str(cache_key)!r} is not a file-name part")
        self._emb = embeddings
        self.candidates = candidates
        self.kernel = kernel
        if is_auto_device(device):
            device = "auto"  # in any case, as create_model takes it
        if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(device))):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {device!r}")
        self.device = device
        self._fused: Any = None  # the GPU copy, made on the first search that uses it
        self._fused_unavailable = device == "cpu"
        self._codes: torch.Tensor | None = None
        self._centre: np.ndarray | None = None
        self._step: np.ndarray | None = None
        self._ones: torch.Tensor | None = None
        self._max_norm: float | None = None
        self._packed: dict[str, list[tuple[int, Any]]] = {}  # kernel -> prepacked int8 blocks
        self._bf16: torch.Tensor | None = None  # bf16 kernel's copy of the rows
        self._calibration: Any = None
        self._too_large: set[str] = set()  # kernels whose copy did not fit (warned once)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_hit = False
        self.build_seconds = 0.0
        if quantize and self.count:
            t0 = time.perf_counter()
            loaded = False
            if cache_dir is not None:
                loaded = self._load_cache(Path(cache_dir), str(cache_key))
            if not loaded:
                self._quantize()
                if cache_dir is not None:
                    self._save_cache(Path(cache_dir), str(cache_key))
            self.cache_hit = loaded
            self.build_seconds = time.perf_counter() - t0
            logger.info(
                "search index over %d x %d: int8 copy %s in %.2f s (%.1f MiB)",
                self.count,
                self.dim,
                "loaded" if loaded else "built",
                self.build_seconds,
                self.memory_bytes / 2**20,
            )

    @classmethod
    def from_store(
        cls,
        store: IndexStore,
        *,
        quantize: bool = True,
        cache: bool = True,
        candidates: int | None = None,
        kernel: str = "auto",
        device: str = "auto",
    ) -> SearchIndex:
        """Search a store's committed embeddings, caching the int8 copy in the index directory.

        The cache lives in ``<index>/search_cache/``, is keyed by the index id and row count (the
        committed rows of an index never change, so a grown index gets a new cache and the old one
        is deleted), and is skipped with a warning where the directory is read-only.

        Args:
            store: The opened index.
            quantize: See :class:`SearchIndex`.
            cache: Load and save the int8 copy under the index directory.
            candidates: See :class:`SearchIndex`.
            kernel: See :class:`SearchIndex`.
            device: See :class:`SearchIndex`.

        Returns:
            The search index.
        """
        return cls(
            store.embeddings,
            quantize=quantize,
            candidates=candidates,
            kernel=kernel,
            cache_dir=store.path / SEARCH_CACHE_DIR if cache else None,
            device=device,
            cache_key=store.index_id,
        )

    # -- properties -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of searchable embeddings."""
        return int(self._emb.shape[0])

    def __len__(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._emb.shape[1])

    @property
    def quantized(self) -> bool:
        """Whether the int8 copy exists (else every search is exact)."""
        return self._codes is not None

    @property
    def memory_bytes(self) -> int:
        """Bytes held in memory by the quantised copy, its parameters and the prepared copies of
        the chosen kernels (packed codes, the bf16 rows)."""
        if self._codes is None:
            return 0
        made = [*self._packed, *(["bf16"] if self._bf16 is not None else [])]
        extra = sum(self._copy_size(kernel) for kernel in made)
        return (
            self._codes.numel()
            + (self._ones.numel() * 2 if self._ones is not None else 0)
            + (8 * self.dim)
            + extra
        )

    # -- quantised copy ---------------------------------------------------------------------
    def _chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.count, rows):
            yield start, self._emb[start : start + rows]

    def _quantize(self) -> None:
        # numpy in small chunks: torch's reductions over dim 0 and its broadcast elementwise ops
        # were several times slower here, and small chunks keep the temporaries in cache
        d = self.dim
        lo = np.full(d, np.inf, dtype=np.float32)
        hi = np.full(d, -np.inf, dtype=np.float32)
        max_sq = 0.0
        for start, chunk in self._chunks(_BUILD_CHUNK_ROWS):
            np.minimum(lo, chunk.min(axis=0), out=lo)
            np.maximum(hi, chunk.max(axis=0), out=hi)
            max_sq = max(max_sq, _max_squared_norm(start, chunk))
        centre = ((lo.astype(np.float64) + hi) / 2).astype(np.float32)
        step = ((hi.astype(np.float64) - lo) / 254).astype(np.float32)
        # A constant dimension (e.g. one no row uses) codes as 0 and its step is 0: the query is
        # multiplied by the steps, and a made-up step there (1.0 against ~1e-3 elsewhere) became
        # the largest query value, so the per-query int8 rounding of int8-gemm and of the packed
        # kernels zeroed every other dimension (recall@10 fell to 0.75 for one unused dimension).
        step[~(step > 0)] = 0.0
        inv = np.divide(1.0, step, out=np.zeros_like(step), where=step > 0)
        padded = -(-d // _DIM_ALIGN) * _DIM_ALIGN
        codes = np.zeros((self.count, padded), dtype=np.int8)
        tmp = np.empty((_BUILD_CHUNK_ROWS, d), dtype=np.float32)
        for start, chunk in self._chunks(_BUILD_CHUNK_ROWS):
            t = tmp[: chunk.shape[0]]
            np.subtract(chunk, centre, out=t)
            np.multiply(t, inv, out=t)
            np.rint(t, out=t)
            np.clip(t, -127, 127, out=t)
            codes[start : start + chunk.shape[0], :d] = t
        self._set_codes(torch.from_numpy(codes), centre, step, math.sqrt(max_sq))

    def _set_codes(
        self, codes: torch.Tensor, centre: np.ndarray, step: np.ndarray, max_norm: float
    ) -> None:
        self._codes, self._centre, self._step = codes, centre, step
        self._max_norm = max_norm
        self._ones = torch.ones(self.count, dtype=torch.bfloat16)

    def _cache_name(self, key: str) -> str:
        return f"{_CACHE_PREFIX}v{CACHE_VERSION}-{key}-n{self.count}-d{self.dim}"

    def _load_cache(self, directory: Path, key: str) -> bool:
        name = self._cache_name(key)
        meta_path, codes_path = directory / f"{name}.json", directory / f"{name}.codes.npy"
        if not (meta_path.is_file() and codes_path.is_file()):
            return False
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
            codes = np.load(codes_path, allow_pickle=False)
            centre = np.asarray(meta["centre"], dtype=np.float32)
            step = np.asarray(meta["step"], dtype=np.float32)
            max_norm = float(meta["max_norm"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            note_damaged("search cache", meta_path, exc, "building it again")
            return False
        padded = -(-self.dim // _DIM_ALIGN) * _DIM_ALIGN
        if (
            meta.get("version") != CACHE_VERSION
            or codes.dtype != np.int8
            or codes.shape != (self.count, padded)
            or centre.shape != (self.dim,)
            or step.shape != (self.dim,)
            or not (np.isfinite(centre).all() and np.isfinite(step).all() and (step >= 0).all())
            or not (math.isfinite(max_norm) and max_norm >= 0)
        ):
            note_damaged(
                "search cache", meta_path, "not the index's int8 copy", "building it again"
            )
            return False
        self._set_codes(torch.from_numpy(codes), centre, step, max_norm)
        return True

    def _save_cache(self, directory: Path, key: str) -> None:
        assert self._codes is not None and self._centre is not None and self._step is not None
        name = self._cache_name(key)
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "count": self.count,
            "dim": self.dim,
            "max_norm": self._max_norm,
            "centre": self._centre.tolist(),
            "step": self._step.tolist(),
        }
        try:
            # codes first, the small JSON last: the JSON's presence marks a complete cache
            codes = self._codes.numpy()
            atomic_write(
                directory / f"{name}.codes.npy",
                lambda tmp: np.save(tmp, codes, allow_pickle=False),
                ".npy",
            )
            write_json(directory / f"{name}.json", meta, indent=None)
            for entry in directory.iterdir():  # caches of smaller (older) versions of the index
                if self._stale_cache(entry.name, key) or abandoned_temp(entry):
                    entry.unlink(missing_ok=True)
        except OSError as exc:
            note_unwritable(
                "the search cache",
                directory,
                exc,
                "the int8 copy stays in memory, built again by every opening of the index",
                CACHE_FIX,
            )

    def _stale_cache(self, name: str, key: str) -> bool:
        """Whether ``name`` is a search cache this one replaces: of an older cache version or of
        the same embeddings with fewer rows. A cache of more rows is kept: a search of an earlier
        snapshot (opened before a concurrent ``add`` committed) must not delete the cache of
        the grown index that a later search just wrote."""
        if not name.startswith(_CACHE_PREFIX) or name.startswith(self._cache_name(key) + "."):
            return False
        m = re.match(rf"{re.escape(_CACHE_PREFIX)}v(\d+)-(.+)-n(\d+)-d(\d+)\.", name)
        if m is None or int(m.group(1)) != CACHE_VERSION or m.group(2) != key:
            return True
        return int(m.group(3)) < self.count or int(m.group(4)) != self.dim

    # -- search -----------------------------------------------------------------------------
    def _as_queries(self, queries: Any) -> np.ndarray:
        try:
            arr = as_numpy(queries)
        except ValueError as exc:  # ragged lists
            raise InvalidEmbeddingsError(
                f"queries must be a [Q, {self.dim}] matrix or one [{self.dim}] vector: {exc}"
            ) from exc
        if arr.dtype.kind not in "fiu":
            raise InvalidEmbeddingsError(f"queries must be numeric, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise InvalidEmbeddingsError(
                f"queries must be [Q, {self.dim}] or [{self.dim}], got shape {arr.shape}"
            )
        if arr.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"queries have dimension {arr.shape[1]} but the index holds {self.dim}-d "
                "embeddings; encode the queries with the model that built the index"
            )
        wide = arr
        with np.errstate(over="ignore"):  # told below, in msclip's words
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        if np.isfinite(wide).all() and not np.isfinite(arr).all():
            raise InvalidEmbeddingsError(
                "queries hold values beyond float32's range (about 3.4e38); L2-normalise them"
            )
        if not arr.flags.writeable:
            # e.g. a row of the store's memory map as the query: torch warns on read-only arrays
            arr = arr.copy()
        if not np.isfinite(arr).all():
            raise InvalidEmbeddingsError("queries contain NaN or infinity")
        return arr

    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        exact: bool = False,
        candidates: int | None = None,
    ) -> SearchResult:
        """Return the ``k`` stored embeddings with the highest inner product per query.

        Args:
            queries: ``[Q, D]`` (or ``[D]``, treated as ``Q = 1``) float matrix, numpy or torch;
                L2-normalise it for cosine similarity.
            k: Results per query. If it exceeds the number of stored embeddings it is clamped
                to that number (noted in the log) and fewer columns are returned.
            exact: Scan all embeddings in float32 (with a float64 fallback that makes the result
                provably exact) instead of the int8 short-list.
            candidates: Short-list length for this call; see :class:`SearchIndex`.

        Returns:
            ``SearchResult(scores [Q, k] float32, ids [Q, k] int64)``, rows sorted by score
            descending, ties by lower id. Scores are recomputed from the float32 rows for the
            returned ids (in float64, rounded to float32) on every path.

        Raises:
            EmptyIndexError: The index holds no embeddings.
            DimensionMismatchError: Query dimension differs from the index's.
            InvalidEmbeddingsError: Queries are not a finite numeric matrix.
            ValueError: ``k`` or ``candidates`` is not a positive integer.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if candidates is not None and (
            isinstance(candidates, bool)
            or not isinstance(candidates, (int, np.integer))
            or candidates < 1
        ):
            raise ValueError(f"candidates must be a positive integer or None, got {candidates!r}")
        if self.count == 0:
            raise EmptyIndexError("the index holds no embeddings; add some before searching")
        q = self._as_queries(queries)
        k = int(k)
        if k > self.count:
            logger.info(
                "k=%d exceeds the %d stored embeddings; returning %d results per query",
                k,
                self.count,
                self.count,
            )
            k = self.count
        if q.shape[0] == 0:
            return SearchResult(np.empty((0, k), np.float32), np.empty((0, k), np.int64))
        fused = self._fused_searcher()
        if fused is not None:
            return self._search_fused(fused, q, k)
        with torch.inference_mode():
            if exact or self._codes is None:
                return self._search_exact(q, k)
            c = candidates or self.candidates or default_candidates(k)
            c = min(max(c, k), self.count)
            cand, approx, thr, tied = self._coarse(q, c)
            exact_c = np.empty(tuple(cand.shape), dtype=np.float32)
            scores, ids = self._rerank(q, cand, k, exact_c)
            if c < self.count:
                todo = _cut_through_top(approx, thr, tied, exact_c, scores[:, k - 1])
                if todo.size:
                    # rows tied with a kept one at the short-list's threshold may have been cut
                    # arbitrarily (e.g. many identical tiles): those queries are resolved exactly,
                    # so the result keeps the tie rule (lower ids first)
                    logger.debug("%d queries tie at the short-list threshold: exact", todo.size)
                    exact = self._search_exact(q[todo], k)
                    scores[todo], ids[todo] = exact.scores, exact.ids
        return SearchResult(scores, ids)

    def _pick_kernel(self, n_queries: int) -> str:
        if self.kernel != "auto":
            wanted = self.kernel
            if _kernel_works(wanted):
                return wanted
            logger.warning("kernel %s unavailable; using the dequantising fallback", wanted)
            return "dequant"
        cal = self.calibration
        kernel = cal.kernel(n_queries)
        need = self._copy_bytes(kernel)
        if need:
            from msclip.hardware import available_memory

            room = available_memory()
            if room is not None and need > _COPY_MEMORY_SHARE * room:
                fallback = cal.fastest_without(n_queries, COPY_KERNELS)
                if kernel not in self._too_large:
                    self._too_large.add(kernel)
                    logger.warning(
                        "search kernel %s (measured fastest here) needs a %.1f MiB copy of the "
                        "index, more than half of the %.1f MiB of memory available; using %s, "
                        "which needs none (SearchIndex(kernel=%r) forces it)", kernel, need / 2**20,
                        room / 2**20, fallback, kernel,
                    )  # fmt: skip
                kernel = fallback
        return kernel

    def _copy_bytes(self, kernel: str) -> int:
        """Bytes a kernel's prepared copy of the index would add now (0 once it exists)."""
        made = kernel in self._packed or (kernel == "bf16" and self._bf16 is not None)
        return 0 if made else self._copy_size(kernel)

    def _copy_size(self, kernel: str) -> int:
        """Bytes of a kernel's prepared copy of the index (0: the kernel makes none)."""
        if kernel in _PACKED_ENGINES and self._codes is not None:
            # a packed kernel keeps its own copy of the codes (and their offsets)
            return self._codes.numel() + 4 * self.count
        if kernel == "bf16":
            return 2 * self.count * self.dim
        return 0

    @property
    def calibration(self) -> Any:
        """The measured kernel choice of this CPU kind (:class:`msclip.index.calibrate
        .Calibration`), measured on the first search that needs it, or read from the cache."""
        if self._calibration is None:
            if self._codes is None:
                raise ValueError(
                    "this search index has no int8 copy (quantize=False, or no rows), so every "
                    "search is exact and no kernel is chosen"
                )
            from msclip.index.calibrate import SAMPLE_ROWS, load_or_calibrate

            self._calibration = load_or_calibrate(
                self._cache_dir, self._measure_kernels, scope=f"d{self.dim}",
                rows=min(self.count, SAMPLE_ROWS),
            )  # fmt: skip
        return self._calibration

    def _measure_kernels(self) -> Any:
        """Time every available kernel on a sample of this index's rows (see
        :mod:`msclip.index.calibrate`)."""
        from msclip.index.calibrate import CANDIDATES, SAMPLE_ROWS, calibrate

        assert self._codes is not None and self._step is not None
        rows = min(self.count, SAMPLE_ROWS)
        codes = self._codes[:rows]
        emb = np.ascontiguousarray(self._emb[:rows])
        ones = torch.ones(rows, dtype=torch.bfloat16)
        gen = np.random.default_rng(0)
        prepared: dict[str, Any] = {}

        def setup(kernel: str) -> float:
            t0 = time.perf_counter()
            if kernel in _PACKED_ENGINES:
                engine = _PACKED_ENGINES[kernel]
                prepared[kernel] = _int8_pack(codes, engine)
                spent = time.perf_counter() - t0
                # the calibration also scans the first eighth of the sample: its own block
                small = max(1, rows // 8)
                prepared[f"{kernel}:0:{small}"] = _int8_pack(codes[:small], engine)
                return spent
            if kernel == "bf16":
                prepared[kernel] = _readonly_tensor(emb).bfloat16()
            return time.perf_counter() - t0

        def run(kernel: str, n_q: int) -> Any:
            if not _kernel_works(kernel):
                return None
            q = gen.standard_normal((n_q, self.dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)

            # the product alone: the selection after it is the same for every kernel, and on one
            # sample-sized chunk it opens most groups (c of the first chunk's few), so it cost
            # 6-8 ms of 64 queries over 4,096 rows against 0.9 ms for the product and drowned the
            # slope between the two sizes (measured on a 2-core Zen 4)
            def scan(n_rows: int) -> None:
                with torch.inference_mode():
                    self._scan_block(kernel, q, 0, n_rows, codes, ones, emb, prepared)

            return scan

        spent: dict[str, float] = {}
        for kernel in CANDIDATES:  # prepare once, before measuring accuracy and speed
            try:
                spent[kernel] = setup(kernel)
            except (RuntimeError, NotImplementedError, AttributeError) as exc:
                logger.info("kernel %s unavailable: %s", kernel, exc)

        def prepared_time(kernel: str) -> float:
            if kernel not in spent:
                raise RuntimeError(f"kernel {kernel} could not be prepared")
            return spent[kernel]

        residual: dict[str, float] = {}
        q = gen.standard_normal((8, self.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = q.astype(np.float64) @ emb.astype(np.float64).T
        for kernel in CANDIDATES:
            if not _kernel_works(kernel) or (kernel in COPY_KERNELS and kernel not in prepared):
                continue
            with torch.inference_mode():
                approx, _ = self._scan_block(kernel, q, 0, rows, codes, ones, emb, prepared)
            residual[kernel] = _residual(approx.double().numpy(), exact)
        return calibrate(run, prepared_time, CANDIDATES, rows=rows, accuracy=residual)

    def _scan_block(
        self,
        kernel: str,
        q: np.ndarray,
        start: int,
        stop: int,
        codes: torch.Tensor,
        ones: torch.Tensor,
        emb: np.ndarray,
        prepared: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.dtype]:
        """Approximate scores ``[Q, stop - start]`` of one block with one kernel (calibration)."""
        q_np = np.zeros((q.shape[0], codes.shape[1]), dtype=np.float32)
        q_np[:, : self.dim] = q * self._step
        qs = torch.from_numpy(q_np)
        block = codes[start:stop]
        if kernel == "int8-gemv":
            return torch.ops.aten._weight_int8pack_mm(qs.bfloat16(), block, ones[start:stop]), (
                torch.bfloat16
            )
        if kernel == "int8-gemm":
            return torch._int_mm(_int8_queries(q_np), block.T)[: q.shape[0]], torch.int32
        if kernel in _PACKED_ENGINES:
            packed = prepared[kernel] if stop - start == codes.shape[0] else None
            if packed is None:  # a part of the sample: its own prepacked block
                key = f"{kernel}:{start}:{stop}"
                if key not in prepared:
                    prepared[key] = _int8_pack(block, _PACKED_ENGINES[kernel])
                packed = prepared[key]
            return torch.ops.quantized.linear_dynamic(_unit_max(qs), packed, True), torch.float32
        if kernel == "dequant":
            return qs @ block.float().T, torch.float32
        if kernel == "bf16":
            return torch.from_numpy(q).bfloat16() @ prepared[kernel][start:stop].T, torch.bfloat16
        return torch.from_numpy(q) @ _readonly_tensor(emb[start:stop]).T, torch.float32

    def _coarse(
        self, q: np.ndarray, c: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates by approximate (int8) score: ``(ids [Q, c], scores [Q, c], threshold [Q],
        tie_cut [Q])`` as :func:`_select_top` gives them (scores in the kernel's own units)."""
        assert self._codes is not None and self._step is not None and self._ones is not None
        codes, n_q = self._codes, q.shape[0]
        padded = codes.shape[1]
        # Asymmetric: scores against the codes are q . ((x - centre) / step) * step = q' . code.
        # The query side is prepared in numpy, which never starts a parallel region.
        q_np = np.zeros((n_q, padded), dtype=np.float32)
        q_np[:, : self.dim] = q * self._step
        qs = torch.from_numpy(q_np)
        kernel = self._pick_kernel(n_q)
        if kernel == "int8-gemv":
            with _serial_torch():
                q_bf = qs.bfloat16()

            def chunks() -> Iterator[tuple[int, torch.Tensor]]:
                for s in range(0, self.count, _GEMV_CHUNK_ROWS):
                    e = min(s + _GEMV_CHUNK_ROWS, self.count)
                    yield s, torch.ops.aten._weight_int8pack_mm(q_bf, codes[s:e], self._ones[s:e])

            ids, thr, vals, tied = _select_top(chunks(), n_q, c, torch.bfloat16)
        elif kernel == "int8-gemm":
            q_i8 = _int8_queries(q_np)
            rows = max(4096, min(1 << 18, _GEMM_CHUNK_SCORE_BYTES // (4 * n_q)))
            rows -= rows % _GROUP

            def chunks() -> Iterator[tuple[int, torch.Tensor]]:
                for s in range(0, self.count, rows):
                    yield s, torch._int_mm(q_i8, codes[s : s + rows].T)[:n_q]

            ids, thr, vals, tied = _select_top(chunks(), n_q, c, torch.int32)
        elif kernel in _PACKED_ENGINES:
            packed = self._packed_blocks(kernel)
            q_fb = _unit_max(qs)
            # a few queries' scores of many blocks are selected together: the selection has a
            # fixed cost per chunk (~70 us) that 31 blocks of one query over 10^6 rows paid each
            few = regime(n_q) == "few"
            merge = max(1, _GEMV_CHUNK_ROWS // _PACKED_CHUNK_ROWS) if few else 1

            def chunks() -> Iterator[tuple[int, torch.Tensor]]:
                for i in range(0, len(packed), merge):
                    group = packed[i : i + merge]
                    scores = [torch.ops.quantized.linear_dynamic(q_fb, b, True) for _, b in group]
                    yield group[0][0], scores[0] if len(scores) == 1 else torch.cat(scores, dim=1)

            ids, thr, vals, tied = _select_top(chunks(), n_q, c, torch.float32)
        elif kernel in ("bf16", "fp32"):
            ids, thr, vals, tied = self._coarse_float(q, c, kernel)
        else:
            rows = max(1024, _FLOAT_CHUNK_BYTES // (4 * padded))

            def chunks() -> Iterator[tuple[int, torch.Tensor]]:
                for s in range(0, self.count, rows):
                    yield s, qs @ codes[s : s + rows].float().T

            ids, thr, vals, tied = _select_top(chunks(), n_q, c, torch.float32)
        return ids, vals, thr, tied

    def _packed_blocks(self, kernel: str) -> list[tuple[int, Any]]:
        """The codes prepacked for a packed kernel (``int8-fbgemm``, ``int8-onednn``), in blocks
        (built on first use: a one-off cost)."""
        if kernel not in self._packed:
            assert self._codes is not None
            engine = _PACKED_ENGINES[kernel]
            t0 = time.perf_counter()
            self._packed[kernel] = [
                (s, _int8_pack(self._codes[s : s + _PACKED_CHUNK_ROWS], engine))
                for s in range(0, self.count, _PACKED_CHUNK_ROWS)
            ]
            logger.info("int8 codes packed for %s in %.2f s", kernel, time.perf_counter() - t0)
        return self._packed[kernel]

    def _coarse_float(
        self, q: np.ndarray, c: int, kernel: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates by a float scan (the float32 rows, or a bf16 copy of them): ``(ids,
        threshold, scores, tie_cut)`` as :func:`_select_top` gives them."""
        n_q = q.shape[0]
        if kernel == "bf16":
            if self._bf16 is None:
                t0 = time.perf_counter()
                self._bf16 = torch.cat(
                    [_readonly_tensor(np.asarray(ch)).bfloat16() for _, ch in self._chunks(1 << 16)]
                )
                logger.info("bf16 copy of the rows made in %.2f s", time.perf_counter() - t0)
            rows_bf16, q_t, dtype = self._bf16, torch.from_numpy(q).bfloat16(), torch.bfloat16
            rows = max(1024, _FLOAT_CHUNK_BYTES // (2 * self.dim))

            def chunks() -> Iterator[tuple[int, torch.Tensor]]:
                for s in range(0, self.count, rows):
                    yield s, q_t @ rows_bf16[s : s + rows].T

        else:
            q_t, dtype = torch.from_numpy(q), torch.float32
            rows = max(1024, _FLOAT_CHUNK_BYTES // (4 * self.dim))

            def chunks() -> Iterator[tuple[int, torch.Tensor]]:
                for s, chunk in self._chunks(rows):
                    yield s, q_t @ _readonly_tensor(np.asarray(chunk)).T

        return _select_top(chunks(), n_q, c, dtype)

    def _rerank(
        self,
        q: np.ndarray,
        cand: torch.Tensor | np.ndarray,
        k: int,
        all_scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 scores of the candidates, rounded to float32, best ``k`` per query
        (and every candidate's, into ``all_scores [Q, c]`` when given)."""
        cand = cand.numpy() if isinstance(cand, torch.Tensor) else np.asarray(cand)
        n_q, c = cand.shape
        out_s = np.empty((n_q, k), dtype=np.float32)
        out_i = np.empty((n_q, k), dtype=np.int64)
        q64 = torch.from_numpy(q).double()
        stored = _readonly_tensor(self._emb)  # a view: only the candidates' pages are read
        block = max(1, _RERANK_GATHER_BYTES // (c * self.dim * 4))
        for b in range(0, n_q, block):
            ids = cand[b : b + block]
            # one gather of the block's candidate rows, on every thread
            rows = stored.index_select(0, torch.from_numpy(ids).reshape(-1))
            rows = rows.view(len(ids), c, self.dim)
            full = torch.empty((len(ids), c), dtype=torch.float64)
            with _serial_torch():
                # each query against its own candidates only: a product of the block's queries
                # with the union of their candidates did len(ids) times the arithmetic
                for i in range(len(ids)):
                    torch.mv(rows[i].double(), q64[b + i], out=full[i])
            scores = full.numpy().astype(np.float32)
            if all_scores is not None:
                all_scores[b : b + len(ids)] = scores
            top = sort_top_k(scores, ids, k)
            out_s[b : b + len(ids)], out_i[b : b + len(ids)] = top
        return out_s, out_i

    def _max_row_norm(self) -> float:
        if self._max_norm is None:
            best = 0.0
            for start, chunk in self._chunks(_BUILD_CHUNK_ROWS):
                best = max(best, _max_squared_norm(start, chunk))
            self._max_norm = math.sqrt(best)
        return self._max_norm

    def _search_exact(self, q: np.ndarray, k: int) -> SearchResult:
        n_q, d = q.shape
        c = min(self.count, 2 * k + 16)
        rows = max(1024, _FLOAT_CHUNK_BYTES // (4 * d))
        q_t = torch.from_numpy(q)

        def chunks() -> Iterator[tuple[int, torch.Tensor]]:
            # torch, not numpy, for every product: numpy's BLAS threads and torch's OpenMP
            # threads slow each other down badly when they alternate on few cores
            for s, chunk in self._chunks(rows):
                yield s, q_t @ _readonly_tensor(np.asarray(chunk)).T

        cand, thr, _, _ = _select_top(chunks(), n_q, c, torch.float32)
        scores, ids = self._rerank(q, cand, k)
        if c < self.count:
            # Every discarded row has a float32 scan score <= thr, so its true score is at most
            # thr + eps; unless that bound is below the k-th kept score, redo the query in float64.
            eps = (_gamma(d, 2.0**-24) + _gamma(d, 2.0**-53)) * self._max_row_norm()
            eps = eps * np.linalg.norm(q.astype(np.float64), axis=1)
            bound = thr.numpy().astype(np.float64) + eps * (1 + 1e-9)
            bound32 = np.nextafter(bound.astype(np.float32), np.float32(np.inf))
            for i in np.flatnonzero(~(bound32 < scores[:, k - 1])):
                logger.debug("exact search: query %d not certified, rescanning in float64", i)
                scores[i], ids[i] = self._brute_force64(q[i], k)
        return SearchResult(scores, ids)

    def _brute_force64(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q64 = torch.from_numpy(q).double()
        rows = max(1024, _FLOAT_CHUNK_BYTES // (8 * self.dim))
        s32 = np.concatenate(
            [
                (_readonly_tensor(np.asarray(ch)).double() @ q64).float().numpy()
                for _, ch in self._chunks(rows)
            ]
        )
        kth = np.partition(s32, self.count - k)[self.count - k]
        idx = np.flatnonzero(s32 >= kth)
        s, i = sort_top_k(s32[idx][None, :], idx[None, :].astype(np.int64), k)
        return s[0], i[0]

    # -- GPU search (msclip.cuda) ------------------------------------------------------------
    def _fused_searcher(self) -> Any:
        """The device copy for the fused top-k kernel, or None to search on the CPU."""
        if self._fused is not None or self._fused_unavailable:
            return self._fused
        if self.device == "auto" and not torch.cuda.is_available():
            self._fused_unavailable = True
            return None
        from msclip.cuda.topk import FusedSearcher, SearchDeviceError, search_device

        dev = search_device(self.device)  # raises for an explicit device that cannot work
        if dev is None:
            self._fused_unavailable = True
            return None
        try:
            self._fused = FusedSearcher.for_index(self, dev)
        except SearchDeviceError as exc:
            if self.device != "auto":
                raise
            logger.info("%s; searching on the CPU", exc)
            self._fused_unavailable = True
        return self._fused

    def _search_fused(self, fused: Any, q: np.ndarray, k: int) -> SearchResult:
        """Exact top-k through the fused GPU scan (:mod:`msclip.cuda.topk`).

        The scan returns candidates and a bound on the exact score of every other row; the
        candidates are re-ranked as on the CPU paths, and a query whose ``k``-th score is not
        provably above the bound is retried with eight times more candidates, then scanned in
        float64.
        """
        c = min(self.count, 2 * k + 16)
        cand, bound = fused.candidates(q, c)
        scores, ids = self._rerank(q, cand, k)
        todo = _uncertified(scores, bound, k)
        if todo.size:
            logger.debug("fused search: %d queries not certified, longer lists", todo.size)
            cand, bound = fused.candidates(q[todo], 8 * c)
            s2, i2 = self._rerank(q[todo], cand, k)
            scores[todo], ids[todo] = s2, i2
            todo = todo[_uncertified(s2, bound, k)]
        for i in todo:
            logger.debug("fused search: query %d not certified, rescanning in float64", i)
            scores[i], ids[i] = self._brute_force64(q[i], k)
        return SearchResult(scores, ids)

    def __repr__(self) -> str:
        return (
            f"SearchIndex(count={self.count}, dim={self.dim}, quantized={self.quantized}, "
            f"kernel={self.kernel!r})"
        )
