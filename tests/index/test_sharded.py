"""Sharded index builds: balancing, spool resumption, and ``torchrun`` with two gloo processes
against a one-process build (same ids and metadata, embeddings to 1e-6), after killed runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from affine import Affine
from rasterio.crs import CRS

import msclip
from msclip.index import IndexStore
from msclip.index.build import build_index, encode_sources, plan_sources
from msclip.index.sharded import (
    SPOOL_DIR,
    _spool_key,
    _write_spool,
    assign_sources,
    build_sharded,
)

REPO = Path(msclip.__file__).resolve().parent.parent
TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--seed", "0", "--quiet",
        "--batch-size", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Five 10-band 32x32 files (one unreadable) and two scenes of 2x3 and 3x3 tiles."""
    root = tmp_path_factory.mktemp("shard_inputs")
    rng = np.random.default_rng(5)
    files = []
    for i in range(5):
        p = root / "files" / f"f{i}.tif"
        p.parent.mkdir(exist_ok=True)
        tf = Affine(10, 0, 500000 + 400 * i, 0, -10, 5000000)
        data = rng.integers(1, 6000, (10, 32, 32)).astype("uint16")
        msclip.write_geotiff(p, data, crs=CRS.from_epsg(32632), transform=tf)
        files.append(p)
    (root / "files" / "broken.tif").write_bytes(b"not a tiff")
    files.append(root / "files" / "broken.tif")
    scenes = []
    for i, (h, w) in enumerate([(64, 96), (96, 96)]):
        p = root / f"scene{i}.tif"
        msclip.write_geotiff(p, rng.integers(1, 6000, (10, h, w)).astype("uint16"),
                             crs=CRS.from_epsg(32633),
                             transform=Affine(10, 0, 300000, 0, -10, 4000000))  # fmt: skip
        scenes.append(p)
    return files, scenes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = msclip.create_model("msclip-tiny")
    return m, m.preprocess()


def _same_index(a: Path, b: Path) -> None:
    sa, sb = IndexStore.open(a), IndexStore.open(b)
    assert sa.count == sb.count > 0
    assert [s.key for s in sa.sources] == [s.key for s in sb.sources]
    assert [(s.start, s.stop) for s in sa.sources] == [(s.start, s.stop) for s in sb.sources]
    pd.testing.assert_frame_equal(sa.metadata, sb.metadata)
    np.testing.assert_allclose(sa.embeddings, sb.embeddings, rtol=0, atol=1e-6)
    assert sa.model_info == sb.model_info
    assert not (a / SPOOL_DIR).exists()


