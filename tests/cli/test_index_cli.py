"""``msclip-index``: build from files and scene tiles, resume, model refusal, search, GeoJSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS

import msclip
from msclip.cli.index import main
from msclip.index.store import IndexStore

TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--quiet", "--batch-size", "4"]
ORIGIN = Affine(10, 0, 500000, 0, -10, 5000000)


def _write(path: Path, data: np.ndarray, x0: float = 500000, nodata: float | None = None) -> Path:
    msclip.write_geotiff(
        path,
        data,
        crs=CRS.from_epsg(32632),
        transform=Affine(10, 0, x0, 0, -10, 5000000),
        nodata=nodata,
    )
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four 40x40 tiles and one 96x128 scene whose right quarter is nodata."""
    root = tmp_path_factory.mktemp("idx_inputs")
    rng = np.random.default_rng(3)
    (root / "files").mkdir()
    files = [
        _write(
            root / "files" / f"f{i}.tif",
            rng.integers(1, 6000, (12, 40, 40)).astype("uint16"),
            500000 + 1000 * i,
        )
        for i in range(4)
    ]
    scene = rng.integers(1, 6000, (12, 96, 128)).astype("uint16")
    scene[:, :, 96:] = 0
    return files, _write(root / "scene.tif", scene, nodata=0), scene


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = msclip.create_model("msclip-tiny")
    return m, m.preprocess(), msclip.get_tokenizer(m)


def _encode(m, x) -> np.ndarray:
    with torch.no_grad():
        return m.encode_image(x[None], normalize=True)[0].numpy()


def test_build_files_and_scene_tiles(inputs, model, tmp_path):
    files, scene_path, scene = inputs
    idx = tmp_path / "a.index"
    rc = main(
        ["build", str(idx), "--images", str(files[0].parent), "--scenes", str(scene_path), *TINY]
    )
    assert rc == 0
    store = IndexStore.open(idx)
    # 4 files + a 3x4 grid of 32 px tiles, minus the 3 tiles of the nodata column.
    assert store.count == 4 + 9 and store.dim == 32
    meta = store.metadata
    assert meta["path"].tolist()[:4] == [str(f) for f in files]
    assert meta["tile"].tolist() == [False] * 4 + [True] * 9
    tiles = meta[meta["tile"]]
    assert sorted(set(tiles["col"])) == [0, 32, 64] and sorted(set(tiles["row"])) == [0, 32, 64]
    assert (tiles["crs"] == "EPSG:32632").all()
    t = tiles[(tiles["row"] == 32) & (tiles["col"] == 64)].iloc[0]
    assert (t["minx"], t["miny"], t["maxx"], t["maxy"]) == (500640, 4999360, 500960, 4999680)

    m, pp, _ = model
    bands = msclip.spectral.bands.default_bands_for_count(12)
    window = _encode(m, pp(msclip.Raster(scene[:, 32:64, 64:96], bands)))
    np.testing.assert_allclose(store.embeddings[t.name], window, atol=1e-5)
    np.testing.assert_allclose(store.embeddings[0], _encode(m, pp(str(files[0]))), atol=1e-5)
    manifest_model = store.model_info
    assert manifest_model["name"] == "msclip-tiny" and manifest_model["bands"] == list(m.bands)
    assert manifest_model["checkpoint_sha256"] == m.checkpoint_sha256
    assert {"mean", "std", "image_size"} <= set(manifest_model["preprocessing"])

    # info prints the facts.
    assert main(["info", str(idx)]) == 0


def test_resume_skips_finished_files_and_add(inputs, tmp_path, monkeypatch, capsys):
    files, scene_path, _ = inputs
    idx = tmp_path / "r.index"
    assert main(["build", str(idx), "--images", *map(str, files[:2]), *TINY]) == 0
    first = np.array(IndexStore.open(idx).embeddings)
    capsys.readouterr()

    calls = []
    original = msclip.MSCLIP.encode_image

    def counting(self, images, *a, **k):
        calls.append(len(images))
        return original(self, images, *a, **k)

    monkeypatch.setattr(msclip.MSCLIP, "encode_image", counting)
    # The same build again over all files: only the two new ones are encoded.
    assert main(["build", str(idx), "--images", *map(str, files), *TINY]) == 0
    assert sum(calls) == 2
    out = capsys.readouterr().out
    assert re.search(r"already indexed \(skipped\)\s+2\n", out)
    store = IndexStore.open(idx)
    assert store.metadata["path"].tolist() == [str(f) for f in files]
    np.testing.assert_array_equal(store.embeddings[:2], first)
    assert len({s.key for s in store.sources}) == 4

    # add: the scene is tiled and appended; files already there are skipped.
    calls.clear()
    assert (
        main(["add", str(idx), "--scenes", str(scene_path), "--images", str(files[0]), *TINY]) == 0
    )
    # 12 tiles are read; the 3 nodata tiles never reach the model.
    assert IndexStore.open(idx).count == 4 + 9 and sum(calls) == 9
    assert main(["add", str(tmp_path / "missing.index"), "--images", str(files[0]), *TINY]) == 2
    assert "no index at" in capsys.readouterr().err


