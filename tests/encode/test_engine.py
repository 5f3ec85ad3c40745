"""The one encoding engine: files (skip and count), labelled datasets (fail or skip), order,
worker processes, and grad mode that never leaks into the caller's code."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import msclip
from msclip.encode import (
    LabelledDataset,
    collate_items,
    encode_batches,
    encode_dataset,
    encode_images,
    iter_encoded,
)
from msclip.errors import MSCLIPError, RasterReadError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny").eval()


@pytest.fixture
def files(make_geotiff, tmp_path):
    paths = [make_geotiff(f"t{i}.tif", count=10, size=(32, 32), seed=i)[0] for i in range(5)]
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff at all")
    return [str(p) for p in paths[:2]] + [str(bad)] + [str(p) for p in paths[2:]]


class _Labelled(torch.utils.data.Dataset):
    """A labelled dataset as evaluation has it: ``(image, target, index)``; item 2 unreadable."""

    name = "toy"

    def __init__(self, preprocess, paths):
        self.preprocess, self.paths = preprocess, paths

    def __len__(self):
        return len(self.paths)

    def name_of(self, i):
        return self.paths[i]

    def __getitem__(self, i):
        return self.preprocess(self.paths[i]), i % 3, i


def test_files_in_order_with_bad_ones_named_and_counted(tiny, files, caplog):
    pre = tiny.preprocess()
    res = encode_images(tiny, pre, files, batch_size=2)
    assert res.indices == [0, 1, 3, 4, 5]
    assert [f.index for f in res.failures] == [2] and "broken.tif" in res.failures[0].name
    assert "cannot read" in caplog.text and "broken.tif" in caplog.text
    # the same numbers as the model called directly, L2-normalised
    with torch.inference_mode():
        direct = tiny.encode_image(torch.stack([pre(files[i]) for i in res.indices]))
    expected = torch.nn.functional.normalize(direct.float(), dim=-1).numpy()
    np.testing.assert_allclose(res.embeddings, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)


def test_batch_size_does_not_change_results(tiny, files):
    pre = tiny.preprocess()
    a = encode_images(tiny, pre, files, batch_size=1)
    b = encode_images(tiny, pre, files, batch_size=4)
    assert a.indices == b.indices
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)


def test_worker_processes_give_the_same_result(tiny, files):
    pre = tiny.preprocess()
    a = encode_images(tiny, pre, files, batch_size=2, workers=0)
    b = encode_images(tiny, pre, files, batch_size=2, workers=1)
    assert a.indices == b.indices and len(b.failures) == 1
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)


def test_labelled_dataset_fails_by_default_and_skips_on_request(tiny, files):
    ds = _Labelled(tiny.preprocess(), files)
    # strict: one clear error naming the file, raised in this process (no worker traceback)
    with pytest.raises(RasterReadError, match=r"broken\.tif"):
        encode_dataset(tiny, ds, batch_size=2, workers=1)
    enc = encode_dataset(tiny, ds, batch_size=2, skip_bad=True)
    assert enc.indices.tolist() == [0, 1, 3, 4, 5]
    assert enc.targets.tolist() == [0, 1, 0, 1, 2]
    assert [f.index for f in enc.failures] == [2] and "broken.tif" in enc.failures[0].name


def test_labelled_dataset_with_nothing_readable_is_an_error(tiny, tmp_path):
    bad = tmp_path / "x.tif"
    bad.write_bytes(b"junk")
    with pytest.raises(MSCLIPError, match="no sample could be encoded"):
        encode_dataset(tiny, _Labelled(tiny.preprocess(), [str(bad)]), skip_bad=True)


def test_protocol_collate_keeps_extras_of_good_items_only():
    items = [
        {"index": 0, "image": torch.zeros(2, 4, 4), "target": 3},
        {"index": 1, "error": "boom"},
        {"index": 2, "nodata": "90% nodata"},
        {"index": 3, "image": torch.ones(2, 4, 4), "target": 5},
    ]
    out = collate_items(items)
    assert out["indices"] == [0, 3] and out["target"] == [3, 5]
    assert out["failures"] == [(1, "boom")] and out["skipped"] == [(2, "90% nodata")]
    assert out["images"].shape == (2, 2, 4, 4)
    assert collate_items([{"index": 0, "error": "x"}])["images"] is None


def test_grad_mode_covers_the_model_only(tiny, files):
    seen = []
    for batch in iter_encoded(tiny, tiny.preprocess(), files, batch_size=2):
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        assert batch.embeddings.dtype == np.float32
    assert seen and all(s == (False, True) for s in seen)


def test_tensor_output_with_no_grad_for_training_code(tiny, files):
    ds = LabelledDataset(_Labelled(tiny.preprocess(), files[:2]))
    batches = list(encode_batches(tiny, ds, to_numpy=False, grad_mode="no_grad"))
    emb = batches[0].embeddings
    assert isinstance(emb, torch.Tensor) and not emb.is_inference() and not emb.requires_grad
    assert batches[0].extra["target"] == [0, 1]
    with pytest.raises(ValueError, match="grad_mode"):
        next(encode_batches(tiny, ds, grad_mode="train"))


# -- items of a batch read on several threads ----------------------------------------------------
def test_items_read_on_threads_give_the_run_of_one_thread(tiny, make_geotiff, tmp_path, caplog):
    """Without workers, a batch's files are read on one thread per intra-op thread: the same
    embeddings, failures, skipped items and counted warnings as read on one, in order, with no
    warning of a file without georeference, and the process's thread settings and warning
    filters as they were."""
    import threading
    import warnings

    from msclip.encode import ImageDataset

    paths = [str(make_geotiff(f"g{i}.tif", count=12, size=(32, 32), seed=i)[0]) for i in range(6)]
    paths += [str(make_geotiff(f"n{i}.tif", count=12, size=(32, 32), seed=9 + i,
                               georef=False)[0]) for i in range(3)]  # fmt: skip
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    paths.insert(4, str(bad))
    pre = tiny.preprocess()  # 12 bands: B01 (and B09) lie outside the model's range, a warning

    def run(threads):
        caplog.clear()
        torch.set_num_threads(threads)
        try:
            out = list(encode_batches(tiny, ImageDataset(paths, pre), batch_size=4))
        finally:
            torch.set_num_threads(2)
        return out, [r.getMessage() for r in caplog.records]

    filters = list(warnings.filters)
    daemons = {t for t in threading.enumerate() if not t.daemon}
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        (one, logged_one), (many, logged_many) = run(1), run(2)
    assert not [w for w in shown if "georeference" in str(w.message)]
    assert logged_one == logged_many and "(9 of 10 images)" in logged_many[-1]
    assert (
        [b.indices for b in one] == [b.indices for b in many] == [[0, 1, 2, 3], [5, 6, 7], [8, 9]]
    )
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        assert [f.index for f in a.failures] == [f.index for f in b.failures]
    assert [f.index for b in many for f in b.failures] == [4]
    assert torch.get_num_threads() == 2 and warnings.filters == filters
    assert {t for t in threading.enumerate() if not t.daemon} == daemons  # none left behind


def test_read_items_attributes_each_warning_to_its_item():
    """Warnings raised on the pool's threads belong to the item being read there, whatever the
    interleaving; a warning of another thread is shown as usual; the filters are restored."""
    import threading
    import time
    import warnings
    from multiprocessing.pool import ThreadPool

    from msclip.encode import read_items

    def read(i):
        for k in range(3):
            warnings.warn(f"item {i} step {k}", UserWarning, stacklevel=1)
            time.sleep(0.002 * ((i + k) % 3))  # the threads interleave their warnings
        return {"index": i}

    filters = list(warnings.filters)
    pool = ThreadPool(3)
    try:
        items = read_items(read, list(range(9)), pool)
    finally:
        pool.terminate()
    assert [it["index"] for it in items] == list(range(9))
    for it in items:
        i = it["index"]
        assert it["warnings"] == [("UserWarning", f"item {i} step {k}") for k in range(3)]
    assert warnings.filters == filters

    # another thread's warning, raised while items are read, is not an item's
    seen = []

    def other_and_read(i):
        if i == 0:
            t = threading.Thread(
                target=lambda: warnings.warn("not an item's", UserWarning, stacklevel=1)
            )
            t.start()
            t.join()
        return {"index": i}

    pool = ThreadPool(2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, *a, **k: seen.append(str(m))
            items = read_items(other_and_read, [0, 1], pool)
    finally:
        pool.terminate()
    assert seen == ["not an item's"] and all("warnings" not in it for it in items)


def test_one_item_keeps_its_own_warnings_and_not_another_threads():
    """item_with_warnings (DataLoader workers, one item at a time) records the warnings of the
    thread reading the item, in order, and shows another thread's warning raised meanwhile."""
    import threading
    import warnings

    from msclip.encode import item_with_warnings

    seen = []

    def read(key):
        warnings.warn(f"{key} first", UserWarning, stacklevel=1)
        t = threading.Thread(
            target=lambda: warnings.warn("not the item's", UserWarning, stacklevel=1)
        )
        t.start()
        t.join()
        warnings.warn(f"{key} second", RuntimeWarning, stacklevel=1)
        return {"index": key}

    filters = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, *a, **k: seen.append(str(m))
        item = item_with_warnings(read, ("scene", 3))
        quiet = item_with_warnings(lambda key: {"index": key}, 7)
    assert item["warnings"] == [("UserWarning", "('scene', 3) first"),
                                ("RuntimeWarning", "('scene', 3) second")]  # fmt: skip
    assert seen == ["not the item's"] and "warnings" not in quiet
    assert warnings.filters == filters


