"""Kernel calibration of the index search: the fastest measured kernel wins, per regime; the choice
is cached per CPU kind in the search cache; every kernel's results equal the exact path's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msclip import hardware
from msclip.index import IndexStore, IndexWriter, SearchIndex
from msclip.index import calibrate as cal_mod
from msclip.index.calibrate import (
    CANDIDATES,
    REGIMES,
    Calibration,
    calibrate,
    fastest,
    load_or_calibrate,
)

DIM = 32


class FakeClock:
    """A clock that only moves when a fake kernel "runs"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_runs(clock: FakeClock, cost: dict[tuple[str, int], float], fixed: float = 0.0):
    """Kernels costing ``cost`` per row (plus ``fixed`` per call) on a fake clock."""

    def run(kernel: str, n_q: int):
        if (kernel, n_q) not in cost:
            return None  # unavailable on this "machine"

        def scan(rows: int) -> None:
            clock.now += cost[(kernel, n_q)] * rows + fixed

        return scan

    return run


def test_fastest_takes_the_minimum_and_keeps_fp32_on_a_near_tie() -> None:
    assert fastest({"int8-gemv": 3.0, "fp32": 5.0, "bf16": 1.0}) == "bf16"
    assert fastest({"int8-gemm": 0.99, "fp32": 1.0}) == "fp32"  # within the noise margin
    assert fastest({"int8-gemm": 0.5, "fp32": 1.0}) == "int8-gemm"
    assert fastest({"int8-gemm": 0.5, "fp32": float("nan")}) == "int8-gemm"
    with pytest.raises(ValueError):
        fastest({})


def test_calibrate_picks_the_fastest_measured_kernel_per_regime() -> None:
    clock = FakeClock()
    many = REGIMES["many"]
    # an AVX2-like machine: int8 GEMM useless, fbgemm best for batches, the GEMV for one query
    cost = {
        ("int8-gemv", 1): 1.0, ("int8-gemm", 1): 9.0, ("int8-fbgemm", 1): 2.0, ("fp32", 1): 4.0,
        ("int8-gemv", many): 30.0, ("int8-gemm", many): 400.0, ("int8-fbgemm", many): 6.0,
        ("fp32", many): 10.0, ("bf16", many): 300.0,
    }  # fmt: skip
    # a fixed cost per call (here as large as the scan of a sample) does not count: the cost per
    # row is the slope between two sample sizes
    cal = calibrate(fake_runs(clock, cost, fixed=5000.0), rows=8192, timer=clock, repeats=2)
    assert cal.choice == {"few": "int8-gemv", "many": "int8-fbgemm"}
    assert cal.kernel(1) == "int8-gemv" and cal.kernel(100) == "int8-fbgemm"
    assert cal.timings["few"]["int8-fbgemm"] == pytest.approx(2.0)  # seconds per row (slope)
    # far slower than the best on the warm-up: not timed again, its warm-up is its estimate
    assert cal.timings["many"]["int8-gemm"] == pytest.approx(400.0, rel=0.02)
    assert "bf16" not in cal.timings["few"]  # unavailable there: never chosen
    # a machine where nothing beats the plain float scan keeps it
    clock2 = FakeClock()
    flat = {(k, n): 1.0 for k in CANDIDATES for n in REGIMES.values()}
    assert calibrate(fake_runs(clock2, flat), timer=clock2).choice == {
        "few": "fp32",
        "many": "fp32",
    }