def test_other_model_refused(inputs, tmp_path, capsys):
    files, _, _ = inputs
    idx = tmp_path / "m.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    capsys.readouterr()
    other = [*TINY, "--seed", "1"]  # other random weights: another checkpoint hash
    assert main(["search", str(idx), "--query", "x", *other]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "checkpoint_sha256" in err
    assert main(["add", str(idx), "--images", str(files[1]), *other]) == 2
    assert IndexStore.open(idx).count == 1


def test_random_weights_are_drawn_again_from_the_recorded_seed(inputs, tmp_path, capsys):
    """An index built with ``--no-pretrained --seed 3`` records the seed: ``search`` and ``add``
    without model flags draw the same weights; another seed is refused with the one to give."""
    files, _, _ = inputs
    idx = tmp_path / "s.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY, "--seed", "3"]) == 0
    assert IndexStore.open(idx).model_info["init_seed"] == 3
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    assert re.search(r"random weights +--no-pretrained --seed 3", capsys.readouterr().out)
    out = tmp_path / "hits.csv"
    assert main(["search", str(idx), "--query", "x", "--quiet", "--save-path", str(out)]) == 0
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(files[1])]) == 0
    assert IndexStore.open(idx).count == 2
    # the precision the index was built in, said as such (not as one asked for)
    assert f"precision: fp32 on cpu (auto: as the index {idx} was built)" in (
        capsys.readouterr().err
    )
    assert main(["search", str(idx), "--query", "x", *TINY, "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert "drawn at random with seed 3: use --no-pretrained --seed 3" in err


def test_an_index_of_fp16_rows_is_not_extended_on_a_cpu(inputs, tmp_path, capsys):
    """A GPU without native bf16 builds in fp16; its rows share one precision, which a CPU
    cannot compute: add says so once, instead of advising a precision the index then refuses."""
    files, _, _ = inputs
    idx = tmp_path / "h.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["model"]["precision"] = "fp16"  # as a T4 would have built it
    (idx / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(files[1]), *TINY, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "holds fp16 embeddings" in err and "add to it on a GPU, or build a new index" in err


def test_no_pretrained_is_refused_for_an_index_of_loaded_weights(inputs, tmp_path, capsys):
    """``--no-pretrained`` cannot query an index built from a weight file (the index's model is
    used whatever the flag says): a usage error, not a flag left unread."""
    files, _, _ = inputs
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    msclip.save_checkpoint(msclip.create_model("msclip-tiny", precision="fp32"), weights)
    idx = tmp_path / "w.index"
    run = ["--quiet", "--batch-size", "4"]
    assert (
        main(["build", str(idx), "--images", str(files[0]), "--ckpt-path", str(weights), *run]) == 0
    )
    assert "init_seed" not in IndexStore.open(idx).model_info
    capsys.readouterr()
    assert main(["search", str(idx), "--query", "x", "--no-pretrained", *run]) == 2
    err = capsys.readouterr().err
    assert f"--no-pretrained: the index {idx} was built with the weights of {weights}" in err
    assert main(["add", str(idx), "--images", str(files[1]), "--no-pretrained", *run]) == 2
    assert IndexStore.open(idx).count == 1


def test_other_input_rules_refused(inputs, tmp_path, capsys, monkeypatch):
    """An index records the input rules its rows were read under: adding files read under other
    rules (or to an index that predates the record) is refused with the reason, searching is
    not (text queries do not depend on them)."""
    files, _, _ = inputs
    idx = tmp_path / "r.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    from msclip.spectral.adapt import INPUT_RULES

    assert IndexStore.open(idx).model_info["input_rules"] == INPUT_RULES
    capsys.readouterr()
    monkeypatch.setattr("msclip.spectral.adapt.INPUT_RULES", INPUT_RULES + 1)
    assert main(["add", str(idx), "--images", str(files[1]), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"msclip's input rules {INPUT_RULES}" in err and "build a new index" in err
    assert IndexStore.open(idx).count == 1
    assert main(["search", str(idx), "--query", "x", "--save-path", str(tmp_path / "h.csv"),
                 *TINY]) == 0  # fmt: skip
    monkeypatch.undo()
    manifest = json.loads((idx / "manifest.json").read_text())
    del manifest["model"]["input_rules"]  # an index written before the field existed
    (idx / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(files[1]), *TINY]) == 2
    assert "input rules of an msclip that did not record them" in capsys.readouterr().err
    assert IndexStore.open(idx).count == 1


def test_search_csv_and_geojson(inputs, model, tmp_path, capsys):
    files, scene_path, _ = inputs
    idx = tmp_path / "s.index"
    assert (
        main(["build", str(idx), "--images", *map(str, files), "--scenes", str(scene_path), *TINY])
        == 0
    )
    out = tmp_path / "hits.csv"
    # No model flags: the model is taken from the manifest (msclip-tiny, random weights, seed 0).
    rc = main(
        [
            "search",
            str(idx),
            "--query",
            "a river",
            "--query-image",
            str(files[2]),
            "--top-k",
            "5",
            "--save-path",
            str(out),
            "--exact",
            "--quiet",
        ]
    )
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns[:5]) == ["Query", "Rank", "Similarity", "Id", "Image"]
    store = IndexStore.open(idx)
    m, _, tok = model
    with torch.no_grad():
        q = m.encode_text(tok(["a river"]), normalize=True).numpy()[0]
    sims = store.embeddings @ q
    expected = np.argsort(-sims, kind="stable")[:5]
    text = df[df["Query"] == "a river"]
    assert text["Id"].tolist() == expected.tolist()
    np.testing.assert_allclose(text["Similarity"], sims[expected], atol=1e-5)
    by_image = df[df["Query"] == str(files[2])]
    assert by_image["Image"].iloc[0] == str(files[2])
    record = json.loads((tmp_path / "hits.csv.json").read_text())  # what made the table
    assert record["program"] == "msclip-index" and record["mode"] == "index search"
    assert record["queries"] == ["a river", str(files[2])] and record["top_k"] == 5
    assert record["exact"] is True and record["index"]["embeddings"] == store.count
    assert record["index"]["index_id"] == store.index_id
    assert record["model"]["fingerprint"] == store.model_info["fingerprint"]
    assert record["command"][:3] == ["msclip-index", "search", str(idx)]
    assert by_image["Similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)

    # The default int8 short-list path (exact re-ranking) gives the same hits here.
    fast = tmp_path / "fast.csv"
    argv = ["search", str(idx), "--query", "a river", "--top-k", "5", "--save-path", str(fast)]
    assert main([*argv, "--quiet"]) == 0
    assert pd.read_csv(fast)["Id"].tolist() == expected.tolist()

    geo = json.loads(out.with_suffix(".geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(df)
    for feat, (_, row) in zip(geo["features"], df.iterrows()):
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert (np.abs(ring[:, 0] - 9.0) < 0.1).all() and (np.abs(ring[:, 1] - 45.1) < 0.1).all()
        area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area > 0  # counter-clockwise exterior ring (RFC 7946)
        assert feat["properties"]["Id"] == row["Id"]
        assert feat["properties"]["Query"] == row["Query"]


def test_killed_build_leaves_valid_index_and_resumes(tmp_path):
    """A build killed with SIGKILL mid-way: the index opens, holds whole sources, and resumes."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(5)
    n = 40
    for i in range(n):
        _write(folder / f"t{i:03d}.tif", rng.integers(1, 6000, (12, 32, 32)).astype("uint16"))
    idx = tmp_path / "k.index"
    argv = ["build", str(idx), "--images", str(folder), "--commit-seconds", "0", *TINY[:-1], "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "msclip.index", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = idx / "manifest.json"
    deadline = time.monotonic() + 120
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        if manifest.exists():
            try:
                count = json.loads(manifest.read_text())["count"]
            except (json.JSONDecodeError, OSError):  # mid-replace on some filesystems
                count = 0
            if count >= 3:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.005)
    proc.wait(timeout=60)
    if not killed:
        pytest.skip("the build finished before it could be killed")
    store = IndexStore.open(idx)  # no CorruptIndexError
    done = store.count
    assert 3 <= done < n
    assert store.metadata["path"].tolist() == sorted(str(p) for p in folder.iterdir())[:done]

    assert main(argv) == 0
    store = IndexStore.open(idx)
    assert store.count == n
    paths = store.metadata["path"].tolist()
    assert paths == sorted(str(p) for p in folder.iterdir())  # each file once, in order
    torch.manual_seed(0)
    m = msclip.create_model("msclip-tiny")
    pp = m.preprocess()
    for i in (0, done - 1, done, n - 1):  # either side of the kill
        np.testing.assert_allclose(store.embeddings[i], _encode(m, pp(paths[i])), atol=1e-5)


def test_add_defaults_to_the_index_precision(inputs, tmp_path, capsys, monkeypatch):
    """The default precision of ``add`` is the index's, whatever ``auto`` picks here; another
    explicit precision is refused naming --precision."""
    import msclip.hardware

    files, _, _ = inputs
    idx = tmp_path / "p.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY, "--precision", "fp32"]) == 0
    # auto picks bf16 (as on any CPU with native bf16)
    monkeypatch.setenv(msclip.hardware.PRECISION_ENV, "bf16")
    assert main(["add", str(idx), "--images", str(files[1]), *TINY]) == 0
    assert IndexStore.open(idx).count == 2
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(files[2]), *TINY, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "its rows are in fp32: use that precision (--precision fp32)" in err


def test_add_keeps_the_fused_fp32_path_of_auto(inputs, tmp_path, capsys, monkeypatch):
    """``auto`` on a CPU without native bf16 runs the image tower on the fused fp32 path, which
    no explicit precision names: ``add`` asked for 'fp32' (the index's precision) and so ran
    OpenCLIP's arithmetic, slower there and not the arithmetic of the index's rows."""
    from msclip import hardware
    from msclip.factory import FUSED_FP32_NOTE

    zen3 = hardware.CPUInfo("AMD EPYC 7B13", "AVX2", frozenset({"avx2", "fma"}), torch.__version__)
    monkeypatch.setattr(hardware, "cpu_info", lambda: zen3)
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    files, _, _ = inputs
    loud = [a for a in TINY if a != "--quiet"]  # the precision line
    idx = tmp_path / "f.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    reason = IndexStore.open(idx).model_info["precision_reason"]
    if not reason.endswith(FUSED_FP32_NOTE):
        pytest.skip("the fused fp32 kernels do not pass their self-test on this machine")
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(files[1]), *loud]) == 0
    err = capsys.readouterr().err
    assert f"precision: fp32 on cpu (auto: as the index {idx} was built{FUSED_FP32_NOTE})" in err
    assert IndexStore.open(idx).count == 2
    # an index built with an explicit fp32 (OpenCLIP's arithmetic) keeps it
    ref = tmp_path / "r.index"
    assert main(["build", str(ref), "--images", str(files[0]), *TINY, "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["add", str(ref), "--images", str(files[1]), *loud]) == 0
    err = capsys.readouterr().err
    assert f"precision: fp32 on cpu (auto: as the index {ref} was built)\n" in err


def test_an_index_that_cannot_be_written_is_named(inputs, tmp_path, capsys):
    files, _, _ = inputs
    idx = tmp_path / "ro.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    capsys.readouterr()
    lock = idx / ".writer.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()  # the lock file cannot be opened for writing (as on a read-only disk)
    assert main(["add", str(idx), "--images", str(files[1]), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the index {idx}" in err and "copy it to a writable place" in err
    assert "Traceback" not in err and IndexStore.open(idx).count == 1
    # an empty folder that cannot be written: no index there to search or copy
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".writer.lock").mkdir()
    assert main(["build", str(empty), "--images", str(files[0]), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the folder {empty}" in err and "copy it" not in err
    # a folder that cannot be created: named, with the fix, not as a bare errno
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "new.index":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", refuse)
        assert main(["build", str(tmp_path / "new.index"), "--images", str(files[0]), *TINY]) == 2
    err = capsys.readouterr().err
    assert "cannot create the index folder" in err and "Permission denied" in err
    assert "[Errno 13]" not in err


def test_same_weights_at_another_path_are_accepted(inputs, tmp_path, monkeypatch, capsys):
    """The checkpoint path is information: a copy of the weights, or the same file named by
    another relative path, is the same model; the manifest keeps the path absolute, so ``add``
    without model flags from another folder finds the weights."""
    files, _, _ = inputs
    torch.manual_seed(0)
    tiny = msclip.create_model("msclip-tiny", precision="fp32")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    msclip.save_checkpoint(tiny, tmp_path / "a" / "w.safetensors")
    shutil.copyfile(tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors")
    run = ["--quiet", "--batch-size", "4", "--precision", "fp32"]
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            ["build", "x.index", "--images", str(files[0]), "--ckpt-path", "a/w.safetensors", *run]
        )
        == 0
    )
    stored = IndexStore.open(tmp_path / "x.index").model_info["checkpoint_path"]
    assert stored == str(tmp_path / "a" / "w.safetensors")
    assert (
        main(["add", "x.index", "--images", str(files[1]), "--ckpt-path", "b/w.safetensors", *run])
        == 0
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["add", "../x.index", "--images", str(files[2]), "--quiet"]) == 0
    assert IndexStore.open(tmp_path / "x.index").count == 3


def test_search_without_georeferenced_hits_leaves_no_stale_geojson(inputs, tmp_path, capsys):
    files, _, _ = inputs
    geo_idx, plain_idx = tmp_path / "g.index", tmp_path / "p.index"
    plain = tmp_path / "plain.tif"
    msclip.write_geotiff(plain, np.full((12, 40, 40), 900, dtype="uint16"))  # no CRS
    assert main(["build", str(geo_idx), "--images", str(files[0]), *TINY]) == 0
    assert main(["build", str(plain_idx), "--images", str(plain), *TINY]) == 0
    out = tmp_path / "hits.csv"
    search = ["--query", "x", "--save-path", str(out), "--quiet"]
    assert main(["search", str(geo_idx), *search]) == 0
    assert out.with_suffix(".geojson").is_file()
    capsys.readouterr()
    assert main(["search", str(plain_idx), *search]) == 0
    assert not out.with_suffix(".geojson").exists()
    assert "no GeoJSON written (removed the earlier" in capsys.readouterr().out
    explicit = tmp_path / "asked.geojson"
    explicit.write_text("old")
    assert main(["search", str(plain_idx), *search, "--geojson", str(explicit)]) == 0
    assert json.loads(explicit.read_text()) == {"type": "FeatureCollection", "features": []}


def test_hits_without_georeference_left_out_of_the_geojson_are_named(inputs, tmp_path, capsys):
    """A search whose hits are partly files without a CRS: the GeoJSON holds the others, and a
    note says how many rows of the CSV it leaves out and whose, instead of fewer features than
    rows without a word."""
    files, _, _ = inputs
    plain = tmp_path / "plain.tif"
    msclip.write_geotiff(plain, np.full((12, 40, 40), 900, dtype="uint16"))  # no CRS
    idx = tmp_path / "mixed.index"
    assert main(["build", str(idx), "--images", str(files[0]), str(plain), *TINY]) == 0
    out = tmp_path / "hits.csv"
    capsys.readouterr()
    assert main(["search", str(idx), "--query", "x", "--top-k", "2", "--save-path", str(out),
                 "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    features = json.loads(out.with_suffix(".geojson").read_text())["features"]
    assert len(features) == 1 and len(pd.read_csv(out)) == 2
    assert "note: 1 of 2 results is not georeferenced (plain.tif: no CRS) and left" in printed


def test_a_scene_given_as_one_image_is_refused(inputs, tmp_path, capsys):
    """A raster far larger than the model input is refused by --images and --query-image (as
    msclip-inference refuses it), naming --scenes, instead of becoming one embedding."""
    files, _, _ = inputs
    big = _write(tmp_path / "big.tif", np.full((12, 300, 300), 900, dtype="uint16"))
    idx = tmp_path / "l.index"
    assert main(["build", str(idx), "--images", str(big), *TINY]) == 2
    err = capsys.readouterr().err
    assert "big.tif is 300x300 pixels" in err and "--scenes" in err
    assert not (idx / "manifest.json").exists()
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--query-image", str(big), "--quiet"]) == 2
    assert "big.tif is 300x300 pixels" in capsys.readouterr().err
    # a model given as a checkpoint file: its input size is known once it is loaded
    ckpt = msclip.save_checkpoint(msclip.create_model("msclip-tiny"), tmp_path / "m.safetensors")
    own = ["--ckpt-path", str(ckpt), "--quiet"]
    idx2 = tmp_path / "c.index"
    assert main(["build", str(idx2), "--images", str(files[0]), *own]) == 0
    assert main(["add", str(idx2), "--images", str(big), *own]) == 2
    assert "big.tif is 300x300 pixels" in capsys.readouterr().err
    assert main(["search", str(idx2), "--query-image", str(big), "--quiet"]) == 2  # manifest's
    assert "big.tif is 300x300 pixels" in capsys.readouterr().err
    # a file indexed whole before the refusal existed is skipped, not refused, on a re-run
    from msclip.index.build import model_info
    from msclip.index.store import IndexWriter

    m = msclip.create_model("msclip-tiny", ckpt)
    with IndexWriter.open_or_create(idx2, m.embed_dim, model_info(m)) as w:
        w.add(np.eye(1, m.embed_dim, dtype=np.float32), [{"path": str(big)}],
              source=str(big.resolve()))  # fmt: skip
    assert main(["add", str(idx2), "--images", str(big), str(files[1]), *own]) == 0


def test_a_scene_past_the_header_check_stops_the_build(inputs, tmp_path, capsys, monkeypatch):
    """Files past the first EARLY_CHECK_FILES are judged as they are read: the build stops at a
    scene given as an image with the same refusal, the sources encoded before it committed (a
    rerun without the scene resumes from them)."""
    files, _, _ = inputs
    big = _write(tmp_path / "z_big.tif", np.full((12, 300, 300), 900, dtype="uint16"))
    monkeypatch.setattr("msclip.cli.common.EARLY_CHECK_FILES", 1)
    idx = tmp_path / "late.index"
    args = ["build", str(idx), "--images", str(files[0]), str(big), "--commit-seconds", "0"]
    assert main([*args, *TINY, "--batch-size", "1"]) == 2  # the scene in a batch of its own
    err = capsys.readouterr().err
    assert "z_big.tif is 300x300 pixels" in err and "--scenes" in err
    assert "unreadable" not in err and len(err.strip().splitlines()) == 1
    assert [s.key for s in IndexStore.open(idx).sources] == [str(Path(files[0]).resolve())]


def test_search_output_paths(inputs, tmp_path, model, capsys):
    """The table and the GeoJSON are never the same file (the GeoJSON step removed the table);
    keys that are not files (Python API) leave the row's path as the hit's file."""
    from msclip.index.build import model_info
    from msclip.index.store import IndexWriter

    files, _, _ = inputs
    idx = tmp_path / "k.index"
    assert main(["build", str(idx), "--images", str(files[0]), *TINY]) == 0
    hits = tmp_path / "hits.csv"
    assert main(["search", str(idx), "--query", "x", "--save-path", str(hits), "--geojson",
                 str(hits), "--quiet"]) == 2  # fmt: skip
    assert "would both be" in capsys.readouterr().err and not hits.exists()
    # the table is CSV whatever its name: a path named as another format is refused, not
    # written as a CSV that a Parquet or GeoJSON reader cannot open
    for name in ("hits.geojson", "hits.parquet", "hits.TSV", "hits.json"):
        wrong = tmp_path / name
        assert main(["search", str(idx), "--query", "x", "--save-path", str(wrong), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"--save-path {wrong}: the results table is written as CSV" in err, name
        assert f"give a .csv path (e.g. {wrong.with_suffix('.csv')})" in err, name
        assert not wrong.exists() and not list(tmp_path.glob("hits.*"))
    # nor is the GeoJSON the table's run record
    table = tmp_path / "t.csv"
    record = tmp_path / "t.csv.json"
    assert main(["search", str(idx), "--query", "x", "--save-path", str(table), "--geojson",
                 str(record), "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "is where the search writes the run record" in err and not record.exists()
    m, _, _ = model
    api = tmp_path / "api.index"
    with IndexWriter.open_or_create(api, m.embed_dim, model_info(m)) as w:
        for i, f in enumerate(files[:2]):
            w.add(np.eye(1, m.embed_dim, k=i, dtype=np.float32), [{"path": str(f)}],
                  source=f"bigearthnet:S2A_{i}")  # fmt: skip
    out = tmp_path / "api.csv"
    assert main(["search", str(api), "--query", "x", "--save-path", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert set(pd.read_csv(out)["Image"]) == {str(f) for f in files[:2]}
    assert "no longer exist" not in err


def test_search_never_writes_over_the_index_or_its_inputs(inputs, tmp_path, capsys):
    """Outputs inside the index folder, over the queries file, a query image or an indexed file
    are refused before any search, and nothing is written."""
    import shutil

    files, _, _ = inputs
    folder = tmp_path / "tiles"
    folder.mkdir()
    tile = folder / files[0].name
    shutil.copy(files[0], tile)
    idx = tmp_path / "s.index"
    assert main(["build", str(idx), "--images", str(tile), *TINY]) == 0
    queries = tmp_path / "q.txt"
    queries.write_text("a river\n")
    kept = {f: f.read_bytes() for f in [*idx.rglob("*"), queries, tile] if f.is_file()}
    search = ["search", str(idx), *TINY]
    runs = [
        (["--query", "x", "--save-path", str(idx / "embeddings.f32")], "lies inside the index"),
        (["--query", "x", "--save-path", str(idx / "new.csv")], "lies inside the index"),
        (["--query", "x", "--geojson", str(idx / "hits.geojson")], "lies inside the index"),
        (["--queries-file", str(queries), "--save-path", str(queries)], "is the queries file"),
        (["--query-image", str(tile), "--save-path", str(tile)], "is a query image"),
        (["--query", "x", "--save-path", str(tile)], "is the indexed file"),
        # the run record beside the table (<table>.json), here a link to the queries file
        (
            ["--queries-file", str(queries), "--save-path", str(tmp_path / "r.csv")],
            f"the run also writes {tmp_path / 'r.csv.json'}, which is the queries file",
        ),
    ]
    (tmp_path / "r.csv.json").symlink_to(queries)
    for extra, message in runs:
        assert main([*search, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert {f: f.read_bytes() for f in kept} == kept
    assert not (idx / "new.csv").exists() and not (idx / "hits.geojson").exists()
    assert not (tmp_path / "r.csv").exists()


def test_an_index_kept_among_its_tiles_is_not_listed_as_images(inputs, tmp_path, capsys):
    """The index folder (its search cache of arrays, its spool) inside a folder given to
    --images is skipped, so the same build command can be rerun."""
    import shutil

    files, _, _ = inputs
    nest = tmp_path / "nest"
    nest.mkdir()
    for f in files[:3]:
        if "broken" not in f.name:
            shutil.copy(f, nest / f.name)
    idx = nest / "my.index"
    build = ["build", str(idx), "--images", str(nest), *TINY]
    assert main(build) == 0
    assert main(["search", str(idx), "--query", "a river", "--save-path",
                 str(tmp_path / "r.csv"), *TINY]) == 0  # fmt: skip
    assert any((idx / "search_cache").iterdir())  # arrays a listing would take for images
    capsys.readouterr()
    assert main(build) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert re.search(r"unreadable files / tiles\s+0 / 0", out), out


def test_a_file_given_as_image_and_as_scene_is_one_image_with_a_warning(inputs, caplog):
    from msclip.index.build import plan_sources

    _, scene, _ = inputs
    with caplog.at_level("WARNING", logger="msclip.index.build"):
        sources = plan_sources([str(scene)], [str(scene), str(scene)], 32)
    assert len(sources) == 1 and sources[0].tiles is None  # one whole image
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"{scene} is given both as an image and as a scene: indexed once, as one "
                      "image; give it only as a scene to cut it into tiles"]  # fmt: skip
    caplog.clear()
    assert len(plan_sources([], [str(scene), str(scene)], 32)[0].tiles) > 1
    assert not caplog.records  # a scene listed twice is one scene, without a warning


def test_a_file_reached_again_through_a_link_is_indexed_once(inputs, tmp_path, capsys):
    files, _, _ = inputs
    real = tmp_path / "real"
    real.mkdir()
    for f in files[:2]:
        shutil.copy(f, real / f.name)
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)  # a folder link
    os.link(real / files[0].name, tmp_path / "hard.tif")  # a hard link
    idx = tmp_path / "links.index"
    assert main(["build", str(idx), "--images", str(real), str(tmp_path / "linked"),
                 str(tmp_path / "hard.tif"), *TINY]) == 0  # fmt: skip
    err = capsys.readouterr().err  # said under --quiet: search results would repeat images
    assert "3 given file(s) are files given before under another path (links)" in err
    assert f"{tmp_path / 'hard.tif'} is {real / files[0].name}" in err
    store = IndexStore.open(idx)
    assert len(store) == 2 and sorted(s.key for s in store.sources) == sorted(
        str(real / f.name) for f in files[:2]
    )


def test_empty_or_missing_inputs_name_their_flag(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    idx = str(tmp_path / "x.index")
    for flag in ("--images", "--scenes"):
        for given in (str(tmp_path / "nosuch.tif"), str(tmp_path / "empty"),
                      str(tmp_path / "nosuch" / "*.tif")):  # fmt: skip
            assert main(["build", idx, flag, given, *TINY]) == 2, (flag, given)
            err = capsys.readouterr().err
            assert err.rstrip().endswith(f"(command-line option: {flag})"), err


def test_failed_scene_tiles_are_retried_alone(inputs, tmp_path, monkeypatch, capsys):
    """A tile that fails to read is not lost: the scene keeps its good tiles, the message counts
    tiles, and rerunning the build reads only the failed tile (no duplicates)."""
    from msclip.encode import ImageDataset

    _, scene_path, _ = inputs  # 12 tiles of 32 px, 3 of them nodata
    idx, ref = tmp_path / "t.index", tmp_path / "ref.index"
    args = ["--scenes", str(scene_path), *TINY, "--workers", "0"]
    original = ImageDataset._load
    read, broken = [], {(32, 32)}

    def flaky(self, item):
        read.append((item.row, item.col))
        if (item.row, item.col) in broken:
            raise OSError("transient read error")
        return original(self, item)

    monkeypatch.setattr(ImageDataset, "_load", flaky)
    assert main(["build", str(idx), *args]) == 1
    err = capsys.readouterr().err
    assert "1 of 12 scene tiles could not be read and was not indexed" in err
    assert IndexStore.open(idx).count == 8
    read.clear()
    broken.clear()  # the tile reads now
    assert main(["build", str(idx), *args]) == 0
    assert read == [(32, 32)]  # only the failed tile was read again
    assert main(["build", str(idx), *args]) == 0 and len(read) == 1  # done: nothing read
    monkeypatch.setattr(ImageDataset, "_load", original)
    assert main(["build", str(ref), *args]) == 0
    got, want = IndexStore.open(idx), IndexStore.open(ref)
    key = ["row", "col"]
    got_rows = got.metadata[key].apply(tuple, axis=1).tolist()
    want_rows = want.metadata[key].apply(tuple, axis=1).tolist()
    assert sorted(got_rows) == sorted(want_rows) and len(set(got_rows)) == 9
    for i, w in enumerate(got_rows):
        same = want.embeddings[want_rows.index(w)]
        np.testing.assert_allclose(got.embeddings[i], same, atol=1e-5)


def test_changed_and_vanished_files_are_named(inputs, tmp_path, capsys):
    """A file rewritten or deleted after indexing is never skipped silently: add names it,
    counts it, points to a new index (exit 1: its new content was not indexed), and search notes
    a hit whose file is gone."""
    files, _, _ = inputs
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    shutil.copyfile(files[0], a)
    shutil.copyfile(files[1], b)
    idx = tmp_path / "c.index"
    assert main(["build", str(idx), "--images", str(a), str(b), *TINY]) == 0
    shutil.copyfile(files[2], a)
    os.utime(a, ns=(1, 10**18))  # another mtime, whatever the clock's resolution
    b.unlink()
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(a), *TINY]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"changed since indexed\s+1\n", out)
    assert "indexed files that changed since they were indexed" in err and str(a) in err
    assert str(b) not in err  # only the files given to the run are looked at
    assert "build a new index" in err
    assert IndexStore.open(idx).count == 2
    assert main(["search", str(idx), "--query", "x", "--save-path", str(tmp_path / "s.csv")]) == 0
    err = capsys.readouterr().err
    assert "result files that no longer exist (their embeddings are of the files as" in err
    assert str(b) in err and "result files that changed since indexed" in err and str(a) in err
    # a fresh index of the current files is what the warning offers, and it works
    assert main(["build", str(tmp_path / "new.index"), "--images", str(a), *TINY]) == 0


def test_files_of_a_moved_archive_are_named_not_indexed_twice(inputs, tmp_path, capsys):
    """An archive moved after indexing (mv keeps names, sizes and mtimes): add given the files at
    their new paths names them with their indexed paths, counts them and exits 1 (0 with
    --skip-bad) instead of giving every image a second row; a new file, a copy under another
    name and a copy whose original is still in place are added."""
    files, scene_path, _ = inputs
    old = tmp_path / "old"
    old.mkdir()
    for f in files[:2]:
        shutil.copy2(f, old / f.name)
    shutil.copy2(scene_path, old / "scene.tif")
    idx = tmp_path / "m.index"
    argv = ["--images", str(old / files[0].name), str(old / files[1].name), "--scenes",
            str(old / "scene.tif"), *TINY]  # fmt: skip
    assert main(["build", str(idx), *argv]) == 0
    count = IndexStore.open(idx).count
    (old / files[1].name).rename(tmp_path / "kept.tif")  # moved and renamed: not recognised
    old.rename(tmp_path / "new")
    new = tmp_path / "new"
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy2(files[3], extra / files[3].name)
    capsys.readouterr()
    rc = main(["add", str(idx), "--images", str(new / files[0].name), str(extra / files[3].name),
               "--scenes", str(new / "scene.tif"), *TINY])  # fmt: skip
    assert rc == 1
    out, err = capsys.readouterr()
    rows = _summary(out)
    assert rows["moved since indexed"] == 2 and rows["sources added"] == 1
    assert f"{new / files[0].name} (indexed as {old / files[0].name})" in err
    assert f"{new / 'scene.tif'} (indexed as {old / 'scene.tif'})" in err
    assert "build a new index" in err
    store = IndexStore.open(idx)
    assert store.count == count + 1
    assert {s.key for s in store.sources} >= {str(extra / files[3].name)}
    assert str(new / files[0].name) not in {s.key for s in store.sources}
    # a copy whose original is still at its indexed path is another file: added
    shutil.copy2(extra / files[3].name, tmp_path / files[3].name)
    assert main(["add", str(idx), "--images", str(tmp_path / files[3].name), *TINY]) == 0
    assert IndexStore.open(idx).count == count + 2
    # given again with --skip-bad: still not indexed, exit 0
    argv = ["--images", str(new / files[0].name), "--skip-bad", *TINY]
    assert main(["add", str(idx), *argv]) == 0
    assert IndexStore.open(idx).count == count + 2


def test_a_file_given_with_another_tiling_is_named_not_skipped_silently(inputs, tmp_path, capsys):
    """A scene indexed as tiles of one size and given again with another tile size, stride, or
    as one image (and a file indexed whole given again as a scene) is counted and named with
    both tilings, not encoded again (one tiling per file), exit 1; given as indexed: skipped."""
    files, scene_path, _ = inputs
    idx = tmp_path / "t.index"
    assert main(["build", str(idx), "--scenes", str(scene_path), *TINY]) == 0
    assert main(["add", str(idx), "--images", str(files[0]), *TINY]) == 0
    count = IndexStore.open(idx).count
    capsys.readouterr()
    for extra, said in (
        (["--scenes", str(scene_path), "--tile-size", "40"], "given as tiles of 40 px every 40"),
        (["--scenes", str(scene_path), "--stride", "16"], "given as tiles of 32 px every 16"),
        (["--images", str(scene_path)], "given as one image"),
    ):
        assert main(["add", str(idx), *extra, *TINY]) == 1
        out, err = capsys.readouterr()
        assert re.search(r"indexed with another tiling\s+1\n", out)
        assert f"{scene_path} (indexed as tiles of 32 px every 32 px, {said}" in err
        assert "build a new index" in err
    assert main(["add", str(idx), "--scenes", str(files[0]), "--tile-size", "32", *TINY]) == 1
    assert "(indexed as one image, given as tiles of 32 px every 32 px)" in capsys.readouterr().err
    assert main(["add", str(idx), "--scenes", str(scene_path), "--skip-bad", *TINY]) == 0
    out = capsys.readouterr().out
    assert re.search(r"indexed with another tiling\s+0\n", out)
    assert re.search(r"already indexed \(skipped\)\s+1\n", out)
    assert IndexStore.open(idx).count == count


def test_an_index_without_stamps_still_resumes(inputs, tmp_path, model, capsys):
    """Sources of indexes written before stamps (no source info) are taken as unchanged."""
    from msclip.index.build import model_info
    from msclip.index.store import IndexWriter

    files, _, _ = inputs
    m, _, _ = model
    idx = tmp_path / "old.index"
    with IndexWriter.open_or_create(idx, 32, model_info(m)) as w:
        w.add(np.eye(1, 32, dtype=np.float32), [{"path": "f0.tif"}], source=str(files[0]))
    assert main(["add", str(idx), "--images", str(files[0]), str(files[1]), *TINY]) == 0
    out = capsys.readouterr().out
    assert re.search(r"already indexed \(skipped\)\s+1\n", out)
    assert re.search(r"changed since indexed\s+0\n", out)
    assert IndexStore.open(idx).count == 2


def test_search_names_each_hit_by_its_full_path(inputs, tmp_path, monkeypatch, capsys):
    """Two files called x.tif, indexed from their own folders: the CSV holds their absolute
    paths and the printed table tells them apart."""
    files, _, _ = inputs
    for sub, f in (("a", files[0]), ("b", files[1])):
        (tmp_path / sub).mkdir()
        shutil.copyfile(f, tmp_path / sub / "x.tif")
    idx = tmp_path / "x.index"
    monkeypatch.chdir(tmp_path / "a")
    assert main(["build", str(idx), "--images", "x.tif", *TINY]) == 0
    monkeypatch.chdir(tmp_path / "b")
    assert main(["add", str(idx), "--images", "x.tif", *TINY]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["search", str(idx), "--query", "x", "--save-path", "s.csv", "--quiet"]) == 0
    out = capsys.readouterr().out
    paths = sorted(pd.read_csv(tmp_path / "s.csv")["Image"])
    assert paths == [str(tmp_path / "a" / "x.tif"), str(tmp_path / "b" / "x.tif")]
    assert "a/x.tif" in out and "b/x.tif" in out
    assert IndexStore.open(idx).metadata["path"].tolist() == paths


def test_a_file_given_as_the_index_is_named(inputs, tmp_path, capsys):
    """Every subcommand names a file given where the index folder goes, without the misleading
    'create it with msclip-index build' of a missing index, and leaves the file as it was."""
    files, _, _ = inputs
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    runs = (
        ["build", str(file), "--images", str(files[0]), *TINY],
        ["add", str(file), "--images", str(files[0]), *TINY],
        ["search", str(file), "--query", "x", "--save-path", str(tmp_path / "r.csv"), *TINY],
        ["info", str(file)],
    )
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{file} is a file, not an index folder" in err, argv
        assert "create it" not in err and "Traceback" not in err and "Errno" not in err
    assert file.read_text() == "mine"


def test_geojson_of_api_metadata_is_strict_json(tmp_path, model):
    """An index written through the Python API may hold datetimes, nullable integers and float32
    NaN or infinity next to its footprints: the GeoJSON holds them as ISO text and null."""
    from msclip.index.build import model_info
    from msclip.index.store import IndexWriter

    m, _, _ = model
    ring = json.dumps([[9.0, 45.0], [9.1, 45.0], [9.1, 45.1], [9.0, 45.1], [9.0, 45.0]])
    rows = pd.DataFrame(
        {
            "path": ["a.tif", "b.tif"],
            "footprint": [ring, ring],
            "acquired": pd.to_datetime(["2021-05-01", None]),
            "cloud": pd.array([3, None], dtype="Int64"),
            "quality": np.array([np.inf, np.nan], np.float32),
        }
    )
    idx = tmp_path / "api.index"
    with IndexWriter.open_or_create(idx, 32, model_info(m)) as w:
        w.add(np.eye(2, 32, dtype=np.float32), rows, source="batch-1")
    out = tmp_path / "hits.csv"
    assert main(["search", str(idx), "--query", "x", "--save-path", str(out), *TINY]) == 0

    def strict(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    geo = json.loads(out.with_suffix(".geojson").read_text(), parse_constant=strict)
    props = {f["properties"]["Image"]: f["properties"] for f in geo["features"]}
    assert props["a.tif"]["acquired"] == "2021-05-01T00:00:00" and props["a.tif"]["cloud"] == 3
    assert props["a.tif"]["quality"] is None
    assert props["b.tif"]["acquired"] is None and props["b.tif"]["cloud"] is None


def test_api_metadata_named_as_result_columns_does_not_replace_them(tmp_path, model, capsys):
    """Metadata columns of an index written through the Python API named like the results'
    own (Id, Image, Rank) are written beside them under another name, with a note: they
    replaced the hit's id, file and rank."""
    from msclip.index.build import model_info
    from msclip.index.store import IndexWriter

    m, _, _ = model
    rows = pd.DataFrame({"path": ["/d/a.tif", "/d/b.tif", "/d/c.tif"], "Id": ["x1", "x2", "x3"],
                         "Image": ["A", "B", "C"], "Rank": [7, 8, 9]})  # fmt: skip
    idx = tmp_path / "api.index"
    with IndexWriter.open_or_create(idx, 32, model_info(m)) as w:
        w.add(np.eye(3, 32, dtype=np.float32), rows, source="batch-1")
    out = tmp_path / "hits.csv"
    argv = ["search", str(idx), "--query", "x", "y", "--save-path", str(out), *TINY]
    assert main(argv) == 0
    assert "metadata.Id (Id), metadata.Image (Image), metadata.Rank (Rank)" in (
        capsys.readouterr().err
    )
    df = pd.read_csv(out)
    assert list(df.columns[:5]) == ["Query", "Rank", "Similarity", "Id", "Image"]
    assert df["Rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert df["Query"].tolist() == ["x"] * 3 + ["y"] * 3
    by_id = dict(zip(df["Id"], zip(df["Image"], df["metadata.Id"], df["metadata.Image"])))
    assert by_id == {0: ("/d/a.tif", "x1", "A"), 1: ("/d/b.tif", "x2", "B"),
                     2: ("/d/c.tif", "x3", "C")}  # fmt: skip
    assert sorted(df["metadata.Rank"]) == [7, 7, 8, 8, 9, 9]


def test_search_footprints_are_converted_once_per_hit(inputs, tmp_path, monkeypatch):
    """Many queries hit the same rows: each footprint's geometry is made once, not once per
    result row (a 10^4-line queries file took minutes, a row at a time)."""
    import msclip.tiling

    files, _, _ = inputs
    idx = tmp_path / "g.index"
    assert main(["build", str(idx), "--images", *map(str, files), *TINY]) == 0
    calls = []
    real = msclip.tiling.footprint_geometry
    monkeypatch.setattr(msclip.tiling, "footprint_geometry", lambda r: calls.append(1) or real(r))
    queries = tmp_path / "q.txt"
    queries.write_text("\n".join(f"query {i}" for i in range(50)))
    out = tmp_path / "s.csv"
    argv = ["search", str(idx), "--queries-file", str(queries), "--save-path", str(out), *TINY]
    assert main(argv) == 0
    assert len(pd.read_csv(out)) == 200
    assert len(json.loads(out.with_suffix(".geojson").read_text())["features"]) == 200
    assert len(calls) == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "x.index", "--images", "a.tif", "--commit-seconds", "nan"],
        ["build", "x.index", "--images", "a.tif", "--commit-seconds", "-1"],
        ["add", "x.index", "--images", "a.tif", "--commit-seconds", "inf"],
        ["search", "x.index", "--query", "x", "--max-print", "-1"],
        ["build", "x.index", "--images", "a.tif", "--commit-seconds", "1m"],
        ["search", "x.index", "--query", "x", "--top-k", "ten"],
    ],
)
def test_bad_numbers_are_usage_errors(argv, capsys):
    """--commit-seconds nan/inf would never commit before the end (a killed build loses all of
    it); --max-print -1 printed all rows but one and a wrong 'more rows' count."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}: expected" in err and argv[-1] in err


def test_tiling_flags_without_scenes_are_usage_errors(inputs, tmp_path, capsys):
    files, _, _ = inputs
    idx = str(tmp_path / "t.index")
    for extra in (["--tile-size", "32"], ["--stride", "16"]):
        assert main(["build", idx, "--images", str(files[0]), *extra, *TINY]) == 2
        assert f"{extra[0]} apply to the scenes of --scenes" in capsys.readouterr().err
    assert not Path(idx).exists()


def test_adding_to_a_bf16_index_on_a_cpu_that_emulates_it_says_why(inputs, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    """The index's bf16 fixes the precision of ``add``: on a CPU without native bf16 one warning
    says so, instead of the general advice to use auto or fp32 (which the index refuses)."""
    import msclip.hardware as hw

    files, _, _ = inputs
    emulating = hw.CPUInfo("test CPU", "AVX2", frozenset({"avx2"}), torch.__version__)
    monkeypatch.setattr(hw, "cpu_info", lambda: emulating)
    monkeypatch.setattr(hw, "_warned", set())
    idx = tmp_path / "b.index"
    loud = [a for a in TINY if a != "--quiet"]
    assert main(["build", str(idx), "--images", str(files[0]), *TINY, "--precision", "bf16"]) == 0
    monkeypatch.setattr(hw, "_warned", set())
    capsys.readouterr()
    assert main(["add", str(idx), "--images", str(files[1]), *loud, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("holds bf16 embeddings") == 1 and "which this CPU (" in err
    assert "use precision 'auto'" not in err
    assert IndexStore.open(idx).count == 2


def _summary(out: str) -> dict[str, int]:
    """The rows of an index build/add summary whose value is one count."""
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"(\S.*?)\s{2,}(\d+)", line.strip())
        if m:
            rows[m.group(1)] = int(m.group(2))
    return rows


def test_add_summary_rows_partition_the_sources_given(inputs, tmp_path, capsys):
    """Each source given to add is counted once: skipped (indexed as given), changed, indexed
    with another tiling, or added; a changed or retiled file is not counted as skipped too."""
    files, scene_path, _ = inputs
    a = tmp_path / "a.tif"
    shutil.copyfile(files[0], a)
    idx = tmp_path / "p.index"
    assert main(["build", str(idx), "--images", str(a), str(files[1]), "--scenes",
                 str(scene_path), *TINY]) == 0  # fmt: skip
    shutil.copyfile(files[2], a)
    os.utime(a, ns=(1, 10**18))  # another mtime, whatever the clock's resolution
    capsys.readouterr()
    given = [str(a), str(files[1]), str(files[3])]
    rc = main(["add", str(idx), "--images", *given, "--scenes", str(scene_path),
               "--tile-size", "40", "--skip-bad", *TINY])  # fmt: skip
    assert rc == 0
    rows = _summary(capsys.readouterr().out)
    assert rows["sources given"] == 4
    assert rows["already indexed (skipped)"] == 1  # files[1]
    assert rows["changed since indexed"] == 1  # a
    assert rows["indexed with another tiling"] == 1  # the scene
    assert rows["sources added"] == 1  # files[3]
    parts = ("already indexed (skipped)", "changed since indexed", "indexed with another tiling")
    assert sum(rows[p] for p in parts) + rows["sources added"] == rows["sources given"]