def test_reading_threads_outlive_their_pass_and_a_forked_worker_makes_its_own(
    tiny, make_geotiff, monkeypatch, request
):
    """The reading threads are the process's, reused by every pass: with a pool per pass, a
    DataLoader worker forked after one (a pass with workers after one without) hung in its first
    rasterio.open, likely on a GDAL lock an ending thread held. A forked process starts with no
    pool of its parent's (whose threads it does not have)."""
    import gc
    import threading

    from msclip import encode as engine
    from msclip.encode import ImageDataset

    readers: list[set[threading.Thread]] = [set()]
    real = ImageDataset.read_item

    def noting(self, index):
        readers[-1].add(threading.current_thread())
        return real(self, index)

    monkeypatch.setattr(ImageDataset, "read_item", noting)
    # two reading threads whatever the machine: one per intra-op thread
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    paths = [str(make_geotiff(f"s{i}.tif", count=10, size=(32, 32), seed=i)[0]) for i in range(8)]
    batches = encode_batches(tiny, ImageDataset(paths, tiny.preprocess()), batch_size=2)
    next(batches)
    pool = engine._POOLS[2]
    del batches  # stopped early
    gc.collect()
    # a pass with a worker process, then one without, reuse the same two threads, which never
    # end while the process lives
    list(encode_batches(tiny, ImageDataset(paths, tiny.preprocess()), batch_size=2, workers=1))
    readers.append(set())
    list(encode_batches(tiny, ImageDataset(paths, tiny.preprocess()), batch_size=2))
    used = readers[0] | readers[1]
    assert engine._POOLS[2] is pool and len(used) == 2
    assert all(t.is_alive() for t in used)
    read, write = os.pipe()
    with engine._POOLS_LOCK:  # held at the fork, as by a thread making a pool
        pid = os.fork()
        if pid == 0:  # the child reports its pools and whether it can take the lock, and leaves
            free = engine._POOLS_LOCK.acquire(blocking=False)
            os.write(write, b"%d %d" % (len(engine._POOLS), free))
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 8) == b"0 1"