def test_two_regimes_share_one_copy_of_the_index_unless_it_costs_too_much() -> None:
    """fbgemm's packed codes for one query and oneDNN's for batches would hold two copies of the
    codes: a regime takes the other's copy kernel when it was measured at most COPY_MARGIN slower
    there, and keeps its own beyond that; kernels without a copy are never changed."""
    from msclip.index.calibrate import COPY_MARGIN, one_copy

    close = {"few": {"int8-fbgemm": 1.0, "int8-onednn": 1.1, "int8-gemv": 1.3},
             "many": {"int8-onednn": 1.0, "int8-fbgemm": 1.05, "int8-gemm": 2.0}}  # fmt: skip
    choice = {"few": "int8-fbgemm", "many": "int8-onednn"}
    assert one_copy(choice, close) == {"few": "int8-fbgemm", "many": "int8-fbgemm"}
    slower = 1.0 + 2 * COPY_MARGIN
    apart = {"few": {"int8-fbgemm": 1.0, "int8-onednn": 1.1},
             "many": {"int8-onednn": 1.0, "int8-fbgemm": slower}}  # fmt: skip
    # fbgemm costs batches too much: one query takes oneDNN's copy instead (10 % slower)
    assert one_copy(choice, apart) == {"few": "int8-onednn", "many": "int8-onednn"}
    both_far = {"few": {"int8-fbgemm": 1.0, "int8-onednn": slower},
                "many": {"int8-onednn": 1.0, "int8-fbgemm": slower}}  # fmt: skip
    assert one_copy(choice, both_far) == choice  # worth both copies
    no_copy = {"few": "int8-gemv", "many": "int8-onednn"}
    assert one_copy(no_copy, close) == no_copy
    clock = FakeClock()
    cost = {(k, n): 1.0 for k in CANDIDATES for n in REGIMES.values()}
    cost.update(
        {
            ("int8-fbgemm", 1): 0.2,
            ("int8-onednn", 1): 0.21,
            ("int8-onednn", REGIMES["many"]): 0.2,
            ("int8-fbgemm", REGIMES["many"]): 0.21,
        }
    )
    cal = calibrate(fake_runs(clock, cost), timer=clock)
    assert cal.choice == {"few": "int8-fbgemm", "many": "int8-fbgemm"}


def test_calibrate_skips_kernels_whose_preparation_fails() -> None:
    clock = FakeClock()
    cost = {
        (k, n): 1.0 if k == "int8-fbgemm" else 5.0 for k in CANDIDATES for n in REGIMES.values()
    }

    def setup(kernel: str) -> float:
        if kernel == "int8-fbgemm":
            raise RuntimeError("no quantized engine")
        return 0.0

    cal = calibrate(fake_runs(clock, cost), setup, timer=clock)
    assert "int8-fbgemm" not in cal.choice.values()