def test_sources_are_dealt_by_item_count() -> None:
    # a big scene goes to one process, the files fill the other
    assert assign_sources([9, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1]
    assert assign_sources([1, 1, 1, 1], 2) == [0, 1, 0, 1]
    assert assign_sources([0, 0], 3) == [0, 1]  # sources without items still count


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_spooled_encodings_of_a_killed_process_are_used(
    inputs, model, tmp_path, one_process_group
) -> None:
    files, scenes = inputs
    m, pre = model
    ref = tmp_path / "one.index"
    build_index(ref, m, pre, [str(f) for f in files], [str(s) for s in scenes], commit_seconds=0)
    # A killed run: process 1 spooled two of its sources, then the group died.
    idx = tmp_path / "shard.index"
    sources = plan_sources([str(f) for f in files], [str(s) for s in scenes], 32)
    (idx / SPOOL_DIR).mkdir(parents=True)
    key = _spool_key(m, pre, 32, None, 0.5, None)
    for done in encode_sources(m, pre, [sources[1], sources[5]], [1, 5]):
        _write_spool(idx / SPOOL_DIR, done, sources[done.position].key, key)
    # and was killed while it spooled a third: its temporary file goes with the spool
    (idx / SPOOL_DIR / ".tmp-source-00000003.npz.k2x9.npz").write_bytes(b"half")
    # and a stale encoding of another model is dropped
    torch.manual_seed(1)
    other = msclip.create_model("msclip-tiny")
    for done in encode_sources(other, pre, [sources[2]], [2]):
        _write_spool(
            idx / SPOOL_DIR, done, sources[2].key, _spool_key(other, pre, 32, None, 0.5, None)
        )
    # as is one of another tiling (a rerun with another --stride): its windows are not these
    strided = plan_sources([], [str(scenes[0])], 32, 16)[0]
    for done in encode_sources(m, pre, [strided], [6]):
        _write_spool(idx / SPOOL_DIR, done, sources[6].key, _spool_key(m, pre, 32, 16, 0.5, None))
    encoded: list[int] = []
    report = build_sharded(
        idx, m, pre, [str(f) for f in files], [str(s) for s in scenes], commit_seconds=0,
        on_source=encoded.append, rank=0, world=1,
    )  # fmt: skip
    assert 1 not in encoded and 5 not in encoded  # spooled ones not redone
    assert 2 in encoded and 6 in encoded  # another model's, another tiling's: encoded again
    assert report.count == IndexStore.open(ref).count and len(report.failures) == 1
    _same_index(idx, ref)


def test_abort_on_stops_either_build_and_keeps_what_came_before(
    inputs, model, tmp_path, one_process_group
) -> None:
    """An item of ``abort_on`` (a file larger than the preprocessing allows) stops the build with
    its own error; the sources of earlier batches are committed. Without ``abort_on`` it is one
    unreadable file."""
    from msclip.errors import RasterTooLargeError

    files, _ = inputs
    m, _ = model
    pre = m.preprocess(max_pixels=40 * 40)
    big = tmp_path / "z_big.tif"
    msclip.write_geotiff(big, np.full((10, 64, 64), 900, "uint16"), crs=CRS.from_epsg(32632),
                         transform=Affine(10, 0, 500000, 0, -10, 5000000))  # fmt: skip
    given = [str(files[0]), str(files[1]), str(big)]
    for name, build in (("one", build_index), ("shard", build_sharded)):
        idx = tmp_path / f"{name}.index"
        with pytest.raises(RasterTooLargeError, match=r"z_big\.tif is 64x64 pixels"):
            build(idx, m, pre, given, commit_seconds=0, batch_size=1,
                  abort_on=(RasterTooLargeError,))  # fmt: skip
        kept = [Path(s.key).name for s in IndexStore.open(idx).sources]
        assert kept == ["f0.tif", "f1.tif"]
    report = build_index(tmp_path / "lenient.index", m, pre, given, batch_size=1)
    assert [Path(f.name).name for f in report.failures] == ["z_big.tif"]


WORKER = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    import msclip
    from msclip.index.sharded import build_sharded

    index, kill_rank, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    files, scenes = sys.argv[4].split(","), sys.argv[5].split(",")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny")
    model.init_seed = 0  # recorded as the programs record the seed of random weights
    seen = []

    def on_source(position):
        seen.append(position)
        if rank == kill_rank and len(seen) >= kill_after:
            os._exit(9)  # killed: no clean-up, no commit

    build_sharded(index, model, model.preprocess(), files, scenes, batch_size=3,
                  commit_seconds=0, on_source=on_source, rank=rank, world=world)
    dist.destroy_process_group()
    """
)


def _torchrun(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.mark.slow
def test_torchrun_build_equals_one_process_and_resumes_after_kills(inputs, tmp_path) -> None:
    files, scenes = inputs
    ref = tmp_path / "one.index"
    from msclip.cli.index import main

    images = [str(f) for f in files]
    assert main(["build", str(ref), "--images", *images, "--scenes", *map(str, scenes), *TINY,
                 "--skip-bad"]) == 0  # fmt: skip

    # the command line under torchrun (with progress bars: not --quiet)
    two = tmp_path / "two.index"
    loud = [a for a in TINY if a != "--quiet"]
    proc = _torchrun(["-m", "msclip.index", "build", str(two), "--images", *images, "--scenes",
                      *map(str, scenes), *loud], tmp_path, check=False)  # fmt: skip
    # one bar, process 0's, over the whole group's images as they reach the index (it showed
    # its own share, then waited for the others with nothing moving)
    total = IndexStore.open(ref).count + 1  # the unreadable file counts among the images
    assert re.search(rf"index \(2 processes\): 100%.*\b{total}/{total}\b", proc.stderr), (
        proc.stderr[-3000:]
    )
    assert "index: " not in proc.stderr  # no bar of one process's share
    # status lines once, from process 0 (the processes compare model and precision)
    assert proc.stderr.count("precision: ") == 1 and proc.stderr.count("loading ") <= 1
    # the unreadable file, whichever process read it, is named by process 0, which gives the
    # status (1, as one process without --skip-bad) once everything is committed
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout.count("embeddings in the index") == 1  # process 0 prints the summary
    assert "broken.tif" in proc.stderr and "SIGTERM" not in proc.stderr
    _same_index(two, ref)

    # killed runs: process 1 dies after spooling one source, then process 0 after adding two
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    killed = tmp_path / "killed.index"
    args = [str(worker), str(killed)]
    lists = [",".join(images), ",".join(map(str, scenes))]
    assert _torchrun([*args, "1", "1", *lists], tmp_path, check=False).returncode != 0
    assert _torchrun([*args, "0", "2", *lists], tmp_path, check=False).returncode != 0
    partial = IndexStore.open(killed)
    assert 0 < partial.count < IndexStore.open(ref).count  # some work committed, not all
    _torchrun([*args, "-1", "0", *lists], tmp_path)
    _same_index(killed, ref)

    # an index process 0 refuses (another model): every process leaves with its usage error
    other = ["--model-name", "msclip-tiny", "--no-pretrained", "--seed", "7", "--quiet"]
    proc = _torchrun(["-m", "msclip.index", "add", str(ref), "--images", images[0], *other],
                     tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0  # torchrun's own status when a process fails (and its report)
    assert proc.stderr.count("error: the index was built with another model") == 2
    assert "exitcode: 2" in proc.stderr  # each process left with the usage error's status
    assert "internal error" not in proc.stderr and "could not open the index" not in proc.stderr


def test_process_0_takes_sources_off_the_front_of_its_queue(tmp_path) -> None:
    """The writer adds sources strictly in plan order, as they become available, and stops at
    the first one still missing; the queue is consumed in place (a list sliced per source was
    quadratic in the number of sources: minutes for an archive of 10^5 files)."""
    from collections import deque

    from msclip.index.build import BuildReport, EncodedSource, Source
    from msclip.index.sharded import _ingest
    from msclip.index.store import IndexWriter

    n = 6
    sources = [Source(f"f{i}.tif", f"/data/f{i}.tif") for i in range(n)]
    rows = np.eye(n, 8, dtype=np.float32)
    own = {i: EncodedSource(i, rows[i : i + 1], [{"i": i}]) for i in (0, 1, 2, 4, 5)}  # 3 late
    pending = deque(range(n))
    report = BuildReport()
    with IndexWriter.open_or_create(tmp_path / "x.index", 8, {"name": "m"}) as writer:
        _ingest(writer, sources, pending, own, tmp_path / "spool", "fp", report, 0.0, 0.0)
        assert list(pending) == [3, 4, 5] and writer.count == 3
        own[3] = EncodedSource(3, rows[3:4], [{"i": 3}])
        _ingest(writer, sources, pending, own, tmp_path / "spool", "fp", report, 0.0, 0.0)
        assert not pending and writer.count == n
    assert IndexStore.open(tmp_path / "x.index").metadata["i"].tolist() == list(range(n))


def test_other_processes_raise_what_process_0_met() -> None:
    from msclip.errors import IndexMismatchError, OutputPathError
    from msclip.index.sharded import _process_zero_error

    err = _process_zero_error({"error": "x", "kind": "IndexMismatchError", "message": "another "
                               "model", "param": "model_name"}, "a.index")  # fmt: skip
    assert type(err) is IndexMismatchError and str(err) == "another model"
    assert err.param == "model_name"
    err = _process_zero_error({"error": "e", "kind": "OutputPathError", "message": "read-only",
                               "param": None}, "a.index")  # fmt: skip
    assert isinstance(err, OutputPathError) and str(err) == "read-only"
    err = _process_zero_error({"error": "KeyError: 'k'", "kind": "KeyError", "message": "'k'"},
                              "a.index")  # fmt: skip
    assert type(err) is RuntimeError and "process 0 could not open the index a.index" in str(err)


def test_a_one_process_build_drops_the_spool_of_an_interrupted_sharded_one(inputs, model, tmp_path):
    """Encodings another process spooled before a sharded build was stopped are of committed
    sources once a one-process build has finished: they are removed, not kept for good, as are
    the temporary file of a process killed while it spooled (no run took it; the spool stayed)
    and the processes' signs of life and errors."""
    m, pre = model
    files, _ = inputs
    good = [f for f in files if "broken" not in f.name][:2]
    idx = tmp_path / "x.index"
    spool = idx / SPOOL_DIR
    spool.mkdir(parents=True)
    for i in range(2):
        (spool / f"source-{i:08d}.npz").write_bytes(b"spooled")
    # and what a process killed while it spooled a source left, its sign of life and error
    for name in (".tmp-source-00000003.npz.k2x9.npz", "alive-1", "failed-2"):
        (spool / name).write_bytes(b"left")
    build_index(idx, m, pre, [str(f) for f in good])
    assert not spool.exists() and IndexStore.open(idx).count == 2


def test_build_with_part_of_torchruns_environment_is_a_usage_error(
    inputs, tmp_path, monkeypatch, capsys
) -> None:
    """A process started by hand with WORLD_SIZE but no RANK: the variable is named (exit 2),
    not an internal error (a KeyError) or a wait."""
    from msclip.cli.index import main

    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    files, _ = inputs
    code = main(["build", str(tmp_path / "x.index"), "--images", str(files[0]), *TINY])
    assert code == 2
    assert "error: RANK is not set, but WORLD_SIZE=2" in capsys.readouterr().err


def _rank_one_plans(monkeypatch, identity) -> None:
    """A group of two whose process 1 sends ``identity(own)`` in the plan check."""

    def gather(out, mine):
        out[:] = [mine, identity(mine)]

    monkeypatch.setattr(dist, "all_gather_object", gather)


def test_processes_given_other_arguments_are_refused_before_the_index_is_made(
    inputs, model, tmp_path, monkeypatch
) -> None:
    """Every process of a torchrun build plans its own sources and loads its own model: one
    given other inputs, another tiling or another precision (the automatic one differs between
    machines) is refused in every process, naming what differs, before the index folder is
    made. Process 1's encodings were spooled under process 0's positions and refused there as
    "from another model" (precision, model), or read past the end of its plan (an IndexError)."""
    from msclip.errors import InvalidArgumentError
    from msclip.index.sharded import _check_same_plan, _plan_identity, _read_settings

    files, scenes = inputs
    m, pre = model
    images = [str(f) for f in files]
    idx = tmp_path / "x.index"

    def other(**change):
        def identity(mine):
            return {**mine, **change}

        return identity

    theirs = plan_sources(images[:2], [], 32)
    fewer = _plan_identity(theirs, m, _read_settings(pre, 32, None, 0.5, None), "fp x")
    cases = [
        (other(**{k: fewer[k] for k in ("sources", "digest", "first")}),
         r"process 1 plans other sources than process 0: 2 \(the first .*f0\.tif\) against 8"),
        (lambda mine: {**mine, "settings": {**mine["settings"], "stride": 16},
                       "fingerprint": mine["fingerprint"] + " stride 16"},
         r"process 1 reads its sources with other settings than process 0: stride 16 \(process "
         r"0: 32\)"),
        (lambda mine: {**mine, "model": {**mine["model"], "precision": "int8"},
                       "precision_reason": "asked for", "fingerprint": "x"},
         rf"process 1 encodes with another model than process 0: precision 'int8' \(process 0: "
         rf"'{m.precision}'\).*process 1 chose int8 \(asked for\), process 0 {m.precision} "),
    ]  # fmt: skip
    for identity, message in cases:
        _rank_one_plans(monkeypatch, identity)
        with pytest.raises(InvalidArgumentError, match=message):
            build_sharded(idx, m, pre, images, [str(s) for s in scenes], rank=0, world=2)
        assert not idx.exists()
    _rank_one_plans(monkeypatch, lambda mine: dict(mine))  # the same plan passes
    _check_same_plan(fewer, 2)


PER_RANK = textwrap.dedent(
    """
    import os, sys
    from msclip.cli.index import main

    args, extra = sys.argv[1 : sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1 :]
    sys.exit(main(args + (extra if os.environ["RANK"] == "1" else [])))
    """
)


@pytest.mark.slow
def test_torchrun_processes_given_another_precision_both_refuse(inputs, tmp_path) -> None:
    """msclip-index build under torchrun, process 1 with another --precision: both processes
    leave with the usage error (not an internal error once process 1's encodings reached
    process 0), and no index is made."""
    files, _ = inputs
    worker = tmp_path / "per_rank.py"
    worker.write_text(PER_RANK)
    idx = tmp_path / "x.index"
    proc = _torchrun([str(worker), "build", str(idx), "--images", *map(str, files[:3]), *TINY,
                      "--precision", "fp32", "--", "--precision", "int8"], tmp_path,
                     check=False)  # fmt: skip
    assert proc.returncode != 0
    err = "error: process 1 encodes with another model than process 0: precision 'int8' "
    assert proc.stderr.count(err) == 2, proc.stderr[-3000:]
    assert "exitcode: 2" in proc.stderr and "internal error" not in proc.stderr
    assert not idx.exists()


UNWATCHED = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    import msclip
    from msclip.errors import ProcessGroupError
    from msclip.index import sharded

    sharded._BEAT_SECONDS, sharded._SILENCE_SECONDS = 0.2, 2.0
    index, files = sys.argv[1], sys.argv[2].split(",")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny")

    def on_source(position):
        if rank == 1:
            os._exit(9)  # killed after spooling its first source; nothing stops process 0

    try:
        sharded.build_sharded(index, model, model.preprocess(), files, batch_size=1,
                              commit_seconds=0, on_source=on_source, rank=rank, world=2)
    except ProcessGroupError as err:
        print(err)
        sys.exit(3)
    """
)


@pytest.mark.slow
def test_process_0_stops_when_another_process_dies_outside_torchrun(
    inputs, model, tmp_path, one_process_group
) -> None:
    """Processes started without torchrun (a batch system's tasks): when one dies, nothing stops
    process 0, which waited for its sources for good. It now stops once the dead process has
    given no sign of life for a while, naming it and the source it waits for, keeping what is
    committed; a rerun resumes."""
    import socket

    files, _ = inputs
    good = [str(f) for f in files if "broken" not in f.name]
    worker = tmp_path / "unwatched.py"
    worker.write_text(UNWATCHED)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    idx = tmp_path / "x.index"
    procs = []
    for rank in (0, 1):
        path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=path)  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(worker), str(idx), ",".join(good)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    try:
        out, err = procs[0].communicate(timeout=60)  # it waited for good
        procs[1].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 9 and procs[0].returncode == 3, err[-3000:]
    assert "process 1 has given no sign of life for 2 s, and " in out
    assert "f3.tif, which it encodes, is not in" in out and "rerun the same command" in out
    assert 0 < IndexStore.open(idx).count < len(good)  # process 0's sources before it
    m, pre = model
    build_sharded(idx, m, pre, good, rank=0, world=1)  # the rerun, here with one process
    ref = tmp_path / "ref.index"
    build_index(ref, m, pre, good)
    _same_index(idx, ref)
    assert not (idx / SPOOL_DIR).exists()  # nor the signs of life


def test_process_0_names_the_error_another_process_stopped_with(tmp_path) -> None:
    """A process that fails leaves its error for process 0, which stops at once with it (not
    after the silence); a process still giving signs of life is waited for."""
    from msclip.errors import ProcessGroupError
    from msclip.index.build import Source
    from msclip.index.sharded import _clear_signs, _Heartbeat, _Watch

    spool = tmp_path / "spool"
    spool.mkdir()
    work = [Source("a.tif", "/data/a.tif"), Source("b.tif", "/data/b.tif")]
    watch = _Watch(spool, {0: 0, 1: 1}, work)
    watch.check(0)  # process 0's own: nothing to wait for
    beat = _Heartbeat(spool, 1)
    watch.check(1)
    beat.stop()  # after its first sign at least
    assert (spool / "alive-1").read_text() == "1"
    (spool / "failed-1").write_text("RasterTooLargeError: /data/c.tif is 9x9 pixels")
    with pytest.raises(ProcessGroupError, match=r"process 1 stopped before it encoded "
                       r"/data/b.tif \(RasterTooLargeError: /data/c.tif is 9x9 pixels; its "
                       r"output says more\); the sources committed"):  # fmt: skip
        watch.check(1)
    _clear_signs(spool)
    assert not list(spool.iterdir())


def test_an_index_some_process_cannot_see_is_refused(inputs, model, tmp_path, monkeypatch):
    """Across machines, an index path on a disk of each machine's own: another process would
    spool its share where process 0 never looks, and process 0 wait for it. Every process
    checks that it sees what process 0 wrote in the spool; one that does not stops them all,
    named with its machine, and process 0 lets go of the index."""
    from msclip.errors import ProcessGroupError

    files, _ = inputs
    m, pre = model
    good = [str(f) for f in files if "broken" not in f.name]
    calls: list[str] = []

    def gather(out, mine):
        calls.append("gather")
        # the plans agree; process 1, on another machine, sees no spool
        out[:] = [mine, mine] if len(calls) == 1 else [mine, (False, "node-b")]

    monkeypatch.setattr(dist, "all_gather_object", gather)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda payload, src: None)
    idx = tmp_path / "x.index"
    with pytest.raises(ProcessGroupError, match=r"process 1 \(on node-b\) cannot see what "
                       r"process 0 \(on .*\) writes in the index .*x\.index: .*storage every "
                       r"machine sees"):  # fmt: skip
        build_sharded(idx, m, pre, good, rank=0, world=2)
    assert len(calls) == 2
    assert [p.name[:4] for p in (idx / SPOOL_DIR).iterdir()] == ["run-"]  # what it looked for
    build_index(idx, m, pre, good)  # the writer's lock was let go; the mark goes with the spool
    assert not (idx / SPOOL_DIR).exists()


def test_a_process_sees_the_mark_of_process_0(tmp_path, monkeypatch) -> None:
    from msclip.index import sharded

    monkeypatch.setattr(sharded, "_SHARED_WAIT_SECONDS", 0.3)
    mark = tmp_path / "run-1"
    assert not sharded._appears(mark)
    mark.write_text("host")
    assert sharded._appears(mark)
