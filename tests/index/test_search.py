"""Tests of msclip.index.search: exactness against brute force, ties, clamping, errors, cache."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msclip.index import (
    DimensionMismatchError,
    EmptyIndexError,
    IndexStore,
    IndexWriter,
    InvalidEmbeddingsError,
    SearchIndex,
)
from msclip.index.search import KERNELS

N, DIM = 2000, 64
MODEL = {"name": "test-model"}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def brute_force(emb: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 scores rounded to float32, sorted by score then lower id."""
    s32 = (q.astype(np.float64) @ emb.astype(np.float64).T).astype(np.float32)
    ids = np.broadcast_to(np.arange(emb.shape[0]), s32.shape)
    order = np.lexsort((ids, -s32), axis=1)[:, :k]
    return np.take_along_axis(s32, order, 1), order.astype(np.int64)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    centres = unit(rng.standard_normal((40, DIM)))
    emb = unit(centres[rng.integers(0, 40, N)] + 0.4 * rng.standard_normal((N, DIM)) / np.sqrt(DIM))
    emb[[900, 1500]] = emb[5]  # exact duplicates: tied scores for every query
    near = unit(emb[[5, 17, 640, 1999]] + 0.05 * rng.standard_normal((4, DIM)))
    queries = np.concatenate([near, unit(rng.standard_normal((5, DIM)))])
    return emb, queries


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data) -> IndexStore:
    emb, _ = data
    path = tmp_path_factory.mktemp("search") / "tiles.index"
    with IndexWriter.open_or_create(path, DIM, MODEL, commit_rows=700) as writer:
        for s in range(0, N, 250):
            writer.add(emb[s : s + 250], {"i": list(range(s, s + 250))}, source=f"scene{s}")
    return IndexStore.open(path)


def assert_matches(result, ref) -> None:
    scores, ids = result
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref[1])
    np.testing.assert_allclose(scores, ref[0], rtol=0, atol=1e-7)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_queries", [1, 9])
def test_search_equals_brute_force(store, data, kernel: str, n_queries: int) -> None:
    emb, queries = data
    q = queries[:n_queries]
    index = SearchIndex.from_store(store, kernel=kernel, cache=False)
    ref = brute_force(emb, q, 10)
    assert_matches(index.search(q, 10), ref)
    assert_matches(index.search(q, 10, exact=True), ref)
    assert_matches(index.search(q, 37, candidates=300), brute_force(emb, q, 37))


@pytest.mark.parametrize("kernel", ["int8-fbgemm", "int8-onednn", "int8-gemm", "fp32"])
def test_large_chunks_selected_on_every_thread_give_the_same_result(
    store, data, kernel: str, monkeypatch
) -> None:
    """Chunks of many scores (many queries) are selected with all intra-op threads, the small
    ones on one: both give the brute-force result, ties included."""
    emb, queries = data
    q = np.concatenate([queries, emb[[5, 1500]]])  # rows 5, 900, 1500 tie for the last two
    index = SearchIndex.from_store(store, kernel=kernel, cache=False)
    serial = index.search(q, 3, candidates=3)  # a short-list as short as k: approximate
    monkeypatch.setattr("msclip.index.search._PARALLEL_SELECT_SCORES", 1)
    assert_matches(index.search(q, 10), brute_force(emb, q, 10))
    assert_matches(index.search(q, 3, candidates=3), serial)