def test_choice_is_cached_per_cpu_kind(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def measure() -> Calibration:
        calls.append(1)
        return Calibration({"few": "int8-gemv", "many": "fp32"}, {}, {}, {"model": "x"})

    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    first = load_or_calibrate(tmp_path, measure, key="cpuA")
    assert first.choice["few"] == "int8-gemv" and len(calls) == 1
    saved = tmp_path / "calibration-cpuA.json"
    assert json.loads(saved.read_text())["choice"] == {"few": "int8-gemv", "many": "fp32"}
    monkeypatch.setattr(cal_mod, "_MEMORY", {})  # a new process: read from the folder
    again = load_or_calibrate(tmp_path, measure, key="cpuA")
    assert again.cached and again.choice == first.choice and len(calls) == 1
    load_or_calibrate(tmp_path, measure, key="cpuB")  # another CPU kind measures again
    assert len(calls) == 2 and (tmp_path / "calibration-cpuB.json").is_file()
    saved.write_text("{not json")  # a damaged file is measured again, not trusted
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    load_or_calibrate(tmp_path, measure, key="cpuA")
    assert len(calls) == 3


def test_a_choice_of_an_older_candidate_list_is_measured_again(tmp_path, monkeypatch, caplog):
    """A calibration saved by an older msclip never timed the newer candidates (int8-onednn):
    measured again, told as an update (info), not as a damaged file (warning)."""
    calls = []

    def measure() -> Calibration:
        calls.append(1)
        return Calibration({"few": "int8-fbgemm", "many": "int8-onednn"}, {}, {}, {"model": "x"})

    saved = tmp_path / "calibration-cpuA.json"
    old = Calibration({"few": "int8-gemv", "many": "int8-fbgemm"}, {}, {}, {}).to_dict()
    saved.write_text(json.dumps(dict(old, version=cal_mod.CALIBRATION_VERSION - 1)))
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    with caplog.at_level("INFO", logger="msclip.index.calibrate"):
        got = load_or_calibrate(tmp_path, measure, key="cpuA")
    assert len(calls) == 1 and got.choice["many"] == "int8-onednn"
    assert any("older msclip" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert json.loads(saved.read_text())["version"] == cal_mod.CALIBRATION_VERSION


def test_a_choice_that_cannot_be_kept_names_the_index_folder_fix(tmp_path, monkeypatch, caplog):
    """The calibration lives in the index's search_cache/, not under msclip's cache root: an
    unwritable folder names its own fix (it named none), through msclip.cache's one warning."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    choice = Calibration({"few": "fp32", "many": "fp32"}, {}, {}, {})
    with caplog.at_level("WARNING"):
        load_or_calibrate(blocker / "search_cache", lambda: choice, key="cpuA")
    (told,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "cannot keep the search calibration" in told and cal_mod.CACHE_FIX in told


@pytest.fixture
def store(tmp_path: Path) -> tuple[IndexStore, np.ndarray, np.ndarray]:
    """Clusters with a clear top-k: every query's 10 nearest rows are far above the rest."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((30, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = centres[np.repeat(np.arange(30), 60)] + 0.3 * rng.standard_normal((1800, DIM))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    queries = emb[[3, 700, 1500]] + 0.01 * rng.standard_normal((3, DIM)).astype(np.float32)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    path = tmp_path / "c.index"
    with IndexWriter.open_or_create(path, DIM, {"name": "t"}) as writer:
        writer.add(emb, None, source="all")
    return IndexStore.open(path), emb, queries


@pytest.mark.parametrize("kernel", CANDIDATES)
def test_each_chosen_kernel_returns_the_exact_ids(store, kernel: str) -> None:
    st, _, queries = store
    index = SearchIndex.from_store(st, cache=False)
    index._calibration = Calibration({"few": kernel, "many": kernel})
    assert index._pick_kernel(1) == kernel and index._pick_kernel(50) == kernel
    exact = index.search(queries, 10, exact=True)
    for q in (queries, queries[:1]):
        got = index.search(q, 10)
        np.testing.assert_array_equal(got.ids, exact.ids[: len(q)])
        np.testing.assert_array_equal(got.scores, exact.scores[: len(q)])


def test_real_calibration_is_measured_once_and_cached(store, monkeypatch) -> None:
    st, _, queries = store
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    index = SearchIndex.from_store(st)
    result = index.search(queries, 5)
    chosen = index.calibration
    assert set(chosen.choice) == set(REGIMES) and set(chosen.choice.values()) <= set(CANDIDATES)
    assert "fp32" in chosen.timings["few"] and "fp32" in chosen.timings["many"]
    key = f"{hardware.cpu_info().key()}-t{torch.get_num_threads()}"
    assert (st.path / "search_cache" / f"calibration-{key}.json").is_file()
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    monkeypatch.setattr(SearchIndex, "_measure_kernels", lambda self: pytest.fail("measured"))
    reopened = SearchIndex.from_store(IndexStore.open(st.path))
    assert reopened.calibration.cached
    np.testing.assert_array_equal(reopened.search(queries, 5).ids, result.ids)


def test_another_thread_count_calibrates_again(store, monkeypatch) -> None:
    """A GEMV bound by memory and a GEMM bound by arithmetic rank differently on one thread than
    on all cores: a choice measured with one thread count is not reused with another."""
    st, _, queries = store
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    before = torch.get_num_threads()
    calls = []
    real = SearchIndex._measure_kernels

    def counted(self):
        calls.append(torch.get_num_threads())
        return real(self)

    monkeypatch.setattr(SearchIndex, "_measure_kernels", counted)
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            SearchIndex.from_store(IndexStore.open(st.path)).search(queries, 5)
    finally:
        torch.set_num_threads(before)
    assert calls == [1, 2]  # the third search read the one-thread choice back
    names = sorted(p.name for p in (st.path / "search_cache").glob("calibration-*.json"))
    assert [n.rsplit("-", 1)[1] for n in names] == ["t1.json", "t2.json"]


def test_a_kernel_whose_copy_does_not_fit_gives_way_to_one_without(store, monkeypatch, caplog):
    """The calibration picks by speed; a kernel that needs a copy of the index (fbgemm's packed
    codes, bf16 rows) larger than half the available memory is passed over for the fastest
    measured kernel without one, with one warning, and the results stay exact."""
    st, _, queries = store
    index = SearchIndex.from_store(st, cache=False)
    index._calibration = Calibration(
        {"few": "int8-fbgemm", "many": "bf16"},
        timings={
            "few": {"int8-fbgemm": 1.0, "bf16": 1.5, "int8-gemv": 2.0, "fp32": 5.0},
            "many": {"bf16": 1.0, "int8-fbgemm": 1.2, "int8-gemm": 2.0, "fp32": 5.0},
        },
    )
    monkeypatch.setattr(hardware, "available_memory", lambda: 1000)  # bytes
    exact = index.search(queries, 10, exact=True)
    with caplog.at_level("WARNING", logger="msclip.index.search"):
        assert index._pick_kernel(1) == "int8-gemv" and index._pick_kernel(50) == "int8-gemm"
        for q in (queries, queries[:1], queries, queries[:1]):
            got = index.search(q, 10)
            np.testing.assert_array_equal(got.ids, exact.ids[: len(q)])
    warned = [r.getMessage() for r in caplog.records if "available" in r.getMessage()]
    assert len(warned) == 2  # once per kernel passed over
    assert "int8-fbgemm" in warned[0] and "SearchIndex(kernel='int8-fbgemm') forces it" in warned[0]
    assert index._packed == {} and index._bf16 is None  # no copy was made
    monkeypatch.setattr(hardware, "available_memory", lambda: None)  # unknown: trusted
    assert index._pick_kernel(1) == "int8-fbgemm"
    monkeypatch.setattr(hardware, "available_memory", lambda: 1 << 40)
    assert index._pick_kernel(50) == "bf16"
    many = np.tile(queries, (4, 1))  # 12 queries: the "many" regime
    np.testing.assert_array_equal(index.search(many, 10).ids[:3], exact.ids)  # bf16 copy made
    assert index._bf16 is not None
    monkeypatch.setattr(hardware, "available_memory", lambda: 1000)
    assert index._pick_kernel(50) == "bf16"  # the copy exists: it costs nothing more


def test_the_room_under_a_control_group_limit_is_what_is_available(tmp_path, monkeypatch):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/jobs/42\n")
    group = tmp_path / "fs" / "jobs" / "42"
    group.mkdir(parents=True)
    (group / "memory.max").write_text("1000000\n")
    (group / "memory.current").write_text("600000\n")
    (group / "memory.stat").write_text("anon 400000\ninactive_file 100000\n")
    room = hardware._cgroup_room(str(proc), str(tmp_path / "fs"))
    assert room == 1000000 - (600000 - 100000)  # inactive page cache is reclaimable
    (group / "memory.max").write_text("max\n")  # no limit
    assert hardware._cgroup_room(str(proc), str(tmp_path / "fs")) is None
    proc.write_text("4:memory:/grp\n0::/\n")  # cgroup v1 memory controller
    v1 = tmp_path / "fs" / "memory" / "grp"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2000000\n")
    (v1 / "memory.usage_in_bytes").write_text("500000\n")
    (v1 / "memory.stat").write_text("total_inactive_file 0\n")
    assert hardware._cgroup_room(str(proc), str(tmp_path / "fs")) == 1500000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert hardware._cgroup_room(str(proc), str(tmp_path / "fs")) is None
    monkeypatch.setattr(hardware, "_cgroup_room", lambda: 12345)
    assert hardware.available_memory() == 12345  # the smaller of the machine's and the group's
    monkeypatch.setattr(hardware, "_cgroup_room", lambda: None)
    machine = hardware.available_memory()
    assert machine is not None and machine > 12345


@pytest.mark.parametrize("kernel", ["int8-fbgemm", "int8-onednn"])
def test_packed_blocks_merged_for_few_queries_give_the_exact_ids(
    store, monkeypatch, kernel: str
) -> None:
    """One query's scores of several packed blocks are selected as one chunk (a partial group
    at the end included), many queries' block by block: the same results either way."""
    from msclip.index import search as search_mod

    monkeypatch.setattr(search_mod, "_PACKED_CHUNK_ROWS", 256)  # 1800 rows: 8 blocks
    monkeypatch.setattr(search_mod, "_GEMV_CHUNK_ROWS", 768)  # merged 3 by 3: 3 + 3 + 2
    st, _, queries = store
    index = SearchIndex.from_store(st, cache=False, kernel=kernel)
    exact = index.search(queries, 10, exact=True)
    sizes: list[int] = []
    select = search_mod._select_top

    def spy(chunks, *a, **k):
        def seen():
            for start, scores in chunks:
                sizes.append(scores.shape[1])
                yield start, scores

        return select(seen(), *a, **k)

    monkeypatch.setattr(search_mod, "_select_top", spy)
    for i in range(len(queries)):
        got = index.search(queries[i : i + 1], 10)
        np.testing.assert_array_equal(got.ids[0], exact.ids[i])
        np.testing.assert_array_equal(got.scores[0], exact.scores[i])
    assert sizes[:3] == [768, 768, 264]
    sizes.clear()
    many = np.tile(queries, (4, 1))  # 12 queries: block by block
    np.testing.assert_array_equal(index.search(many, 10).ids[:3], exact.ids)
    assert sizes == [256] * 7 + [1800 - 7 * 256]


def test_a_choice_timed_on_a_small_index_is_measured_again_when_it_grows(
    tmp_path: Path, monkeypatch
) -> None:
    """A choice timed on 40 rows (where the fixed cost of a call hides the cost per row) is not
    trusted for 30,000: measured again once the sample would be more than twice as large."""
    sizes = []

    def measure(rows: int):
        def run() -> Calibration:
            sizes.append(rows)
            return Calibration({"few": "bf16", "many": "fp32"}, {}, {}, {}, rows=rows)

        return run

    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    assert load_or_calibrate(tmp_path, measure(40), key="cpuA", rows=40).rows == 40
    assert load_or_calibrate(tmp_path, measure(60), key="cpuA", rows=60).rows == 40  # kept
    grown = load_or_calibrate(tmp_path, measure(30000), key="cpuA", rows=30000)
    assert grown.rows == 30000 and sizes == [40, 30000]
    monkeypatch.setattr(cal_mod, "_MEMORY", {})  # the saved file holds the new choice
    assert load_or_calibrate(tmp_path, measure(1), key="cpuA", rows=30000).rows == 30000
    saved = tmp_path / "calibration-cpuA.json"
    data = json.loads(saved.read_text())
    del data["rows"]  # a choice saved before the sample size was recorded
    saved.write_text(json.dumps(data))
    monkeypatch.setattr(cal_mod, "_MEMORY", {})
    assert load_or_calibrate(tmp_path, measure(30000), key="cpuA", rows=30000).rows == 30000
    assert sizes == [40, 30000, 30000]


def test_an_index_without_an_int8_copy_has_no_calibration() -> None:
    rows = np.eye(8, dtype=np.float32)
    with pytest.raises(ValueError, match="no int8 copy"):
        _ = SearchIndex(rows, quantize=False).calibration
    assert SearchIndex(rows).calibration.rows == 8
