"""``msclip-inference`` end to end with the tiny random model on generated GeoTIFF tiles."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS

import msclip
from msclip.cli import inference as cli
from msclip.cli.inference import main
from msclip.zero_shot import load_templates

PUBLISHED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "templates"
TINY = ["--model-name", "msclip-tiny", "--no-pretrained", "--quiet", "--batch-size", "3"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> list[Path]:
    """Six distinct 12-band L2A-like tiles (uint16, 40x40 px, UTM 32N)."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        data = rng.integers(1, 6000, size=(12, 40, 40)).astype("uint16")
        data[:3] = data[:3] // (i + 1)  # make the tiles spectrally different
        p = root / f"tile_{i}.tif"
        tf = Affine(10, 0, 500000 + 400 * i, 0, -10, 5000000)
        msclip.write_geotiff(p, data, crs=CRS.from_epsg(32632), transform=tf)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def reference_model():
    """The model the CLI builds: msclip-tiny with random weights drawn after seed 0."""
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny")
    return model, model.preprocess(), msclip.get_tokenizer(model)


def _image_embeddings(model, preprocess, paths):
    with torch.no_grad():
        x = torch.stack([preprocess(str(p)) for p in paths])
        e = model.encode_image(x)
    return e / e.norm(dim=-1, keepdim=True)


def _published_probs(model, preprocess, tokenizer, paths, names, templates):
    """Plain re-implementation of the published zero-shot protocol."""
    img = _image_embeddings(model, preprocess, paths)
    rows = []
    with torch.no_grad():
        for name in names:
            clean = name.lower().replace("_", " ").replace("/", " ")
            t = model.clip.encode_text(tokenizer([tpl.format(c=clean) for tpl in templates]))
            t = t / t.norm(dim=-1, keepdim=True)
            m = t.mean(dim=0)
            rows.append(m / m.norm())
    return torch.softmax(100.0 * img @ torch.stack(rows).T, dim=-1).numpy()