def test_rerank_in_several_gathers_gives_float64_scores_of_each_querys_candidates(
    store, data, monkeypatch
) -> None:
    """The exact re-rank gathers the candidates of a few queries at a time and scores each query
    against its own: every block, the last one short, gives the brute-force result, scores equal
    to the float64 products rounded to float32 (not merely close)."""
    emb, queries = data
    q = np.concatenate([queries, emb[[5, 1500, 33]]])  # 12 queries, ties among rows 5/900/1500
    index = SearchIndex.from_store(store, cache=False)
    c = 40
    monkeypatch.setattr("msclip.index.search._RERANK_GATHER_BYTES", 5 * c * DIM * 4)  # 5 a block
    for exact in (False, True):
        scores, ids = index.search(q, 10, exact=exact, candidates=c)
        ref = brute_force(emb, q, 10)
        np.testing.assert_array_equal(ids, ref[1])
        np.testing.assert_array_equal(scores, ref[0])
    rng = np.random.default_rng(3)
    cand = rng.choice(N, size=(q.shape[0], c), replace=False)  # candidates shared by no query
    every = np.empty(cand.shape, np.float32)
    top_s, top_i = index._rerank(q, cand, 4, every)
    want = np.einsum("qd,qcd->qc", q.astype(np.float64), emb[cand].astype(np.float64))
    np.testing.assert_array_equal(every, want.astype(np.float32))
    order = np.lexsort((cand, -every), axis=1)[:, :4]
    np.testing.assert_array_equal(top_i, np.take_along_axis(cand, order, 1))
    np.testing.assert_array_equal(top_s, np.take_along_axis(every, order, 1))


def test_ties_are_broken_by_lower_id(store, data) -> None:
    emb, _ = data
    index = SearchIndex.from_store(store, cache=False)
    for exact in (False, True):
        scores, ids = index.search(emb[1500], 3, exact=exact)
        assert ids.tolist() == [[5, 900, 1500]]
        assert scores[0, 0] == scores[0, 1] == scores[0, 2]


def test_exact_path_falls_back_when_the_scan_cannot_decide(tmp_path: Path) -> None:
    # rows differing by about one float32 ulp: the float32 scan cannot rank them reliably,
    # so the certificate fails and the float64 rescan must produce the reference order
    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal(DIM))
    emb = np.repeat(base[None, :], 500, axis=0)
    emb += rng.integers(-2, 3, emb.shape).astype(np.float32) * np.spacing(np.abs(emb))
    q = unit(rng.standard_normal((3, DIM)))
    index = SearchIndex(emb, quantize=False)
    assert_matches(index.search(q, 5), brute_force(emb, q, 5))


