"""Input files read while a program starts (msclip.io.prefetch): what is taken is what the run
would read, everything else is read by the run itself; and the programs use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msclip.io import stack_band_files
from msclip.io.prefetch import ENV, start_reads

REPO = Path(__file__).resolve().parents[2]
L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")

# run in a fresh interpreter: the reads start only before torch is imported
SCRIPT = r"""
import json, os, sys
import numpy as np
from msclip.io.prefetch import start_reads
from msclip.io.readers import read_raster

import logging
import msclip.io.readers

assert "torch" not in sys.modules
good, warned, corrupt, changed, big, logged, printed, stack, band = sys.argv[1:10]
paths = [good, warned, corrupt, changed, big, logged, printed, stack]
# as a program sets its logging up: records on stderr
logging.basicConfig(level=logging.WARNING, format="run's log: %(message)s")
real_read = msclip.io.readers.read_raster


def read_raster(path, **kwargs):  # a read that logs (as GDAL's warnings come) or prints
    if path == logged:
        logging.getLogger("rasterio._env").warning("GDAL: odd tag in %s", path)
    if path == printed:
        os.write(2, b"a C library: odd file\n")
    return real_read(path, **kwargs)


msclip.io.readers.read_raster = read_raster
reads = start_reads(paths, budget=int(os.environ["BUDGET"]))
out = {"started": reads is not None}
if reads is not None:
    out["finished"] = reads.wait(150)
    for path in (changed, band):  # a file changed since; a band file under an unchanged VRT
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ref = read_raster(good)
    got = reads.take(good, sensor="hls_l30")  # read with other settings: not this one
    out["other_settings"] = got is None
    out["window"] = reads.take(good, window=(0, 0, 4, 4)) is None
    out["reduced"] = reads.take(good, shorter_side=8) is None
    out["too_large"] = reads.take(good, max_pixels=10) is None
    got = reads.take(good)
    out["good"] = got is not None and bool(
        np.array_equal(got[0], ref.data) and got[0].dtype == ref.data.dtype
        and got[1] == ref.bands and got[2] == ref.nodata
    )
    out["owned"] = got is not None and bool(got[0].flags.owndata and got[0].flags.writeable)
    out["twice"] = reads.take(good) is None
    for name, path in (("warned", warned), ("corrupt", corrupt), ("changed", changed),
                       ("logged", logged), ("printed", printed), ("stack", stack)):
        out[name] = reads.take(path) is None
    out["read"], out["taken"] = reads.read, reads.taken
    reads.close()
    out["closed"] = reads.take(big) is None  # read ahead, but the reads are closed
    default = start_reads([good])  # the default budget: from the memory available, torch-free
    out["default"] = default is not None and default.wait(150) and default.take(good) is not None
    default.close()
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def _script(tmp_path: Path, paths: list[Path], **env: str) -> dict:
    script = tmp_path / "reads.py"
    script.write_text(SCRIPT)
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    e.pop(ENV, None)
    e.update(env)
    done = subprocess.run([sys.executable, str(script), *map(str, paths)], capture_output=True,
                          text=True, timeout=240, env=e)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["stderr"] = done.stderr
    return out