def _no_model(monkeypatch):
    def fail(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(cli, "load_model", fail)


# -- classification -----------------------------------------------------------------------------
@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="published template files not available")
def test_classification_matches_published_protocol(tiles, tmp_path, reference_model, capsys):
    names = ["Annual_Crop", "Forest", "River/Lake", "SeaLake"]
    out = tmp_path / "out.csv"
    templates = PUBLISHED / "msclip.txt"
    folder = str(tiles[0].parent)
    rc = main(
        [
            "--run-classification",
            "--images",
            folder,
            "--class-names",
            *names,
            "--templates",
            str(templates),
            "--save-path",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    df = pd.read_csv(out)
    # the published columns, then the fraction of valid pixels and the status of each image
    assert list(df.columns) == ["Image", "Class", *names, "valid_fraction", "status"]
    # as the original release writes: the path relative to the --images root (a bare file name)
    assert df["Image"].tolist() == [p.name for p in tiles]
    model, preprocess, tokenizer = reference_model
    tpl = templates.read_text().splitlines()
    expected = _published_probs(model, preprocess, tokenizer, tiles, names, tpl)
    np.testing.assert_allclose(df[names].to_numpy(), expected, atol=2e-6)
    assert df["Class"].tolist() == [names[i] for i in expected.argmax(axis=1)]
    printed = capsys.readouterr().out
    assert "tile_0.tif" in printed and "Annual_Crop" in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_second_run_uses_text_cache(tiles, tmp_path, monkeypatch):
    args = [
        "--run-classification",
        "--images",
        str(tiles[0].parent),
        "--class-names",
        "forest,river,town",
        "--text-cache-dir",
        str(tmp_path / "cache"),
        "--templates",
        "short",
        *TINY,
    ]
    assert main([*args, "--save-path", str(tmp_path / "a.csv")]) == 0
    monkeypatch.setattr(msclip.MSCLIP, "encode_text", lambda *a, **k: pytest.fail("text tower"))
    assert main([*args, "--save-path", str(tmp_path / "b.csv")]) == 0
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert list(a.columns) == [
        "Image",
        "Class",
        "forest",
        "river",
        "town",
        "valid_fraction",
        "status",
    ]
    pd.testing.assert_frame_equal(a, b)
    # --no-text-cache must encode again: the failing text tower is reached.
    with pytest.raises(pytest.fail.Exception, match="text tower"):
        main([*args, "--no-text-cache", "--save-path", str(tmp_path / "c.csv")])


def test_classes_file_and_multi_label(tiles, tmp_path):
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes:\n  - Pasture\n  - Industrial_Buildings\n  - Sea/Lake\n")
    out = tmp_path / "ml.csv"
    base = [
        "--run-classification",
        "--images",
        f"{tiles[0].parent}/*.tif",
        "--classes-file",
        str(classes),
        "--templates",
        "short",
        *TINY,
    ]
    assert main([*base, "--multi-label", "--save-path", str(out)]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    names = ["Pasture", "Industrial_Buildings", "Sea/Lake"]
    # the published columns, then the fraction of valid pixels and the status of each image
    assert list(df.columns) == ["Image", "Class", *names, "valid_fraction", "status"]
    p = df[names].to_numpy()
    for row, probs in zip(df["Class"], p):
        # The published rule compares logits; log-probabilities differ from them by a constant
        # per image, which cancels in "above the mean of the others".
        logits = np.log(probs)
        others = (logits.sum() - logits) / (len(names) - 1)
        assert row.split(";") == [n for n, a, b in zip(names, logits, others) if a > b]
    record = json.loads((tmp_path / "ml.csv.json").read_text())
    assert record["mode"] == "zero-shot classification" and record["table"] == "ml.csv"
    assert record["classes"] == names and record["multi_label"] == "mean_others"
    assert record["templates"] == {"set": "short", "count": len(load_templates("short"))}
    assert record["images"] == {"given": 6, "scored": 6, "skipped_nodata": 0, "unreadable": 0}
    assert record["command"] == [
        "msclip-inference",
        *base,
        "--multi-label",
        "--save-path",
        str(out),
    ]
    assert record["arguments"]["multi_label"] is True and "argv" not in record["arguments"]
    model = record["model"]
    assert model["name"] == "msclip-tiny" and model["precision"] == "fp32"
    assert model["init_seed"] == 0 and len(model["fingerprint"]) == 32
    assert record["hardware"]["device"] == "cpu" and record["hardware"]["cpu"]["capability"]
    assert record["versions"]["msclip"] == msclip.__version__
    assert main([*base, "--multi-label", "--threshold", "0.0", "--save-path", str(out)]) == 0
    assert pd.read_csv(out)["Class"].tolist() == [";".join(names)] * len(tiles)
    record = json.loads((tmp_path / "ml.csv.json").read_text())  # the new run's record
    assert record["multi_label"] == "threshold" and record["threshold"] == 0.0


def _classify_ab(out, *images) -> list[str]:
    """Arguments of a two-class ("a", "b") classification of ``images`` into the CSV ``out``."""
    return ["--run-classification", "--images", *map(str, images), "--class-names", "a", "b",
            "--templates", "short", "--save-path", str(out), *TINY]  # fmt: skip


def test_image_lists(tiles, tmp_path):
    txt = tmp_path / "list.txt"
    txt.write_text(f"{tiles[2]}\n{tiles[0]}\n")
    yml = tmp_path / "list.yaml"
    yml.write_text(f"images: [{tiles[1]}]\n")
    out = tmp_path / "o.csv"
    assert main(_classify_ab(out, txt, yml, tiles[0])) == 0
    names = [tiles[2].name, tiles[0].name, tiles[1].name]  # relative to the lists' common folder
    assert pd.read_csv(out)["Image"].tolist() == names


def test_bad_images_are_named_skipped_and_counted(tiles, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in tiles[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.tif").write_bytes(tiles[0].read_bytes()[:300])  # truncated
    (folder / "empty.npy").write_bytes(b"")
    out = tmp_path / "o.csv"
    args = _classify_ab(out, folder)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.tif" in err and "empty.npy" in err
    assert "2 of 5 images could not be read" in err
    df = pd.read_csv(out)  # a row per image: the unreadable ones unscored, with the reason
    assert (df["status"] == "ok").sum() == 3
    bad = df[df["status"] != "ok"]
    assert sorted(bad["Image"]) == ["broken.tif", "empty.npy"] and bad["Class"].isna().all()
    assert bad["status"].str.startswith("unreadable: ").all()
    assert main([*args, "--skip-bad"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--templates", "no_such_set"], "containing {c} (command-line option: --templates)"),
        (["--class-names", "Forest", "forest"], "duplicate class names"),
        (["--class-names", "forest", "status"], "also column names of the output table"),
        (["--ckpt-path", "/nonexistent/w.safetensors"], "checkpoint file not found"),
    ],
)
def test_input_errors_stop_before_any_work(tiles, tmp_path, monkeypatch, capsys, extra, message):
    _no_model(monkeypatch)
    args = [
        "--run-classification",
        "--images",
        str(tiles[0].parent),
        "--save-path",
        str(tmp_path / "o.csv"),
        *TINY,
    ]
    if "--class-names" not in extra:
        args += ["--class-names", "a", "b"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_an_input_is_never_overwritten_by_the_table(tiles, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    image = tmp_path / "scene.tif"
    image.write_bytes(tiles[0].read_bytes())
    classes = tmp_path / "classes.txt"
    classes.write_text("forest\nriver\n")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tiles[1]}\n")
    kept = {f: f.read_bytes() for f in (image, classes, listing)}
    runs = [
        (_classify_ab(image, tiles[0].parent, image), f"is the image {image}"),
        (["--run-classification", "--images", str(tiles[0]), "--classes-file", str(classes),
          "--save-path", str(classes), *TINY], f"is the classes file {classes}"),
        (["--run-retrieval", "--images", str(listing), "--query", "a river", "--save-path",
          str(listing), *TINY], f"is the image list {listing}"),
        (["--run-retrieval", "--images", str(tiles[0]), "--query-image", str(image),
          "--save-path", str(image), *TINY], f"is a query image {image}"),
    ]  # fmt: skip
    # the run record beside the table (<table>.json) is an output too: here a link to an image
    record_of = tmp_path / "t.csv"
    (tmp_path / "t.csv.json").symlink_to(image)
    also = f"the run also writes {tmp_path / 't.csv.json'}, which is"
    runs += [
        (_classify_ab(record_of, image), f"{also} the image {image}"),
        (["--run-retrieval", "--images", str(tiles[0]), "--query-image", str(image),
          "--save-path", str(record_of), *TINY], f"{also} a query image {image}"),
    ]  # fmt: skip
    for args, message in runs:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "give another file" in err
    assert {f: f.read_bytes() for f in kept} == kept
    assert not record_of.exists()


def test_an_input_given_by_another_name_is_never_overwritten(tiles, tmp_path, monkeypatch, capsys):
    """Inputs are compared with the output by identity: a symbolic link to the output, or a
    hard link, is the same file."""
    _no_model(monkeypatch)
    real = tmp_path / "real.tif"
    real.write_bytes(tiles[0].read_bytes())
    alias = tmp_path / "alias.tif"
    alias.symlink_to(real.name)
    hard = tmp_path / "hard.tif"
    os.link(real, hard)
    classes = tmp_path / "classes.txt"
    classes.write_text("forest\nriver\n")
    (tmp_path / "classes-link.txt").symlink_to(classes.name)
    kept = {f: f.read_bytes() for f in (real, classes)}
    runs = [
        (_classify_ab(real, alias), f"is the image {alias}"),
        (_classify_ab(hard, real), f"is the image {real}"),
        (["--run-classification", "--images", str(tiles[0]), "--classes-file",
          str(tmp_path / "classes-link.txt"), "--save-path", str(classes), *TINY],
         "is the classes file"),
    ]  # fmt: skip
    for args, message in runs:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "give another file" in err, err
    assert {f: f.read_bytes() for f in kept} == kept


def test_the_weights_of_a_registered_model_are_never_overwritten(tiles, tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    """``--model-name msclip-demo`` reads the package's weight file: a --save-path naming it is
    refused before the model loads, like a checkpoint given by its path."""
    from msclip import pretrained

    _no_model(monkeypatch)
    weights = tmp_path / "weights"
    weights.mkdir()
    demo = weights / "msclip-demo.safetensors"
    demo.write_bytes((pretrained.WEIGHTS_DIR / "msclip-demo.safetensors").read_bytes())
    before = demo.read_bytes()
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    args = ["--run-classification", "--images", str(tiles[0]), "--class-names", "a", "b",
            "--model-name", "msclip-demo", "--quiet", "--save-path", str(demo)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"is the weights of msclip-demo {demo}" in err
    assert demo.read_bytes() == before


def test_a_file_named_like_a_registered_model_is_not_its_input(tiles, tmp_path, monkeypatch):
    """``--model-name msclip-tiny`` names the registered model even where a file of that name
    lies in the working folder: that file is no input of the run, and may be its output."""
    monkeypatch.chdir(tmp_path)
    Path("msclip-tiny").write_text("an earlier table")
    args = ["--run-classification", "--images", str(tiles[0]), "--class-names", "a", "b",
            "--templates", "short", "--save-path", "msclip-tiny", *TINY]  # fmt: skip
    assert main(args) == 0
    assert pd.read_csv("msclip-tiny")["Class"].notna().all()


def test_empty_image_set_stops_before_any_work(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    (tmp_path / "empty").mkdir()
    rc = main(
        ["--run-classification", "--images", str(tmp_path / "empty"), "--class-names", "a", *TINY]
    )
    assert rc == 2
    assert "holds no image files" in capsys.readouterr().err
    assert main(["--run-retrieval", "--images", str(tmp_path / "*.tif"), "--query", "x"]) == 2
    assert "matches no image files" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["--run-classification", "--images", "x"]) == 2  # no class names
    assert main(["--run-retrieval", "--images", "x"]) == 2  # no query
    assert main([]) == 2
    capsys.readouterr()


# -- retrieval ----------------------------------------------------------------------------------
def test_retrieval_text_and_image_queries(tiles, tmp_path, reference_model, capsys):
    out = tmp_path / "r.csv"
    rc = main(
        [
            "--run-retrieval",
            "--images",
            str(tiles[0].parent),
            "--query",
            "a river",
            "--query-image",
            str(tiles[3]),
            "--top-k",
            "50",
            "--save-path",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    assert "--top-k 50 is more than the 6 images" in capsys.readouterr().err
    df = pd.read_csv(out)
    assert list(df.columns) == ["Query", "Rank", "Image", "Similarity", "valid_fraction"]
    assert df["Query"].tolist() == ["a river"] * 6 + [str(tiles[3])] * 6
    assert df["Rank"].tolist() == list(range(1, 7)) * 2

    model, preprocess, tokenizer = reference_model
    img = _image_embeddings(model, preprocess, tiles)
    with torch.no_grad():
        q = model.clip.encode_text(tokenizer(["a river"]))
    q = q / q.norm(dim=-1, keepdim=True)
    sims = (q @ img.T)[0].numpy()
    text = df[df["Query"] == "a river"]
    order = np.argsort(-sims, kind="stable")
    assert text["Image"].tolist() == [tiles[i].name for i in order]
    np.testing.assert_allclose(text["Similarity"], sims[order], atol=2e-6)
    by_image = df[df["Query"] == str(tiles[3])]
    assert by_image["Image"].iloc[0] == tiles[3].name
    assert by_image["Similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert by_image["Similarity"].is_monotonic_decreasing
    record = json.loads((tmp_path / "r.csv.json").read_text())
    assert record["mode"] == "retrieval" and record["queries"] == ["a river", str(tiles[3])]
    assert record["top_k"] == 6 and record["images"]["scored"] == 6
    assert record["model"]["fingerprint"] == model.fingerprint()  # the model that ranked them


def test_queries_file(tiles, tmp_path):
    qf = tmp_path / "q.txt"
    qf.write_text("# queries of the run\na forest\n\n  # lakes\na lake\n")  # comments: no query
    out = tmp_path / "r.csv"
    rc = main(
        [
            "--run-retrieval",
            "--images",
            str(tiles[0]),
            str(tiles[1]),
            "--queries-file",
            str(qf),
            "--top-k",
            "1",
            "--save-path",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    df = pd.read_csv(out)
    assert df["Query"].tolist() == ["a forest", "a lake"] and df["Rank"].tolist() == [1, 1]


@pytest.mark.parametrize("task", ["--run-classification", "--run-retrieval"])
def test_text_tower_pages_are_given_back_before_the_images(tiles, tmp_path, monkeypatch, task):
    """From a weight file, the prompts' text-tower pages are released before any image is
    encoded, and the results equal a run that keeps them."""
    torch.manual_seed(0)
    ckpt = msclip.save_checkpoint(msclip.create_model("msclip-tiny"), tmp_path / "w.safetensors")
    what = ["--query", "a river", "--query", "a town"]
    if task == "--run-classification":
        what = ["--class-names", "forest,river,town", "--templates", "short"]
    args = [task, "--images", str(tiles[0].parent), *what, "--model-name", "msclip-tiny",
            "--ckpt-path", str(ckpt), "--quiet", "--no-text-cache",
            "--batch-size", "1"]  # fmt: skip
    monkeypatch.setattr(msclip.MSCLIP, "release_text_pages", lambda self: 0)
    assert main([*args, "--save-path", str(tmp_path / "kept.csv")]) == 0
    monkeypatch.undo()
    events: list[tuple[str, int]] = []
    release, encode_image = msclip.MSCLIP.release_text_pages, msclip.MSCLIP.encode_image

    def spy_release(self):
        events.append(("release", release(self)))
        return events[-1][1]

    def spy_encode(self, *a, **k):
        events.append(("image", 0))
        return encode_image(self, *a, **k)

    from msclip import memory
    from msclip.tokenizer import CLIPTokenizer

    tables, libraries = CLIPTokenizer.release, memory.release_library_pages

    def spy_tables(self):
        events.append(("tables", 0))
        return tables(self)

    def spy_libraries(device):
        assert torch.device(device).type == "cpu"
        events.append(("libraries", libraries(device)))
        return events[-1][1]

    monkeypatch.setattr(msclip.MSCLIP, "release_text_pages", spy_release)
    monkeypatch.setattr(msclip.MSCLIP, "encode_image", spy_encode)
    monkeypatch.setattr(CLIPTokenizer, "release", spy_tables)
    monkeypatch.setattr(memory, "release_library_pages", spy_libraries)
    heap: list[str] = []
    steady, trim = memory.steady_heap, msclip.encode.trim_heap
    monkeypatch.setattr(memory, "steady_heap", lambda: heap.append("steady") or steady())
    monkeypatch.setattr(msclip.encode, "trim_heap", lambda: heap.append("trim") or trim())
    weights = msclip.MSCLIP.release_weight_pages
    monkeypatch.setattr(msclip.MSCLIP, "release_weight_pages",
                        lambda self: events.append(("weights", weights(self))) or 0)  # fmt: skip
    assert main([*args, "--save-path", str(tmp_path / "released.csv")]) == 0
    assert events[-1][0] == "weights" and events[-1][1] > 0  # after the images: every weight
    events.pop()
    # on the CPU: the start-up's library pages when the model is loaded; the mapped text
    # weights, the tokenizer's tables and the text's library pages once the prompts are
    # encoded; then the images
    assert [e for e, _ in events[:4]] == ["libraries", "release", "tables", "libraries"]
    assert events[0][1] > 0 and events[1][1] > 0
    assert [e for e, _ in events].count("release") == 1 and events[-1][0] == "image"
    assert set(e for e, _ in events[4:]) == {"image"}
    # the C heap keeps what a batch frees for the next one, and is trimmed once they are done
    n_batches = [e for e, _ in events].count("image")
    assert heap == ["steady", "trim"] and n_batches > 1
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "kept.csv"), pd.read_csv(tmp_path / "released.csv")
    )


def test_the_runner_up_is_never_the_predicted_class():
    import numpy as np

    from msclip.cli.inference import _class_table

    names = [f"c{i}" for i in range(8)]
    probs = np.array([[0.1, 0.4, 0.4, 0.1, 0, 0, 0, 0], [0.3, 0, 0, 0, 0, 0, 0, 0.7]])
    _, rows = _class_table(["a", "b"], ["c1", "c7"], probs, names)
    assert rows[0][3] == "c2 (0.400)" and rows[1][3] == "c0 (0.300)"


def test_a_file_name_that_is_not_utf8_is_listed_in_the_csv(tiles, tmp_path, capsys):
    """A file name that is not valid UTF-8 (bytes from another system) does not stop the run
    when its table is written: the CSV holds the name's own bytes, the terminal an escape."""
    import os
    import shutil

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(tiles[0], folder / "ok.tif")
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.tif")  # Latin-1 bytes
    shutil.copy(tiles[1], odd)
    out = tmp_path / "c.csv"
    code = main(["--run-classification", "--images", str(folder), "--class-names", "a", "b",
                 "--templates", "short", "--save-path", str(out), *TINY])  # fmt: skip
    assert code in (0, 1)  # the file may or may not be readable by the raster library
    assert "Traceback" not in capsys.readouterr().err
    rows = out.read_bytes().splitlines()
    assert any(row.startswith(b"caf\xe9.tif,") for row in rows)
    assert any(row.startswith(b"ok.tif,") for row in rows)
    # the run record is valid UTF-8 JSON; the odd byte is written legibly, as \xe9
    odd_folder = os.path.join(os.fsencode(tmp_path), b"r\xe9s")
    os.mkdir(odd_folder)
    out = Path(os.fsdecode(odd_folder)) / "c.csv"
    code = main(["--run-classification", "--images", str(folder / "ok.tif"), "--class-names",
                 "a", "b", "--templates", "short", "--save-path", str(out), *TINY])  # fmt: skip
    assert code == 0
    record = json.loads((Path(os.fsdecode(odd_folder)) / "c.csv.json").read_bytes().decode())
    assert record["arguments"]["save_path"].endswith("r\\xe9s/c.csv")


def test_the_run_record_keeps_what_json_cannot_say_plainly(tiles, tmp_path, monkeypatch):
    """``--nodata nan`` is recorded as "nan" (null would read as not given), and the folder the
    run's relative paths start from is recorded."""
    monkeypatch.chdir(tmp_path)
    code = main(["--run-retrieval", "--images", str(tiles[0]), "--query", "a river", "--nodata",
                 "nan", "--save-path", "r.csv", *TINY])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "r.csv.json").read_text())
    assert record["arguments"]["nodata"] == "nan" and record["arguments"]["save_path"] == "r.csv"
    assert record["cwd"] == str(tmp_path)


def test_a_failed_record_write_keeps_the_earlier_table_and_record(tiles, tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    """The table and its record are one atomic pair: a disk that fills while the record is
    written leaves the earlier run's table and record as they were, both."""
    import errno

    out = tmp_path / "c.csv"
    assert main(_classify_ab(out, tiles[0])) == 0
    before = {p: p.read_bytes() for p in (out, tmp_path / "c.csv.json")}
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(msclip.io.TMP_PREFIX) and ".json" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    args = ["--run-classification", "--images", str(tiles[1]), "--class-names", "x", "y", "z",
            "--templates", "short", "--save-path", str(out), *TINY]  # fmt: skip
    assert main(args) == 2
    assert "cannot write" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(msclip.io.TMP_PREFIX)]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--run-retrieval", "--images", "x", "--query", "q", "--class-names", "a", "b"],
         ["--class-names"]),
        (["--run-retrieval", "--images", "x", "--query", "q", "--templates", "short"],
         ["--templates"]),
        (["--run-scene", "--scene", "s.tif", "--query", "q", "--images", "two"], ["--images"]),
        (["--run-classification", "--images", "x", "--class-names", "a", "b", "--query", "q",
          "--query-image", "y.tif", "--top-k", "2", "--scene", "s.tif", "--tile-size", "32"],
         ["--query", "--query-image", "--top-k", "--scene", "--tile-size"]),
        (["--run-scene", "--scene", "s.tif", "--query", "q", "--multi-label", "--top-k", "3",
          "--downsample"], ["--downsample", "--multi-label", "--top-k"]),
        (["--run-scene", "--scene", "s.tif", "--class-names", "a", "b", "--threshold", "0.5",
          "--multi-label"], ["--multi-label", "--threshold"]),
        (["--run-retrieval", "--images", "x", "--query", "q", "--stride", "8"], ["--stride"]),
    ],
)  # fmt: skip
def test_flags_of_another_mode_are_usage_errors(args, named, monkeypatch, capsys):
    """A flag the mode would ignore stops the run with status 2 before anything is read."""
    _no_model(monkeypatch)
    assert main([*args, *TINY]) == 2
    err = capsys.readouterr().err
    mode = args[0]
    assert f"{mode} does not use {', '.join(named)}" in err, err
    assert all(f"{flag} applies to" in err for flag in named)


def test_a_precision_the_device_refuses_stops_before_loading(tiles, tmp_path, monkeypatch, capsys):
    from msclip.cli import common

    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(common, "model_from_args", no_model)
    args = _classify_ab(tmp_path / "o.csv", tiles[0])
    args = [a for a in args if a != "--quiet"] + ["--precision", "fp16", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "precision 'fp16' is not supported on a CPU" in err
    assert "loading" not in err  # the status line "loading msclip-tiny ..." comes after


def test_msclip_performance_warnings_show_their_message_alone(caplog):
    """A PerformanceWarning is msclip's own: shown as its message, without a source path."""
    from msclip.cli.common import _show_warning
    from msclip.errors import MSCLIPWarning, PerformanceWarning

    assert issubclass(PerformanceWarning, MSCLIPWarning)
    with caplog.at_level("WARNING", logger="py.warnings"):
        _show_warning(PerformanceWarning("bf16 is emulated here"), PerformanceWarning, "/x.py", 3)
        _show_warning(UserWarning("other"), UserWarning, "/y.py", 4)
    assert caplog.messages == ["bf16 is emulated here", "UserWarning: other (/y.py:4)"]


def test_class_names_that_would_corrupt_the_table_are_refused(tiles, tmp_path, monkeypatch,
                                                              capsys):  # fmt: skip
    """With --multi-label a class name holding ';' (the separator of the Class column); in a
    scene run a class named as a similarity column of one of the queries."""
    _no_model(monkeypatch)
    multi = ["--run-classification", "--images", str(tiles[0]), "--class-names", "sea;ocean",
             "forest", "--multi-label", "--save-path", str(tmp_path / "m.csv"), *TINY]  # fmt: skip
    assert main(multi) == 2
    assert "hold ';'" in capsys.readouterr().err
    monkeypatch.undo()  # the model runs from here
    assert main([a for a in multi if a != "--multi-label"]) == 0  # one label per image: fine
    capsys.readouterr()
    _no_model(monkeypatch)
    scene = ["--run-scene", "--scene", str(tiles[0]), "--query", "a river", "--class-names",
             "Similarity: a river", "forest", "--save-path", str(tmp_path / "s"),
             *TINY]  # fmt: skip
    assert main(scene) == 2
    assert "are also column names of the output table" in capsys.readouterr().err


def test_warnings_of_a_run_name_flags_not_library_arguments():
    """Per-file warnings logged during a run say --bands, as the run's summary does."""
    import logging

    from msclip.cli.common import _LowerLevelFormatter

    fmt = _LowerLevelFormatter("%(levelname)s: %(message)s")

    def record(level, msg):
        return logging.LogRecord("msclip.encode", level, __file__, 1, msg, None, None)

    text = fmt.format(record(logging.WARNING, "x.tif: Name the bands (bands=['B02', 'B03'])."))
    assert text == "warning: x.tif: Name the bands (--bands B02 B03)."
    assert "bands=['B02']" in fmt.format(record(logging.INFO, "bands=['B02']"))


@pytest.mark.parametrize(
    "given, names",
    [
        (["forest,", "river,", "sea"], ["forest", "river", "sea"]),  # typed: forest, river, sea
        (["forest", ",", "sea"], ["forest", "sea"]),  # typed: forest , sea
        (["forest,river,sea"], ["forest", "river", "sea"]),  # one value: split at its commas
        (["Beaches, dunes, sands", "forest"], ["Beaches, dunes, sands", "forest"]),
    ],
)
def test_commas_between_class_names_separate_them(given, names):
    """The commas a user types between names (``--class-names forest, river, sea``) are not
    part of the names: the prompts would say 'forest,'."""
    args = cli.parse_args(["--run-classification", "--images", "x", "--class-names", *given])
    assert args.class_names == names


def test_class_names_given_twice_are_all_kept():
    args = cli.parse_args(["--run-classification", "--images", "x",
                           "--class-names", "forest", "river", "--class-names", "sea"])  # fmt: skip
    assert args.class_names == ["forest", "river", "sea"]


@pytest.mark.parametrize(
    "given", [["B02,B03,B04,B08"], ["B02, B03,", "B04", "B08"], ["B02 B03 B04 B08"]]
)
def test_band_names_separated_by_commas_or_spaces_are_each_a_band(given, tiles, tmp_path):
    """``--bands B02,B03,B04,B08`` names four bands; it was read as the one band B02 (a band
    name is a value's first word), and a 4-band file was refused for '1 band names'."""
    args = cli.parse_args([*_classify_ab(tmp_path / "o.csv", tiles[0]), "--bands", *given])
    assert args.bands == ["B02", "B03", "B04", "B08"]
    msclip.write_geotiff(tmp_path / "rgbn.tif", np.full((4, 32, 32), 900, dtype="uint16"))
    assert main([*_classify_ab(tmp_path / "o.csv", tmp_path / "rgbn.tif"), "--bands", *given]) == 0
    assert pd.read_csv(tmp_path / "o.csv")["status"].tolist() == ["ok"]


def test_fill_without_a_declared_nodata_is_said_under_quiet_with_the_flag(tmp_path, capsys):
    """A tile whose edge is 0 in every band and whose file declares no nodata value: scored as
    data (valid_fraction 1) without a word; the run now says so, naming --nodata."""
    data = np.random.default_rng(0).integers(100, 4000, (12, 32, 32)).astype("uint16")
    data[:, :, :8] = 0
    msclip.write_geotiff(tmp_path / "edge.tif", data)  # no nodata tag
    out = tmp_path / "o.csv"
    assert main(_classify_ab(out, tmp_path / "edge.tif")) == 0
    err = capsys.readouterr().err
    assert "pixels holding 0 in every band were read as data" in err and "--nodata 0 " in err, err
    assert pd.read_csv(out)["valid_fraction"].tolist() == [1]
    assert main([*_classify_ab(out, tmp_path / "edge.tif"), "--nodata", "0"]) == 0
    assert "read as data" not in capsys.readouterr().err
    assert pd.read_csv(out)["valid_fraction"].tolist() == [0.75]


def test_a_count_of_one_is_singular(tiles, tmp_path, capsys):
    """The table's tail and the --top-k note say "1 more row", "the 1 image", not "1 more rows",
    "the 1 images"."""
    argv = ["--images", *map(str, tiles), "--run-classification", "--class-names", "a", "b",
            *TINY, "--max-print", "5", "--save-path", str(tmp_path / "c.csv")]  # fmt: skip
    assert main(argv) == 0
    assert "... 1 more row in the CSV" in capsys.readouterr().out
    argv = ["--images", str(tiles[0]), "--run-retrieval", "--query", "a", "--top-k", "3", *TINY,
            "--save-path", str(tmp_path / "r.csv")]  # fmt: skip
    assert main(argv) == 0
    assert "--top-k 3 is more than the 1 image; returning 1" in capsys.readouterr().err


def test_a_file_reached_through_a_link_is_classified_once(tiles, tmp_path, capsys):
    """A folder given beside a link to it, or a file and a link to it, are read once: the table
    has one row per real file, under the first spelling, and the run names the others once."""
    real = tmp_path / "real"
    real.mkdir()
    for t in tiles[:2]:
        shutil.copy(t, real / t.name)
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    (tmp_path / "alias.tif").symlink_to(real / tiles[0].name)
    out = tmp_path / "o.csv"
    given = [real, tmp_path / "linked", tmp_path / "alias.tif", real / tiles[1].name]
    assert main(_classify_ab(out, *given)) == 0
    assert pd.read_csv(out)["Image"].tolist() == [tiles[0].name, tiles[1].name]
    err = capsys.readouterr().err  # said under --quiet: the table would repeat images
    assert err.count("3 given file(s) are files given before under another path (links)") == 1
    assert f"{tmp_path / 'alias.tif'} is {real / tiles[0].name}" in err


def test_control_characters_of_a_file_name_are_escaped_in_the_printed_table(
    tiles, tmp_path, capsys
):
    """A file name holding a newline or a tab is one line of the terminal table, escaped as
    Python writes it; the CSV keeps the name as it is (quoted)."""
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = ["new\nline.tif", "tab\there.tif", "esc\x1b[31m.tif"]
    for name, tile in zip(odd, tiles):
        shutil.copy(tile, folder / name)
    out = tmp_path / "o.csv"
    args = _classify_ab(out, folder)
    assert main([a for a in args if a != "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if ".tif" in line]
    assert len(rows) == 3, printed
    for shown in ("new\\nline.tif", "tab\\there.tif", "esc\\x1b[31m.tif"):
        assert sum(line.startswith(shown + " ") for line in rows) == 1, printed
    assert "\t" not in printed and "\x1b" not in printed
    assert sorted(pd.read_csv(out)["Image"]) == sorted(odd)