def test_dimension_not_a_multiple_of_64(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    emb = unit(rng.standard_normal((700, 100)))
    q = unit(rng.standard_normal((6, 100)))
    for kernel in ("int8-gemv", "int8-gemm", "dequant"):
        index = SearchIndex(emb, kernel=kernel)
        assert_matches(index.search(q, 8), brute_force(emb, q, 8))


def test_quantized_copy_is_small(store) -> None:
    index = SearchIndex.from_store(store, cache=False)
    assert index.quantized and index.memory_bytes < N * DIM * 4 / 3
    assert not SearchIndex.from_store(store, quantize=False).quantized


def test_k_larger_than_count_is_clamped(tmp_path: Path, data, caplog) -> None:
    emb, queries = data
    index = SearchIndex(emb[:6].copy())
    with caplog.at_level(logging.INFO, logger="msclip.index.search"):
        scores, ids = index.search(queries[:2], 10)
    assert scores.shape == ids.shape == (2, 6)
    assert "k=10 exceeds the 6 stored embeddings" in caplog.text
    assert_matches((scores, ids), brute_force(emb[:6], queries[:2], 6))


def test_query_forms(store, data) -> None:
    emb, queries = data
    index = SearchIndex.from_store(store, cache=False)
    ref = brute_force(emb, queries[:1], 4)
    assert_matches(index.search(queries[0], 4), ref)  # 1-D query
    assert_matches(index.search(torch.from_numpy(queries[:1]).double(), 4), ref)  # torch, float64
    scores, ids = index.search(np.empty((0, DIM), np.float32), 4)
    assert scores.shape == ids.shape == (0, 4)


def test_errors(tmp_path: Path, store, data) -> None:
    path = tmp_path / "empty.index"
    IndexWriter.open_or_create(path, DIM, MODEL).close()
    empty = SearchIndex.from_store(IndexStore.open(path))
    with pytest.raises(EmptyIndexError, match="no embeddings"):
        empty.search(np.ones(DIM, np.float32), 5)

    index = SearchIndex.from_store(store, cache=False)
    with pytest.raises(DimensionMismatchError, match="dimension 32"):
        index.search(np.ones((2, 32), np.float32), 5)
    with pytest.raises(InvalidEmbeddingsError, match="NaN"):
        index.search(np.full(DIM, np.nan, np.float32), 5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(data[1], 0)
    with pytest.raises(ValueError, match="kernel"):
        SearchIndex(data[0], kernel="gpu")
    with pytest.raises(InvalidEmbeddingsError, match="float32"):
        SearchIndex(data[0].astype(np.float64))


def test_cache_is_reused_and_invalidated_when_the_index_grows(tmp_path: Path, data) -> None:
    emb, queries = data
    path = tmp_path / "grow.index"
    with IndexWriter.open_or_create(path, DIM, MODEL) as writer:
        writer.add(emb[:1000], None, source="first")
    first = SearchIndex.from_store(IndexStore.open(path))
    assert not first.cache_hit
    cache_files = sorted(p.name for p in (path / "search_cache").glob("sq8-*"))
    assert len(cache_files) == 2 and all("-n1000-" in name for name in cache_files)
    again = SearchIndex.from_store(IndexStore.open(path))
    assert again.cache_hit
    assert torch.equal(again._codes, first._codes)
    assert_matches(again.search(queries, 10), brute_force(emb[:1000], queries, 10))

    with IndexWriter.open_or_create(path, DIM, MODEL) as writer:
        writer.add(emb[1000:], None, source="second")
    grown = SearchIndex.from_store(IndexStore.open(path))
    assert not grown.cache_hit and grown.count == N
    names = sorted(p.name for p in (path / "search_cache").iterdir())
    # old codes removed; the kernel calibration (per CPU kind, not per size) stays
    assert [n for n in names if not n.startswith("calibration-")] == [
        n for n in names if n.startswith("sq8-") and "-n2000-" in n
    ]
    assert len([n for n in names if n.startswith("sq8-")]) == 2
    assert_matches(grown.search(queries, 10), brute_force(emb, queries, 10))

    # a damaged cache is rebuilt, not trusted
    codes = next((path / "search_cache").glob("*.codes.npy"))
    codes.write_bytes(b"garbage")
    rebuilt = SearchIndex.from_store(IndexStore.open(path))
    assert not rebuilt.cache_hit
    assert_matches(rebuilt.search(queries, 10), brute_force(emb, queries, 10))


@pytest.mark.parametrize("kernel", ["fp32", "dequant", "int8-gemm"])
def test_more_ties_than_candidates_keep_the_lowest_ids(kernel: str) -> None:
    """300 identical rows and a short-list of 100: the default search returns ids 0..4 (ties by
    lower id), as the exact search does, not whichever tied rows the short-list kept."""
    rng = np.random.default_rng(0)
    emb = np.repeat(unit(rng.standard_normal((1, DIM))), 300, axis=0)
    emb[7] = unit(rng.standard_normal(DIM))  # one other row among them
    q = unit(rng.standard_normal((2, DIM)))
    index = SearchIndex(emb, kernel=kernel, device="cpu")
    assert_matches(index.search(q, 5), brute_force(emb, q, 5))
    assert_matches(index.search(q, 5), index.search(q, 5, exact=True))


@pytest.mark.parametrize("kernel", ["fp32", "int8-gemm"])
def test_no_exact_rescan_without_a_tie_at_the_cut(kernel: str, monkeypatch) -> None:
    """The tie check re-scans a query only when tied rows were dropped at the short-list's
    threshold: a short-list of exactly k on tie-free rows needs no exact pass."""
    rng = np.random.default_rng(1)
    emb = unit(rng.standard_normal((3000, DIM)))
    q = unit(rng.standard_normal((16, DIM)))
    index = SearchIndex(emb, kernel=kernel, device="cpu", candidates=10)
    rescans = []
    original = SearchIndex._search_exact

    def counting(self, queries, k):
        rescans.append(len(queries))
        return original(self, queries, k)

    monkeypatch.setattr(SearchIndex, "_search_exact", counting)
    index.search(q, 10)
    assert rescans == []


@pytest.mark.parametrize("kernel", ["int8-gemm", "int8-fbgemm", "int8-onednn"])
def test_a_dimension_no_row_uses_does_not_spoil_the_int8_scan(data, kernel: str) -> None:
    """A constant dimension (here all zero, as a feature no row activates) codes as 0; it must not
    scale the query so that the int8 rounding of the query loses every other dimension."""
    emb, queries = data
    emb = emb.copy()
    emb[:, 3] = 0.0
    index = SearchIndex(emb, kernel=kernel, device="cpu")
    assert_matches(index.search(queries, 10), brute_force(emb, queries, 10))


def test_read_only_rows_and_queries_raise_no_warning(tmp_path: Path) -> None:
    """A memory-mapped index searched by one of its own rows (both read-only) warns nothing:
    torch warns once per process about read-only arrays, so this runs in a fresh process."""
    rows = unit(np.random.default_rng(0).standard_normal((300, DIM)))
    np.save(tmp_path / "rows.npy", rows)
    script = (
        "import numpy as np\n"
        "from msclip.index import SearchIndex\n"
        f"rows = np.load({str(tmp_path / 'rows.npy')!r}, mmap_mode='r')\n"
        "index = SearchIndex(rows, device='cpu')\n"
        "index.calibration\n"
        "for exact in (False, True):\n"
        "    assert index.search(rows[3], 2, exact=exact).ids[0, 0] == 3\n"
    )
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], cwd=root, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_the_gpu_copy_names_rows_of_nan_or_infinity(tmp_path: Path, data) -> None:
    """The GPU search's copy (its row norms, for the error bound) refuses NaN and infinite rows
    of a memory map by name, as the CPU paths do: NaN once passed ``max()`` unseen there. Built
    on the CPU here (the check precedes any kernel)."""
    from msclip.cuda.topk import FusedSearcher

    emb = data[0].copy()
    emb[7] = np.nan
    emb[1500, 3] = -np.inf
    np.save(tmp_path / "e.npy", emb)
    rows = np.load(tmp_path / "e.npy", mmap_mode="r")
    with pytest.raises(InvalidEmbeddingsError, match=r"rows \[7, 1500\] contain NaN"):
        FusedSearcher(rows, "cpu")
    index = SearchIndex(rows, quantize=False)
    with pytest.raises(InvalidEmbeddingsError, match=r"rows \[7, 1500\] contain NaN"):
        FusedSearcher.for_index(index, torch.device("cpu"))  # through the index's row norms


def test_rows_of_nan_or_infinity_in_a_memory_map_are_named(tmp_path: Path, data) -> None:
    """Memory-mapped rows are not scanned up front (an index's were checked when written); NaN or
    infinite rows are named as the int8 copy is built or the exact scan meets them, never
    returned as id -1 nor ranked first."""
    emb = data[0].copy()
    emb[7] = np.nan
    emb[1200, 3] = np.inf
    np.save(tmp_path / "e.npy", emb)
    rows = np.load(tmp_path / "e.npy", mmap_mode="r")
    for make, call in (
        (lambda: SearchIndex(rows), lambda si: si.search(emb[3], 5)),
        (lambda: SearchIndex(rows, quantize=False), lambda si: si.search(emb[3], 5)),
        (lambda: SearchIndex(rows, quantize=False), lambda si: si.search(emb[3], 5, exact=True)),
    ):
        with pytest.raises(InvalidEmbeddingsError, match=r"rows \[7"):
            call(make())


def test_rows_with_negative_strides_are_searched(data) -> None:
    emb, queries = data
    flipped = emb[::-1]
    ref = brute_force(np.ascontiguousarray(flipped), queries, 5)
    assert_matches(SearchIndex(flipped).search(queries, 5), ref)
    assert_matches(SearchIndex(flipped, quantize=False).search(queries, 5, exact=True), ref)


def test_odd_queries_and_arguments_get_msclip_errors(data) -> None:
    emb, queries = data
    index = SearchIndex(emb[:300])
    with pytest.raises(InvalidEmbeddingsError, match="matrix or one"):
        index.search([[1.0, 2.0], [3.0]], 2)
    with pytest.raises(InvalidEmbeddingsError, match="beyond float32's range"):
        index.search(np.full(DIM, 1e39), 2)
    ids = index.search(queries, 3, candidates=np.int64(50)).ids
    np.testing.assert_array_equal(ids, index.search(queries, 3, candidates=50).ids)
    with pytest.raises(ValueError, match=r"cache_key '\.\./x' is part of the cache's file names"):
        SearchIndex(emb[:300], cache_dir="c", cache_key="../x")


def test_a_damaged_cache_of_finite_values_is_rebuilt(tmp_path: Path, data, caplog) -> None:
    import json

    emb, queries = data
    SearchIndex(emb, cache_dir=tmp_path, cache_key="k")
    meta = next(tmp_path.glob("*.json"))
    cache = json.loads(meta.read_text())
    cache["step"][0] = None
    meta.write_text(json.dumps(cache))
    with caplog.at_level(logging.WARNING):
        index = SearchIndex(emb, cache_dir=tmp_path, cache_key="k")
    assert not index.cache_hit and "damaged search cache" in caplog.text
    assert_matches(index.search(queries, 5), brute_force(emb, queries, 5))


def test_a_cache_folder_that_cannot_be_written_is_told_once_with_its_fix(
    tmp_path: Path, data, caplog
) -> None:
    """A read-only index opened again and again in one process (a notebook, a service) said
    'cannot write the search cache' at every opening; it is said once, as msclip's other caches
    say it, and the fix named is the index folder's (MSCLIP_CACHE_DIR does not move this cache)."""
    emb, _ = data
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder's parent should be")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            SearchIndex(emb[:300], cache_dir=blocker / "search_cache", cache_key="k")
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(told) == 1, told
    assert "cannot keep the search cache in" in told[0] and "make the index folder" in told[0]
    assert "MSCLIP_CACHE_DIR" not in told[0]


def test_packed_kernels_pack_with_their_own_engine_and_count_their_copies(store, data) -> None:
    """fbgemm's and oneDNN's packed copies coexist (one per regime may be chosen), each counted
    in the index's memory, and packing leaves the process's quantised engine as it was."""
    from msclip.index import search as search_mod

    emb, queries = data
    before = torch.backends.quantized.engine
    index = SearchIndex.from_store(store, kernel="int8-fbgemm", cache=False)
    base = index.memory_bytes
    index.search(queries, 10)
    one_copy = index.memory_bytes - base
    assert one_copy == index._codes.numel() + 4 * index.count
    index.kernel = "int8-onednn"
    assert_matches(index.search(queries, 10), brute_force(emb, queries, 10))
    assert sorted(index._packed) == ["int8-fbgemm", "int8-onednn"]
    assert index.memory_bytes - base == 2 * one_copy
    assert torch.backends.quantized.engine == before
    with pytest.raises(RuntimeError, match="no quantised engine 'nothing'"):
        search_mod._int8_pack(index._codes[:8], "nothing")
    assert torch.backends.quantized.engine == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32])
