"""Fused top-k inner-product search on a GPU, with the bound that makes its result exact.

Computing all scores and then ``topk`` writes and re-reads a ``Q x N`` score matrix (40 GB for
1,000 queries over 10^7 rows). The fused scan of :mod:`msclip.cuda.topk_kernels` keeps a running
top ``K`` per query in registers while it streams the stored rows once per block of queries,
in float16 / bfloat16 (or the int8 codes of :class:`msclip.index.search.SearchIndex`), and
writes only ``K`` keys per query and split; the splits are merged on the device. That is not
always the faster way: a plain cuBLAS product and ``torch.topk`` took 1.9 ms where the scan took
5.8 ms (100 queries over 10^6 rows, H200). So :class:`FusedSearcher` also finds candidates by
products and ``topk`` of float32 scores in large chunks (:func:`gemm_topk`), measures both and
keeps the faster; both give candidates under the same bound. (:func:`topk_reference`, the same
products with the kernel's keys and tie rule, is the kernel's reference; kept as the search's
other method it took 6.5 ms there, its keys and small chunks costing more than the product.)

**Keys and ties.** A score and its row id are packed into one int64 (:func:`pack_keys`): the
high 32 bits are the order-preserving integer image of the float32 score (``-0`` as ``+0``),
the low 32 bits ``2^32 - 1 - id``. Ordering keys descending is ordering by score descending,
then by lower id, the rule of :func:`msclip.retrieval.sort_top_k`, and every key is
distinct, so the merges need no tie handling.

**Exactness.** The scan's scores are those of rounded embeddings. :class:`FusedSearcher`
returns, with each query's candidates, an upper bound on the true score of every row it did not
return: the lowest kept scan score plus a forward error bound of the rounding, ``|q~ . x~ - q . x|
<= (2u + u^2) |q| |x| + gamma_D (1 + u)^2 |q| |x| + (subnormal terms)`` for a storage format of
unit roundoff ``u`` (``2^-11`` fp16, ``2^-8`` bf16) and an fp32 sum of ``D`` exact products
(``gamma_D = D u' / (1 - D u')``, Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed., section 3.1, with ``u' = 2^-23`` to cover accumulation that truncates), and, for int8
codes, ``sum_j |q_j| step_j / 2`` of the quantisation. The index re-ranks the candidates exactly
and accepts a query only when its ``k``-th exact score is above the bound; otherwise it asks for
more candidates, then scans that query exactly. So ids and scores equal the exact path's.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
from msclip.cuda.runtime import KernelUnavailableError, check_device, kernel_module

from msclip.errors import SearchDeviceError, invalid_rows

__all__ = [
    "GPU_SEARCH_ENV",
    "MAX_FUSED_K",
    "SEARCH_METHODS",
    "STORE_DTYPES",
    "FusedSearcher",
    "fused_topk",
    "gemm_topk",
    "pack_keys",
    "search_device",
    "topk_reference",
    "unpack_keys",
]

logger = logging.getLogger(__name__)

#: Largest per-query list the kernel keeps in registers; larger ``k`` use matmul + topk.
MAX_FUSED_K = 256
#: Storage formats of the device copy (``auto``: float16 when it fits, else int8 codes).
STORE_DTYPES = ("auto", "float16", "bfloat16", "int8")
#: How a :class:`FusedSearcher` finds candidates (``auto``: the faster, measured).
SEARCH_METHODS = ("auto", "fused", "gemm")
#: Environment variable of the method (``auto``, ``fused`` or ``gemm``).
GPU_SEARCH_ENV = "MSCLIP_GPU_SEARCH"
_FP16_MAX = 65504.0
_UPLOAD_ROWS = 1 << 16
_QUERY_BATCH = 1024
_LOW = (1 << 32) - 1


# -- keys ------------------------------------------------------------------------------------
def pack_keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as (score descending, id ascending) when sorted descending.

    Args:
        scores: float32 scores (finite).
        ids: int64 ids in ``[0, 2^32)``, broadcastable to ``scores``.
    """
    bits = scores.to(torch.float32).contiguous().view(torch.int32)
    key32 = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key32 = torch.where(scores == 0, torch.zeros_like(key32), key32)
    return (key32.to(torch.int64) << 32) | (_LOW - ids.to(torch.int64))


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (float32) and ids (int64) of :func:`pack_keys` keys."""
    key32 = (keys >> 32).to(torch.int32)
    bits = torch.where(key32 < 0, key32 ^ 0x7FFFFFFF, key32)
    return bits.contiguous().view(torch.float32), _LOW - (keys & _LOW)


def _merge(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.topk(keys.reshape(keys.shape[0], -1), k, dim=1, sorted=True).values
    return unpack_keys(top)


# Bytes of scores and keys of one chunk of :func:`topk_reference` (float32 scores and int64
# keys, 12 bytes per query and row): few launches over 10^6 rows, bounded memory beside them.
_SCORE_BYTES = 1 << 28
# Devices where torch.mm gives float32 products of float16 / bfloat16 inputs (``out_dtype``).
_MM_FP32_OUT: dict[str, bool] = {}


def _scores(q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """float32 sums of the exact products ``q @ part.T`` (int8 codes widened to the queries'
    dtype, which is exact): the arithmetic the error bound of the module docstring covers.

    On CUDA, cuBLAS's half-precision product with float32 output (``torch.mm(...,
    out_dtype=torch.float32)``), where torch has it; otherwise float32 inputs, or float64 when
    TF32 products are allowed (their 10-bit inputs would break the bound)."""
    if part.dtype == torch.int8:
        part = part.to(q.dtype)
    key = str(q.device)
    if q.device.type == "cuda" and _MM_FP32_OUT.get(key, True):
        try:
            out = torch.mm(q, part.T, out_dtype=torch.float32)
            _MM_FP32_OUT[key] = True
            return out
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            logger.info("torch.mm with float32 output unavailable on %s (%s)", key, exc)
            _MM_FP32_OUT[key] = False
    tf32 = q.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    dt = torch.float64 if tf32 else torch.float32
    return (q.to(dt) @ part.to(dt).T).float()


def topk_reference(
    queries: torch.Tensor, stored: torch.Tensor, k: int, *, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``matmul + topk`` in chunks of rows, same keys and tie rule as the kernel.

    Scores are float32 sums of the exact products (:func:`_scores`). The chunks hold at most
    :data:`_SCORE_BYTES` of scores and keys unless ``chunk_rows`` is given.

    Returns:
        ``(scores [Q, k] float32, ids [Q, k] int64)``, by score descending, then lower id.
    """
    if queries.shape[0] > _QUERY_BATCH:
        # the chunk's scores and keys grow with the queries: a batch at a time bounds the
        # memory beside the stored rows (as the fused kernel's launches do)
        parts = [topk_reference(queries[s : s + _QUERY_BATCH], stored, k, chunk_rows=chunk_rows)
                 for s in range(0, queries.shape[0], _QUERY_BATCH)]  # fmt: skip
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    k = min(k, stored.shape[0])
    if k <= 0 or queries.shape[0] == 0:  # no rows, no queries or none asked for: empty lists
        empty = torch.empty((queries.shape[0], max(k, 0)), device=queries.device)
        return empty, empty.long()
    rows = chunk_rows or max(k, _SCORE_BYTES // (12 * max(1, queries.shape[0])))
    best = None
    for start in range(0, stored.shape[0], rows):
        part = stored[start : start + rows]
        scores = _scores(queries, part)
        ids = torch.arange(start, start + part.shape[0], device=queries.device)
        keys = pack_keys(scores, ids)
        keys = torch.topk(keys, min(k, keys.shape[1]), dim=1).values
        best = keys if best is None else torch.cat([best, keys], dim=1)
    assert best is not None
    return _merge(best, k)


#: Bytes of float32 scores of one chunk of :func:`gemm_topk` (at most a quarter of the device's
#: free memory): one product and one ``topk`` for 100 queries over 2.6 x 10^6 rows.
_GEMM_BYTES = 1 << 30


def gemm_topk(
    queries: torch.Tensor, stored: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` scan scores and ids by products and ``topk`` of their float32 scores.

    The ``gemm`` method of :class:`FusedSearcher`: a chunk of rows is one product of float32
    sums of the exact products (:func:`_scores`, the arithmetic of the error bound) and one
    ``topk`` of its scores, the chunks' lists merged by another; chunks hold at most
    :data:`_GEMM_BYTES` of scores (a quarter of the free memory of a CUDA device). Unlike
    :func:`topk_reference` it packs no keys, so rows of equal scan scores come in any order;
    the candidates' bound does not depend on that order (every row left out scored at most the
    last one kept), and the exact re-rank orders ties by lower id.

    Returns:
        ``(scores [Q, k] float32, ids [Q, k] int64)``, by scan score descending.
    """
    n_q, n_x = queries.shape[0], stored.shape[0]
    k = min(k, n_x)
    if k <= 0:  # no rows (or none asked for): empty lists
        empty = torch.empty((n_q, 0), device=queries.device)
        return empty, empty.long()
    budget = _GEMM_BYTES
    if stored.device.type == "cuda":
        budget = min(budget, torch.cuda.mem_get_info(stored.device)[0] // 4)
    rows = max(1, k, budget // (4 * max(1, n_q)))
    vals = ids = None
    for start in range(0, n_x, rows):
        scores = _scores(queries, stored[start : start + rows])
        v, i = torch.topk(scores, min(k, scores.shape[1]), dim=1, sorted=True)
        del scores
        i = i + start
        if vals is None:
            vals, ids = v, i
        else:
            assert ids is not None
            v, i = torch.cat([vals, v], dim=1), torch.cat([ids, i], dim=1)
            vals, pos = torch.topk(v, k, dim=1, sorted=True)
            ids = torch.gather(i, 1, pos)
    assert vals is not None and ids is not None
    return vals, ids


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _splits(n_q: int, n_x: int, k: int, device: torch.device) -> int:
    """Programs per query block along the rows: enough to fill the GPU, few partial lists."""
    blocks = -(-n_q // 16)
    target = (
        4 * torch.cuda.get_device_properties(device).multi_processor_count
        if (device.type == "cuda")
        else 2
    )
    return max(1, min(-(-n_x // (4 * k)), -(-target // blocks)))


def fused_topk(
    queries: torch.Tensor, stored: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``queries @ stored.T`` by the fused kernel, ties by lower id.

    Args:
        queries: ``[Q, D]`` float16 / bfloat16 queries on the device of ``stored``.
        stored: ``[N, D]`` embeddings of the queries' dtype, or int8 codes (any strides; a
            view whose rows are not contiguous is copied once).
        k: results per query, at most :data:`MAX_FUSED_K` and ``N``.

    Returns:
        ``(scores [Q, k] float32, ids [Q, k] int64)`` on the device: the kernel's scores
        (fp32 sums of the stored precision), by score descending, then lower id.

    Raises:
        KernelUnavailableError: The kernel cannot run on this device.
        SearchDeviceError: Bad shapes, dtypes or ``k``.
    """
    check_device(stored.device, "topk_kernels", "the fused top-k search")
    if queries.ndim != 2 or stored.ndim != 2 or queries.shape[1] != stored.shape[1]:
        raise SearchDeviceError(
            f"queries [Q, D] and stored [N, D] must share D, got {tuple(queries.shape)} and "
            f"{tuple(stored.shape)}"
        )
    if queries.dtype not in (torch.float16, torch.bfloat16) or stored.dtype not in (
        queries.dtype,
        torch.int8,
    ):
        raise SearchDeviceError(
            f"the fused top-k takes float16 / bfloat16 queries and stored rows of the same dtype "
            f"(or int8 codes), got {queries.dtype} and {stored.dtype}"
        )
    if not 1 <= k <= min(MAX_FUSED_K, stored.shape[0]):
        raise SearchDeviceError(
            f"k must be in [1, min({MAX_FUSED_K}, {stored.shape[0]} rows)], got {k}"
        )
    kernels = kernel_module("topk_kernels")
    # The kernel steps along D by one element: a row-strided view (a column slice, a transpose)
    # would be read as other numbers. Rows may be strided (a slice of rows stays a view).
    if stored.stride(1) != 1:
        stored = stored.contiguous()
    if queries.shape[0] == 0:  # no queries: empty lists
        empty = torch.empty((0, k), device=stored.device)
        return empty, empty.long()
    kk = max(16, _pow2(k))
    scores, ids = [], []
    for a in range(0, queries.shape[0], _QUERY_BATCH):
        q = queries[a : a + _QUERY_BATCH].contiguous()
        splits = _splits(q.shape[0], stored.shape[0], kk, stored.device)
        keys = kernels.launch_topk(q, stored, kk, splits)
        s, i = _merge(keys, k)
        scores.append(s)
        ids.append(i)
    return torch.cat(scores), torch.cat(ids)


def _gamma(n: int, unit: float) -> float:
    nu = n * unit
    return nu / (1.0 - nu)


def search_device(device: str) -> torch.device | None:
    """The device ``SearchIndex(device=...)`` scans on, or None for the CPU paths.

    ``auto`` is the current CUDA device when one is visible and the kernel passes a self-test,
    else None; ``cpu`` is None; ``cuda`` / ``cuda:<n>`` must work.

    Raises:
        SearchDeviceError: Unknown device string.
        KernelUnavailableError: An explicit CUDA device where the kernel cannot run.
    """
    if device == "cpu":
        return None
    if device == "auto":
        if not torch.cuda.is_available():
            return None
        dev = torch.device("cuda", torch.cuda.current_device())
        try:
            check_device(dev, "topk_kernels", "the fused top-k search")
        except KernelUnavailableError as exc:
            logger.info("GPU search unavailable (%s); searching on the CPU", exc)
            return None
        return dev if _self_test(dev) else None
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SearchDeviceError(
            f"search device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {device!r}"
        ) from exc
    if dev.type != "cuda":
        raise SearchDeviceError(
            f"search device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {device!r}"
        )
    check_device(dev, "topk_kernels", f"search device {device!r}")
    if not _self_test(dev):
        raise KernelUnavailableError(
            f"the fused top-k kernel failed its self-test on {dev} (see the log); search with "
            "device='cpu'"
        )
    return dev


_SELF_TESTS: dict[str, bool] = {}


def _self_test(device: torch.device) -> bool:
    """Run the kernel once on small integer-valued data (exact in any order) vs the reference."""
    key = str(device)
    if key not in _SELF_TESTS:
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randint(-3, 4, (300, 40), generator=g).to(device, torch.float16)
            q = torch.randint(-3, 4, (5, 40), generator=g).to(device, torch.float16)
            got = fused_topk(q, x, 10)
            ref = topk_reference(q, x, 10)
            ok = torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])
            if not ok:
                logger.warning("fused top-k self-test on %s gave wrong ids; not using it", key)
        except Exception as exc:  # any compiler or driver failure: do not use
            logger.warning("fused top-k kernel does not work on %s (%s)", key, exc)
            ok = False
        _SELF_TESTS[key] = ok
    return _SELF_TESTS[key]


class FusedSearcher:
    """A device copy of stored embeddings and the fused scan over it, with error bounds.

    Args:
        embeddings: ``[N, D]`` float32 rows (e.g. a memory map); read once, in chunks.
        device: where to scan (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
        dtype: ``auto`` (float16, or int8 codes when float16 does not fit in free device
            memory), ``float16``, ``bfloat16`` or ``int8``.
        max_norm: largest row norm of ``embeddings`` (computed when not given).
        codes: int8 codes ``[N, D']`` (``D' >= D``, zero-padded) with their per-dimension
            ``centre`` and ``step`` (``x ~ centre + step * code``), needed for ``int8``.
        centre: see ``codes``.
        step: see ``codes``.
        method: how candidates are found: ``fused`` (the fused scan), ``gemm`` (chunked
            ``matmul + topk``, :func:`gemm_topk`) or ``auto`` (the default, or the value
            of :data:`GPU_SEARCH_ENV`): each is timed on the first search of 1, 2-16, 17-256 and
            more queries, and the faster kept for such searches. Both give candidates
            under the same error bound; on an H200 the fused scan was slower than cuBLAS's
            product and torch's ``topk`` for 100 queries over 10^6 rows.

    Raises:
        SearchDeviceError: Unknown or unusable ``dtype`` or ``method``, or a copy that does not
            fit.
        InvalidEmbeddingsError: rows with NaN or infinity.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        device: torch.device | str,
        dtype: str = "auto",
        *,
        max_norm: float | None = None,
        codes: torch.Tensor | None = None,
        centre: np.ndarray | None = None,
        step: np.ndarray | None = None,
        method: str | None = None,
    ) -> None:
        if dtype not in STORE_DTYPES:
            raise SearchDeviceError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        method = method or os.environ.get(GPU_SEARCH_ENV, "").strip().lower() or "auto"
        if method not in SEARCH_METHODS:
            raise SearchDeviceError(
                f"GPU search method must be one of {SEARCH_METHODS} (argument method or "
                f"{GPU_SEARCH_ENV}), got {method!r}"
            )
        self.method = method
        self._picked: dict[str, str] = {}  # queries' regime ("1", "2-16" ...) -> faster method
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # the current one, named
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.count, self.dim = int(embeddings.shape[0]), int(embeddings.shape[1])
        if max_norm is None:
            max_norm = 0.0
            for a in range(0, self.count, _UPLOAD_ROWS):
                ch = np.asarray(embeddings[a : a + _UPLOAD_ROWS], dtype=np.float64)
                sq = np.einsum("ij,ij->i", ch, ch)
                if not np.isfinite(sq).all():  # NaN would pass max() unseen
                    invalid_rows(np.flatnonzero(~np.isfinite(ch).all(axis=1)) + a)
                max_norm = max(max_norm, float(np.sqrt(sq.max())))
        self.max_norm = float(max_norm)
        self.dtype = self._choose(dtype, codes is not None)
        self._centre = self._step = None
        if self.dtype == "int8":
            if codes is None or centre is None or step is None:
                raise SearchDeviceError(
                    "store dtype 'int8' needs the index's int8 codes; build the SearchIndex with "
                    "quantize=True"
                )
            self._centre = np.asarray(centre, dtype=np.float64)
            self._step = np.asarray(step, dtype=np.float64)
            self.stored = codes.to(self.device)
        else:
            tdt = torch.float16 if self.dtype == "float16" else torch.bfloat16
            self.stored = torch.empty((self.count, self.dim), dtype=tdt, device=self.device)
            for a in range(0, self.count, _UPLOAD_ROWS):
                chunk = torch.from_numpy(np.ascontiguousarray(embeddings[a : a + _UPLOAD_ROWS]))
                self.stored[a : a + chunk.shape[0]] = chunk.to(self.device).to(tdt)
        logger.info(
            "fused search: %d x %d rows as %s on %s (%.1f MiB)",
            self.count,
            self.dim,
            self.dtype,
            self.device,
            self.stored.numel() * self.stored.element_size() / 2**20,
        )

    def _choose(self, dtype: str, have_codes: bool) -> str:
        half_bytes = self.count * self.dim * 2
        free = None
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        if dtype == "auto":
            if free is None or half_bytes <= 0.9 * free:
                return "float16" if self.max_norm < _FP16_MAX else "bfloat16"
            if have_codes and self.count * -(-self.dim // 64) * 64 <= 0.9 * free:
                return "int8"
            raise SearchDeviceError(
                f"{self.count} x {self.dim} embeddings do not fit in the {free / 2**30:.1f} GiB "
                f"free on {self.device} as float16 ({half_bytes / 2**30:.1f} GiB)"
                + ("" if have_codes else " and no int8 codes were given")
                + "; search on the CPU (device='cpu')"
            )
        if dtype == "float16" and self.max_norm >= _FP16_MAX:
            raise SearchDeviceError(
                f"embeddings with a row norm of {self.max_norm:.3g} overflow float16; use "
                "bfloat16 or int8"
            )
        return dtype

    # -- bounds ----------------------------------------------------------------------------------
    def _eps(self, q: np.ndarray) -> np.ndarray:
        """Per-query bound on |scan score (+ shift) - exact score| for any stored row."""
        d, big_x = self.dim, self.max_norm
        qn = np.linalg.norm(q.astype(np.float64), axis=1)
        g32 = _gamma(d, 2.0**-23)
        g64 = _gamma(d, 2.0**-53)
        if self.dtype == "int8":
            assert self._step is not None
            u, eta = 2.0**-11, 2.0**-24  # the query side is rounded to float16
            qs = np.abs(q.astype(np.float64)) * self._step[: self.dim]
            quant = 0.5005 * qs.sum(axis=1)  # |q . (x - centre - step * code)|
            rounding = 127.0 * ((u + g32 * (1 + u)) * qs.sum(axis=1) + 2 * d * eta)
            centre = g64 * qn * np.linalg.norm(self._centre)
            eps = quant + rounding + centre + g64 * qn * big_x
        else:
            u, eta = (2.0**-11, 2.0**-24) if self.dtype == "float16" else (2.0**-8, 2.0**-126)
            rel = 2 * u + u * u + g32 * (1 + u) ** 2 + g64
            eps = rel * qn * big_x + 2 * eta * math.sqrt(d) * (qn + big_x) + 2 * d * eta * eta
        return eps * (1 + 1e-6) + 1e-30

    def _queries(self, q: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Device queries for the scan and the per-query shift added to its scores."""
        if self.dtype == "int8":
            assert self._step is not None and self._centre is not None
            width = self.stored.shape[1]
            q_np = np.zeros((q.shape[0], width), dtype=np.float64)
            q_np[:, : self.dim] = q * self._step[: self.dim]
            shift = q.astype(np.float64) @ self._centre[: self.dim]
            return torch.from_numpy(q_np).to(self.device).to(torch.float16), shift
        tdt = self.stored.dtype
        return torch.from_numpy(q).to(self.device).to(tdt), np.zeros(q.shape[0])

    def candidates(self, q: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Candidate ids per query and a bound on the exact score of every other row.

        Args:
            q: ``[Q, D]`` float32 queries.
            c: minimum number of candidates (more are returned when the kernel keeps more).

        Returns:
            ``(ids [Q, c'] int64, bound [Q] float64)``: every row not in a query's ids has an
            exact inner product (and float64 value) at most ``bound``; ``bound`` is None when
            every row is a candidate.
        """
        c = min(max(1, c), self.count)
        qd, shift = self._queries(q)
        with torch.inference_mode():
            if c <= MAX_FUSED_K:
                keep = min(max(16, _pow2(c)), self.count)
                scores, ids = self._scan(qd, keep)
            else:  # a list longer than the kernel keeps in registers
                keep = c
                scores, ids = gemm_topk(qd, self.stored, keep)
        ids_np = ids.cpu().numpy()
        if keep >= self.count:
            return ids_np, None
        thr = scores[:, -1].double().cpu().numpy()
        bound = thr + shift + self._eps(q)
        # a query beyond the device format's range (float16 ends at 65504) was scanned as
        # infinity: its scan scores are +-inf or NaN and bound nothing, so it is not certified
        bound[~torch.isfinite(qd).all(dim=1).cpu().numpy()] = np.inf
        return ids_np, bound

    def _scan(self, qd: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``keep`` scan scores and ids by the method of ``method`` (see the class)."""
        methods = {"fused": fused_topk, "gemm": gemm_topk}
        method = self.method
        if method == "auto":
            n = qd.shape[0]
            regime = "1" if n == 1 else "2-16" if n <= 16 else "17-256" if n <= 256 else "257+"
            method = self._picked.get(regime, "")
            if not method:
                return self._measure(regime, methods, qd, keep)
            if method == "gemm":
                try:
                    return gemm_topk(qd, self.stored, keep)
                except torch.cuda.OutOfMemoryError:  # its chunk of scores did not fit: the scan
                    logger.info("GPU search: no memory for the product's scores; fused scan")
                    self._picked[regime] = "fused"
                    return fused_topk(qd, self.stored, keep)
        return methods[method](qd, self.stored, keep)

    def _measure(
        self, regime: str, methods: dict[str, Any], qd: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Time each method on this search (after an untimed run: compilation, allocations),
        keep the faster for the regime and return its result."""
        import time

        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda *_: None)
        times, results = {}, {}
        for name, run in methods.items():
            try:
                run(qd, self.stored, keep)
                sync(self.device)
                t0 = time.perf_counter()
                results[name] = run(qd, self.stored, keep)
                sync(self.device)
            except torch.cuda.OutOfMemoryError:  # the product's chunk of scores did not fit
                continue
            times[name] = time.perf_counter() - t0
        if not times:
            raise torch.cuda.OutOfMemoryError(f"no GPU memory left to search {self.device}")
        chosen = min(times, key=times.__getitem__)
        self._picked[regime] = chosen
        logger.info(
            "GPU search of %s queries: %s (%d over %d rows: %s)", regime, chosen, qd.shape[0],
            self.count, ", ".join(f"{n} {1e3 * t:.2f} ms" for n, t in times.items()),
        )  # fmt: skip
        return results[chosen]

    @classmethod
    def for_index(
        cls, index: Any, device: torch.device, dtype: str = "auto", method: str | None = None
    ) -> FusedSearcher:
        """The device copy of a :class:`msclip.index.search.SearchIndex`'s embeddings."""
        return cls(
            index._emb,
            device,
            dtype,
            method=method,
            max_norm=index._max_row_norm(),
            codes=index._codes,
            centre=index._centre,
            step=index._step,
        )