def test_the_reading_threads_end_quietly_with_the_process(tmp_path) -> None:
    """The process's reading pools as the interpreter's teardown drops them: no ResourceWarning
    of an unclosed pool, no "Exception ignored" (a multiprocessing ThreadPool printed one at the
    end of every pytest-xdist worker on Python 3.12), and a prompt exit."""
    import subprocess

    script = tmp_path / "read_and_leave.py"
    script.write_text(
        "import gc, sys\n"
        "import msclip.encode as engine\n"
        "pool = engine._reading_pool(2)\n"
        "assert list(engine.read_items(lambda i: {'i': i}, [0, 1, 2], pool)) == "
        "[{'i': 0}, {'i': 1}, {'i': 2}]\n"
        "del pool\n"
        "engine._POOLS.clear()  # what the teardown of the module does\n"
        "gc.collect()\n"
        "engine._reading_pool(2).submit(print, 'read again')\n"  # alive at exit this time
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "read again\n"
    assert "Warning" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_reading_threads_are_capped(tiny, make_geotiff, monkeypatch) -> None:
    """One reading thread per intra-op thread and item, at most READ_THREADS: more threads queue
    for the GIL (a 16-thread Xeon read a tile in 12-14 ms on sixteen, 5.2 ms on one)."""
    from msclip import encode as engine

    paths = [str(make_geotiff(f"c{i}.tif", count=12, size=(32, 32), seed=i)[0]) for i in range(9)]
    pools = []
    real = engine._ThreadedReads.__init__

    def spy(self, dataset, threads):
        pools.append(threads)
        real(self, dataset, threads)

    monkeypatch.setattr(engine._ThreadedReads, "__init__", spy)
    pre = tiny.preprocess()
    try:
        for threads, batch in ((16, 8), (16, 3), (2, 8), (1, 8)):
            torch.set_num_threads(threads)
            list(encode_batches(tiny, engine.ImageDataset(paths, pre), batch_size=batch))
    finally:
        torch.set_num_threads(2)
    assert engine.READ_THREADS == 4
    assert pools == [4, 3, 2]  # one thread: no pool