def test_the_selection_keeps_each_querys_top_scores_and_tells_a_tie_at_the_cut(dtype) -> None:
    """The running selection over chunks of scores against a full sort: the kept scores are the
    ``c`` largest (as a multiset), under their own ids, the threshold is the ``c``-th largest,
    and ``tie_cut`` says exactly whether the next score equals it (many ties: coarse values)."""
    from msclip.index.search import _select_top

    gen = torch.Generator().manual_seed(7)

    def draw(*shape: int) -> torch.Tensor:
        if dtype == torch.int32:
            return torch.randint(-40, 41, shape, generator=gen, dtype=torch.int32)
        x = torch.randn(*shape, generator=gen)
        return ((x * 4).round() / 4 if shape[1] % 2 else x).to(dtype)

    for _ in range(60):
        n_q = int(torch.randint(1, 12, (), generator=gen))
        sizes = torch.randint(
            1, 2500, (int(torch.randint(1, 6, (), generator=gen)),), generator=gen
        )
        chunks, start = [], 0
        for rows in sizes.tolist():
            chunks.append((start, draw(n_q, rows)))
            chunks.append((start + rows, draw(n_q, 0)))  # an empty chunk changes nothing
            start += rows
        c = int(torch.randint(1, min(start, 150) + 1, (), generator=gen))
        ids, thr, kept, tie_cut = _select_top(iter(chunks), n_q, c, dtype)
        scores = torch.cat([s for _, s in chunks], dim=1)
        ranked = scores.sort(dim=1, descending=True).values
        assert torch.equal(kept, scores.gather(1, ids))  # each kept score under its own id
        assert all(len(set(row)) == c for row in ids.tolist())
        assert torch.equal(kept.sort(dim=1, descending=True).values, ranked[:, :c])
        assert torch.equal(thr, ranked[:, c - 1])
        tied = ranked[:, c] == ranked[:, c - 1] if start > c else torch.zeros(n_q, dtype=torch.bool)
        assert torch.equal(tie_cut, tied)


