"""Choose the coarse-scan kernel of :mod:`msclip.index.search` by measuring it on this machine.

The same kernel is fast on one CPU and useless on another: ``torch._int_mm`` runs int8 products at
hundreds of GOP/s with AVX512-VNNI and at about 1.4 GOP/s on an AVX2-only CPU, where fbgemm's
dynamic int8 linear layer reaches ~150 GOP/s; bf16 products are native on CPUs with AVX512_BF16
and emulated (hundreds of times slower) elsewhere. So the index times each candidate on a sample of
its own rows, once per CPU kind, and keeps the fastest:

=============  ===================================================================================
kernel         scan of one chunk of rows (``Q`` queries)
=============  ===================================================================================
int8-gemv      ``torch.ops.aten._weight_int8pack_mm``: int8 codes, bf16 query (a bandwidth-bound
               GEMV; few queries)
int8-gemm      ``torch._int_mm``: int8 codes, int8-rounded queries, int32 scores (VNNI)
int8-fbgemm    ``torch.ops.quantized.linear_dynamic`` over codes prepacked for torch's default
               quantised engine (fbgemm on x86, QNNPACK on Arm): the query quantised on the fly,
               float32 scores; the packing is a one-off preparation
int8-onednn    the same layer over codes prepacked for oneDNN (on Zen 4, the faster for batches of
               queries, the slower for one)
dequant        float32 matmul over the codes converted chunk by chunk
bf16           bf16 matmul over a bf16 copy of the float rows (one-off preparation)
fp32           float32 matmul over the stored float32 rows: the plain ``matmul + topk`` baseline
=============  ===================================================================================

Two regimes are measured, one query and a batch of :data:`BATCH_QUERIES` queries, because the
best kernel differs (a GEMV is bandwidth-bound, a GEMM compute-bound). Each candidate scores the
first :data:`SAMPLE_ROWS` rows (fewer for a small index) and an eighth of them, the best of a few
interleaved runs after a warm-up, and its cost per row is the slope between the two: the fixed
cost of a call (query conversion) does not count, as it does not grow with the index. The
product alone is timed: the selection of the best scores after it is the same for every kernel.
Preparation (packing, bf16 copy) is timed separately and not counted either, since it is paid
once per opened index, not per search. The plain fp32 scan is always a candidate, so the choice
is never slower than it on the measured sample. A candidate whose self-test fails (wrong
values, missing kernel) is left out, and so is one whose approximate scores are much less
accurate than those of the codes themselves (float products with the int8 codes): measured on
the sample as the residual of the best per-query affine fit of the kernel's scores to the exact
ones, relative to their spread (``sqrt(1 - r^2)``); the limit is
``max(4 x the codes' own residual, 0.05)``. That guards recall against a kernel whose input
quantisation misbehaves on some data.

A kernel that searches a prepared copy (int8-fbgemm, int8-onednn, bf16) is passed over at search
time when the copy would take more than half of the memory available
(:func:`msclip.hardware.available_memory`) for the fastest measured kernel without one
(:meth:`Calibration.fastest_without`).

The choice is cached per CPU kind (:meth:`msclip.hardware.CPUInfo.key`: CPU model, flags, torch
version, core count) and torch thread count (a bandwidth-bound GEMV and a compute-bound GEMM
rank differently on one thread than on all cores) in the index's ``search_cache/`` folder as
``calibration-<key>-t<threads>.json``; another machine, or a process with another thread count,
reading the same index directory calibrates again.
The whole measurement takes about 0.1-0.5 s on two cores.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msclip.cache import machine_key, note_damaged, note_unwritable

__all__ = [
    "BATCH_QUERIES",
    "CACHE_FIX",
    "CANDIDATES",
    "COPY_KERNELS",
    "REGIMES",
    "SAMPLE_ROWS",
    "Calibration",
    "accuracy_limit",
    "calibrate",
    "fastest",
    "load_or_calibrate",
    "one_copy",
    "regime",
]

logger = logging.getLogger(__name__)

#: Kernels the calibration may choose, in order of preference on equal times.
CANDIDATES = ("int8-gemv", "int8-gemm", "int8-fbgemm", "int8-onednn", "dequant", "bf16", "fp32")
#: Regime name -> number of queries timed.
BATCH_QUERIES = 64
REGIMES = {"few": 1, "many": BATCH_QUERIES}
#: Rows of the sample each kernel is timed on.
SAMPLE_ROWS = 32768
# 2: int8-onednn among the candidates (a version-1 choice never measured it)
CALIBRATION_VERSION = 2
_PREFIX = "calibration-"
# Relative tolerance under which a kernel is not worth switching to: a faster-measured kernel must
# beat the fp32 baseline by this much (timings of a few ms on a shared machine are noisy).
_MARGIN = 0.05
#: Kernels that search a copy of the index made on their first use (packed codes, bf16 rows).
COPY_KERNELS = ("int8-fbgemm", "int8-onednn", "bf16")
#: How much slower a regime accepts the other regime's copy kernel rather than a second copy.
COPY_MARGIN = 0.15
#: The fix named where an index's ``search_cache/`` cannot be written: it lives beside the index,
#: not under msclip's cache root, so ``$MSCLIP_CACHE_DIR`` does not move it.
CACHE_FIX = (
    "make the index folder writable (with free space), or search a copy kept on such storage"
)
# A kernel this many times slower than the best one on the warm-up is not timed further.
_SLOW = 8.0
# A kernel taking longer than this on the small sample is not timed on the full one.
_TOO_SLOW_S = 0.05
_ACC_FACTOR, _ACC_FLOOR = 4.0, 0.05


class _Outdated(Exception):
    """A cached calibration written by an older msclip (another candidate list)."""


#: ``timings[regime][kernel]`` -> seconds per row for that regime's query count.
Timings = dict[str, dict[str, float]]


@dataclass
class Calibration:
    """The kernel to use per regime on one CPU kind, and the measurements behind it.

    Attributes:
        choice: regime (``few``, ``many``) -> kernel name.
        timings: regime -> kernel -> seconds per stored row (for that regime's query count).
        setup: kernel -> one-off preparation seconds per stored row (packing, bf16 copy).
        cpu: the CPU description (:meth:`msclip.hardware.CPUInfo.to_dict`).
        cached: loaded from the cache rather than measured in this process.
        accuracy: kernel -> residual of its scores on the sample (see the module docstring).
        rows: rows of the sample the kernels were timed on (0: not recorded).
    """

    choice: dict[str, str]
    timings: Timings = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    accuracy: dict[str, float] = field(default_factory=dict)
    rows: int = 0

    def kernel(self, n_queries: int) -> str:
        """The kernel for a search of ``n_queries`` queries."""
        return self.choice[regime(n_queries)]

    def fastest_without(self, n_queries: int, excluded: Iterable[str]) -> str:
        """The fastest measured kernel for ``n_queries`` queries among those not ``excluded``
        (the fp32 baseline when none of them was measured)."""
        skip = set(excluded)
        timings = {k: v for k, v in self.timings.get(regime(n_queries), {}).items()
                   if k not in skip}  # fmt: skip
        return fastest(timings) if timings else "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "choice": self.choice,
            "timings": self.timings,
            "setup": self.setup,
            "cpu": self.cpu,
            "accuracy": self.accuracy,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        if d.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {d.get('version')!r}")
        choice = {str(k): str(v) for k, v in d["choice"].items()}
        if set(choice) != set(REGIMES) or not set(choice.values()) <= set(CANDIDATES):
            raise ValueError(f"bad calibration choice {choice}")
        rows = d.get("rows", 0)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"bad calibration sample size {rows!r}")
        return cls(choice, dict(d.get("timings", {})), dict(d.get("setup", {})),
                   dict(d.get("cpu", {})), cached=True,
                   accuracy=dict(d.get("accuracy", {})), rows=rows)  # fmt: skip


# up to this many queries a search counts as the "few" regime (a GEMV beats a GEMM there)
_FEW_MAX = 8


def regime(n_queries: int) -> str:
    """The regime (a key of :data:`REGIMES`) of a search of ``n_queries`` queries."""
    return "few" if n_queries <= _FEW_MAX else "many"


def fastest(timings: Mapping[str, float], baseline: str = "fp32") -> str:
    """The kernel with the smallest time; ``baseline`` unless another beats it by more than
    ``_MARGIN`` (ties go to the earlier entry of :data:`CANDIDATES`).

    Raises:
        ValueError: no timings.
    """
    usable = {k: float(v) for k, v in timings.items() if v == v and v > 0}  # drop NaN / zero
    if not usable:
        raise ValueError("no kernel could be timed")
    order = {k: i for i, k in enumerate(CANDIDATES)}
    best = min(usable, key=lambda k: (usable[k], order.get(k, len(order))))
    if baseline in usable and best != baseline and usable[best] > usable[baseline] * (1 - _MARGIN):
        return baseline
    return best


def one_copy(choice: dict[str, str], timings: Timings) -> dict[str, str]:
    """``choice`` with at most one kernel that searches a copy of the index (:data:`COPY_KERNELS`).

    Where the regimes chose two such kernels (fbgemm's packed codes for one query, oneDNN's for
    batches, as a Zen 4 measures), a search that uses both regimes would hold two copies of the
    size of the codes, or more; a regime gives its choice up for the other's copy when that
    kernel was measured at most :data:`COPY_MARGIN` slower there.
    """
    copies = [k for k in dict.fromkeys(choice.values()) if k in COPY_KERNELS]
    if len(copies) < 2:
        return choice
    order = {k: i for i, k in enumerate(CANDIDATES)}
    for keep in sorted(copies, key=lambda k: order.get(k, len(order))):
        unified = dict(choice)
        for regime, kernel in choice.items():
            if kernel in COPY_KERNELS and kernel != keep:
                t = timings.get(regime, {})
                if keep in t and t[keep] <= t[kernel] * (1 + COPY_MARGIN):
                    unified[regime] = keep
        if len({k for k in unified.values() if k in COPY_KERNELS}) < 2:
            return unified
    return choice


def accuracy_limit(residuals: Mapping[str, float]) -> float:
    """The largest residual a kernel may have: ``max(4 x the dequantising kernel's, 0.05)`` (the
    codes' own error; the smallest measured when that kernel is missing)."""
    ref = residuals.get("dequant")
    if ref is None:
        ref = min(residuals.values(), default=0.0)
    return max(_ACC_FACTOR * float(ref), _ACC_FLOOR)


def calibrate(
    run: Callable[[str, int], Callable[[int], Any] | None],
    setup: Callable[[str], float] | None = None,
    kernels: Iterable[str] = CANDIDATES,
    repeats: int = 3,
    rows: int = SAMPLE_ROWS,
    timer: Callable[[], float] = time.perf_counter,
    accuracy: Mapping[str, float] | None = None,
) -> Calibration:
    """Time every kernel in every regime and choose the fastest per regime.

    Args:
        run: ``run(kernel, n_queries)`` -> a function ``scan(n_rows)`` that scans the first
            ``n_rows`` rows of the sample once with that kernel (``None`` when the kernel is
            unavailable).
        setup: ``setup(kernel)`` -> seconds its one-off preparation took on the sample.
        kernels: the candidates.
        repeats: timed runs per kernel, regime and size (the best counts), after one warm-up.
        rows: sample rows.
        timer: clock (tests inject one).
        accuracy: kernel -> residual of its scores (see the module docstring); kernels above
            :func:`accuracy_limit` are not candidates.
    """
    from msclip.hardware import cpu_info

    kernels = list(kernels)
    if accuracy:
        limit = accuracy_limit(accuracy)
        dropped = [k for k in kernels if accuracy.get(k, 0.0) > limit]
        for k in dropped:
            logger.warning(
                "search kernel %s left out: its scores are too inaccurate on this index "
                "(residual %.3f > %.3f)", k, accuracy[k], limit,
            )  # fmt: skip
        kernels = [k for k in kernels if k not in dropped]
    prep: dict[str, float] = {}
    for k in kernels:
        if setup is not None:
            try:
                prep[k] = float(setup(k)) / rows
            except (RuntimeError, NotImplementedError, AttributeError) as exc:
                logger.info("kernel %s unavailable: %s", k, exc)
                prep[k] = float("nan")
    # two sizes: the slope between them is the cost per row without the fixed cost of a call
    large = rows
    small = max(1, rows // 8)
    timings: Timings = {}
    for regime, n_q in REGIMES.items():
        fns: dict[str, Callable[[int], Any]] = {}
        warm: dict[str, float] = {}
        est: dict[str, float] = {}
        for k in kernels:
            if prep.get(k, 0.0) != prep.get(k, 0.0):  # NaN: preparation failed
                continue
            fn = run(k, n_q)
            if fn is None:
                continue
            try:
                fn(small)  # first call: kernel generation (JIT), and the first failure if any
                t0 = timer()
                fn(small)
                warm[k] = timer() - t0
            except (RuntimeError, NotImplementedError, AttributeError) as exc:
                logger.info("kernel %s unavailable: %s", k, exc)
                continue
            fns[k] = fn
        first: dict[str, tuple[float, float]] = {}  # kernel -> (small, large) warm-up times
        for k, fn in fns.items():
            if k != "fp32" and warm[k] > _TOO_SLOW_S and warm[k] > _SLOW * min(warm.values()):
                est[k] = warm[k] / small  # hopeless here (an int8 GEMM without VNNI)
                continue
            t0 = timer()
            fn(large)
            first[k] = (warm[k], timer() - t0)
        if first:
            # kernels many times slower than the best on the warm-up are not timed again
            floor = min(t for _, t in first.values())
            timed = [k for k in first if first[k][1] <= _SLOW * floor or k == "fp32"]
            best = {k: first[k] for k in first}
            for _ in range(max(1, repeats) - 1):
                for k in timed:  # interleaved: load changes hit every kernel alike
                    t0 = timer()
                    fns[k](small)
                    t1 = timer()
                    fns[k](large)
                    t2 = timer()
                    best[k] = (min(best[k][0], t1 - t0), min(best[k][1], t2 - t1))
            for k, (t_small, t_large) in best.items():
                mean = t_large / large
                if large > small and t_large > t_small:
                    # the slope, but never below a quarter of the mean: a slope from two nearly
                    # equal noisy times is not evidence of a nearly free kernel
                    est[k] = max((t_large - t_small) / (large - small), 0.25 * mean)
                else:  # no growth at all (noise): the mean is the safe figure
                    est[k] = mean
        timings[regime] = est
    choice = one_copy({regime: fastest(t) for regime, t in timings.items()}, timings)
    cal = Calibration(choice, timings, {k: v for k, v in prep.items() if v == v},
                      cpu_info().to_dict(), accuracy=dict(accuracy or {}), rows=rows)  # fmt: skip
    logger.info("search kernels measured: %s", _describe(cal))
    return cal


def _describe(cal: Calibration) -> str:
    parts = []
    for regime, t in cal.timings.items():
        shown = ", ".join(f"{k} {v * 1e9:.2f}" for k, v in sorted(t.items(), key=lambda x: x[1]))
        parts.append(f"{regime} ({REGIMES[regime]} queries, ns/row): {shown} -> "
                     f"{cal.choice[regime]}")  # fmt: skip
    return "; ".join(parts)


def cache_path(directory: Path, key: str | None = None) -> Path:
    """``<directory>/calibration-<machine key>.json`` (:func:`msclip.cache.machine_key`)."""
    return directory / f"{_PREFIX}{key or machine_key()}.json"


_MEMORY: dict[str, Calibration] = {}


def load_or_calibrate(
    directory: Path | None,
    measure: Callable[[], Calibration],
    key: str | None = None,
    scope: str = "",
    rows: int = 0,
) -> Calibration:
    """The calibration of this CPU kind: from ``directory`` (or this process's memory) when there,
    else measured with ``measure()`` and saved (a read-only directory keeps it in memory only).
    A calibration timed on fewer than half of the ``rows`` the index would sample now (it was
    measured when the index was small: fixed costs then hide the cost per row) is measured again.

    Args:
        directory: the index's search cache folder (``None``: in memory only).
        measure: runs :func:`calibrate`.
        key: CPU kind and thread count (default :func:`msclip.cache.machine_key`).
        scope: what else the choice depends on, for the in-memory cache of indexes without a
            folder (the embedding dimension).
        rows: the rows the index would sample now (``min(count, SAMPLE_ROWS)``).
    """
    key = key or machine_key()
    mem_key = f"{directory}|{key}|{scope}"
    hit = _MEMORY.get(mem_key)
    if hit is not None and 2 * hit.rows >= rows:
        return hit
    path = cache_path(directory, key) if directory is not None else None
    if hit is None and path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            version = saved.get("version") if isinstance(saved, dict) else None
            if isinstance(version, int) and version < CALIBRATION_VERSION:
                # an older msclip's measurement, of fewer candidates: not damaged, just outdated
                raise _Outdated(f"calibration version {version}")
            cal = Calibration.from_dict(saved)
            if 2 * cal.rows >= rows:
                _MEMORY[mem_key] = cal
                return cal
            logger.info("search calibration %s was timed on %d rows; measuring again", path,
                        cal.rows)  # fmt: skip
        except _Outdated as exc:
            logger.info("search calibration %s is from an older msclip (%s); measuring again", path,
                        exc)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            note_damaged("search calibration", path, exc)
    cal = measure()
    _MEMORY[mem_key] = cal
    if path is not None:
        try:
            from msclip.io import write_json

            write_json(path, cal.to_dict(), indent=1)
        except OSError as exc:
            note_unwritable(
                "the search calibration",
                path.parent,
                exc,
                "the kernel choice is measured again by every process that searches the index",
                CACHE_FIX,
            )
    return cal