@pytest.fixture
def files(make_geotiff, tmp_path) -> list[Path]:
    good, _ = make_geotiff("good.tif", nodata=0, seed=1)
    warned, _ = make_geotiff("warned.tif", count=4, descriptions=["band_1", "band_2", "band_3",
                                                                  "band_4"])  # fmt: skip
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 60)
    changed, _ = make_geotiff("changed.tif", seed=2)
    big, _ = make_geotiff("big.tif", size=(64, 64), seed=3)
    logged, _ = make_geotiff("logged.tif", seed=4)
    printed, _ = make_geotiff("printed.tif", seed=5)
    bands = [make_geotiff(f"T32TQM_{b}.tif", count=1, seed=6 + i)[0]
             for i, b in enumerate(("B02", "B03", "B04"))]  # fmt: skip
    stack = stack_band_files(bands, tmp_path / "stack.vrt")
    return [good, warned, corrupt, changed, big, logged, printed, stack, bands[1]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reads fork (Linux only)")
def test_what_is_taken_is_the_run_s_own_read_and_nothing_else_is(files, tmp_path) -> None:
    """A file read ahead is taken once, with the settings it was read with, unchanged since, and
    equal to read_raster's data, band names and nodata; a file whose read warned, logged a
    warning, wrote to stderr or failed, one read with other settings, windowed, reduced, too
    large for the run, or changed since (a VRT whose band file changed) is not (the run reads it
    and reports it itself); the reading process writes nothing to the terminal."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the reads start with two usable cores")
    out = _script(tmp_path, files, BUDGET=str(64 << 20))
    assert out["started"] and out["finished"] and not out["torch"]
    assert out["good"] and out["owned"] and out["twice"]
    for check in ("other_settings", "window", "reduced", "too_large"):
        assert out[check], check
    assert out["warned"] and out["corrupt"] and out["changed"] and out["closed"] and out["default"]
    assert out["logged"] and out["printed"] and out["stack"]
    assert out["read"] == 4 and out["taken"] == 1  # good, changed, big and the stack were read
    # what the reading process's reads said is left for the run to say
    assert "GDAL: odd tag" not in out["stderr"] and "a C library" not in out["stderr"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reads fork (Linux only)")
def test_the_budget_bounds_what_is_read(files, tmp_path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the reads start with two usable cores")
    out = _script(tmp_path, files, BUDGET="4096")  # less than the first file's pixels
    assert out["started"] and out["finished"] and out["read"] == 0 and out["taken"] == 0


def test_the_reads_do_not_start_where_they_are_not_safe_or_turned_off(files, tmp_path) -> None:
    """Not in a process that has imported torch (this one), and not with MSCLIP_STARTUP_READS=0."""
    assert "torch" in sys.modules and start_reads(files) is None
    out = _script(tmp_path, files, BUDGET=str(64 << 20), **{ENV: "0"})
    assert out == {"started": False, "torch": False, "stderr": ""}


def embedding_of(model, pp, path: Path) -> np.ndarray:
    from msclip.encode import iter_encoded

    (batch,) = iter_encoded(model, pp, [path], batch_size=1, nodata=0)
    return batch.embeddings


class _Ahead:
    """Reads made ahead that hold one file; records what they were asked."""

    def __init__(self, path: Path, data: np.ndarray) -> None:
        self.path, self.data, self.asked = os.fspath(path), data, []

    def take(self, path, **settings):
        self.asked.append((os.fspath(path), settings))
        if os.fspath(path) != self.path:
            return None
        return self.data, L2A, 0.0


def test_a_dataset_takes_files_read_ahead_with_its_transform_s_settings(make_geotiff) -> None:
    """The dataset asks with the transform's reading settings and its nodata; a file the reads do
    not hold is read from disk; DataLoader workers never take."""
    import msclip
    from msclip.encode import ImageDataset, iter_encoded

    a, _ = make_geotiff("a.tif", size=(32, 32))
    b, data_b = make_geotiff("b.tif", size=(32, 32), seed=4)
    model = msclip.create_model("msclip-tiny", pretrained=False)
    pp = model.preprocess(sensor="sentinel2_l2a", max_pixels=5000)
    ahead_data = np.full((12, 32, 32), 700, dtype=np.uint16)
    ahead = _Ahead(a, ahead_data)
    ds = ImageDataset([a, b], pp, nodata=0, startup=ahead)
    got_a, got_b = ds.read_item(0), ds.read_item(1)
    assert ahead.asked[0] == (os.fspath(a), {
        "bands": None, "layout": None, "sensor": "sentinel2_l2a", "nodata": 0,
        "max_pixels": 5000, "shorter_side": None,
    })  # fmt: skip
    assert torch.equal(got_a["image"], pp.process(ahead_data, L2A, 0.0))
    plain = ImageDataset([b], pp, nodata=0).read_item(0)
    assert torch.equal(got_b["image"], plain["image"])  # read from disk, as without the reads
    assert not np.array_equal(data_b, ahead_data)
    reduced = model.preprocess(downsample=True)
    ImageDataset([a], reduced, startup=ahead).read_item(0)
    assert ahead.asked[-1][1]["shorter_side"] == model.image_size

    def embedding(workers: int) -> np.ndarray:
        (batch,) = iter_encoded(model, pp, [a], batch_size=1, workers=workers, nodata=0,
                                startup=ahead)  # fmt: skip
        return batch.embeddings

    from_disk = embedding(1)  # a worker reads the file itself, never what was read ahead
    assert np.allclose(from_disk, embedding_of(model, pp, a), atol=1e-6)
    assert not np.allclose(embedding(0), from_disk, atol=1e-3)


class _Served:
    """Reads ahead as msclip-inference gets them from start_reads: the files' own reads."""

    def __init__(self, paths, **settings) -> None:
        self.paths, self.settings, self.taken, self.closed = list(paths), settings, [], 0

    def take(self, path, **settings):
        from msclip.io.readers import read_raster

        self.taken.append((os.fspath(path), settings))
        r = read_raster(path)
        return r.data, r.bands, r.nodata

    def close(self) -> None:
        self.closed += 1


def _classify(folder: Path, out: Path, *extra: str) -> int:
    from msclip.cli.inference import main

    argv = ["--run-classification", "--model-name", "msclip-tiny", "--no-pretrained",
            "--images", str(folder), "--class-names", "forest", "river", "--templates", "short",
            "--no-text-cache", "--save-path", str(out), "--quiet", *extra]  # fmt: skip
    return main(argv)


def test_the_programs_take_what_was_read_ahead_and_stop_the_reads(
    make_geotiff, tmp_path, monkeypatch
) -> None:
    """Classification starts the reads with its flags, encodes from them and stops them at the
    end; a run with workers stops them once the model is loaded and never takes."""
    import msclip.io.prefetch as prefetch

    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(3):
        make_geotiff(f"tiles/t{i}.tif", size=(32, 32), seed=10 + i)
    assert _classify(folder, tmp_path / "plain.csv") == 0  # torch is imported: no reads here
    made = []

    def start(paths, **kw):
        made.append(_Served(paths, **kw))
        return made[-1]

    monkeypatch.setattr(prefetch, "start_reads", start)
    assert _classify(folder, tmp_path / "ahead.csv", "--nodata", "0", "--sensor",
                     "sentinel2_l2a") == 0  # fmt: skip
    (served,) = made
    assert served.settings == {"layout": None, "sensor": "sentinel2_l2a", "nodata": 0.0}
    assert sorted(p for p, _ in served.taken) == sorted(map(str, folder.glob("*.tif")))
    assert all(s["nodata"] == 0.0 and s["sensor"] == "sentinel2_l2a" for _, s in served.taken)
    assert served.closed == 1
    assert _classify(folder, tmp_path / "ahead2.csv") == 0
    assert (tmp_path / "ahead2.csv").read_text() == (tmp_path / "plain.csv").read_text()
    assert made[1].closed == 1 and len(made[1].taken) == 3
    assert _classify(folder, tmp_path / "workers.csv", "--workers", "1") == 0
    assert len(made) == 2  # --workers: not started
    assert _classify(folder, tmp_path / "bands.csv", "--bands", *L2A) == 0
    assert len(made) == 2  # --bands: not started

    import argparse

    from msclip.cli.common import keep_reads_ahead

    reads = _Served([])
    assert keep_reads_ahead(argparse.Namespace(workers=0), reads) is reads and not reads.closed
    assert keep_reads_ahead(argparse.Namespace(workers=14), reads) is None  # a GPU run's workers
    assert reads.closed == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reads fork (Linux only)")
def test_the_programs_take_the_files_read_while_they_start(make_geotiff, tmp_path) -> None:
    """msclip-inference (its real entry point, torch not yet imported) forks the reads and writes
    what it writes without them. How many files the reading process finishes before the run
    takes the first depends on the machine's load (it runs at the lowest priority); every one it
    finished is used."""
    import re

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the reads start with two usable cores")
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(5):
        make_geotiff(f"tiles/t{i}.tif", size=(32, 32), seed=10 + i)
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    outs = {}
    for mode in ("1", "0"):
        out = tmp_path / f"out{mode}.csv"
        e[ENV] = mode
        done = subprocess.run(
            [sys.executable, "-m", "msclip.cli.inference", "--run-classification",
             "--model-name", "msclip-tiny", "--no-pretrained", "--images", str(folder),
             "--class-names", "forest", "river", "--templates", "short", "--no-text-cache",
             "--save-path", str(out), "--quiet", "-v"],
            capture_output=True, text=True, timeout=300, env=e,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs[mode] = (out.read_text(), done.stderr)
    assert outs["1"][0] == outs["0"][0]
    found = re.search(r"(\d+) of 5 input files were read during start-up, (\d+) of them used",
                      outs["1"][1])  # fmt: skip
    assert found is not None and found.group(1) == found.group(2)
    assert "read during start-up" not in outs["0"][1]