def test_a_search_of_an_earlier_snapshot_keeps_the_grown_index_cache(tmp_path: Path, data) -> None:
    """A search opened before an add committed (a snapshot of fewer rows) that saves its cache
    after a search of the grown index saved its own leaves that newer cache in place: it was
    deleted, and the next search of the grown index quantised all its rows again."""
    emb, _ = data
    path = tmp_path / "race.index"
    with IndexWriter.open_or_create(path, DIM, MODEL) as writer:
        writer.add(emb[:300], None, source="first")
    before = IndexStore.open(path)  # the earlier snapshot, opened before the add
    with IndexWriter.open_or_create(path, DIM, MODEL) as writer:
        writer.add(emb[300:500], None, source="second")
    assert not SearchIndex.from_store(IndexStore.open(path)).cache_hit  # saves -n500-
    late = SearchIndex.from_store(before)  # saves -n300- afterwards
    assert late.count == 300 and not late.cache_hit
    assert SearchIndex.from_store(IndexStore.open(path)).cache_hit


def test_saving_the_cache_leaves_another_process_s_write_in_flight(tmp_path: Path, data) -> None:
    """Two processes opening one index at once (nodes of a cluster starting together): the one
    that saved its cache first deleted every temporary file of the folder, the other's write in
    progress among them, whose rename then failed ('cannot write the search cache'). Temporary
    files left by a crashed writer (an hour old) are still removed."""
    import os
    import time

    from msclip.io import TMP_PREFIX

    emb, _ = data
    tmp_path.mkdir(exist_ok=True)
    fresh = tmp_path / f"{TMP_PREFIX}sq8-v1-k-n400-d{DIM}.codes.npy.abc.npy"
    old = tmp_path / f"{TMP_PREFIX}calibration-x.json.def.part"
    fresh.write_bytes(b"being written")
    old.write_bytes(b"left by a crash")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    SearchIndex(emb[:300], cache_dir=tmp_path, cache_key="k")
    assert fresh.exists() and not old.exists()
