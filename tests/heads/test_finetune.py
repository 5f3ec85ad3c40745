"""The heads runner end to end with a tiny random model: tasks, exact resume after a kill, bad
input that writes nothing, outputs and records."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from support.killed import exit_code_of

from msclip.errors import CheckpointError, ConfigError, HeadInputError
from msclip.heads.checkpoint import read_head
from msclip.heads.finetune import FinetuneRunConfig, run_finetune
from msclip.synthetic import generate_dataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_dataset(root, classes=["sea", "forest", "desert"], n_per_class=10, size=32, seed=0)
    return root


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (a spawned child takes the same count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tmp: Path, **kw) -> FinetuneRunConfig:
    base = dict(
        model_name="msclip-tiny", pretrained=False, output_dir=str(tmp / "run"),
        save_path=str(tmp / "results"), cache_dir=str(tmp.parent / "cache"), text_cache=False,
        progress=False, n_resamples=20, val_fraction=0.2, test_fraction=0.3, batch_size=8,
        epochs=3,
    )  # fmt: skip
    base.update(kw)
    return FinetuneRunConfig(**base)


def _tables(scenes: Path) -> tuple[Path, Path]:
    """A multi-label table (0/1 columns) and a regression table over the generated tiles."""
    caps = pd.read_csv(scenes / "captions.csv")
    df = pd.DataFrame({"path": caps["image"]})
    df["water"] = (caps["label"] == "sea").astype(int)
    df["green"] = (caps["label"] == "forest").astype(int)
    ml = scenes / "multilabel.csv"
    df.to_csv(ml, index=False)
    rng = np.random.default_rng(0)
    reg = pd.DataFrame({"path": caps["image"]})
    reg["cover"] = caps["label"].map({"sea": 0, "forest": 8000, "desert": 500}) + rng.integers(
        0, 1000, len(caps)
    )
    rp = scenes / "cover.csv"
    reg.to_csv(rp, index=False)
    return ml, rp


def test_classification_outputs_and_records(scenes, tmp_path):
    res = run_finetune(_cfg(tmp_path, folders=str(scenes), method=["knn", "logistic", "linear"]))
    assert [m.label for m in res.methods] == ["knn", "knn-unweighted", "logistic", "linear"]
    for m in res.methods:
        head = read_head(m.files["head"])
        assert head.names == ["desert", "forest", "sea"] and head.task == "classification"
        assert Path(m.files["predictions"]).is_file() and Path(m.files["record"]).is_file()
        rec = json.loads(Path(m.files["record"]).read_text())
        assert rec["kind"] == "head" and rec["model"]["label"] == f"msclip-tiny-random+{m.label}"
        assert rec["dataset"]["split_source"].startswith("seeded split")
        ci = rec["ci"]["top1_accuracy"]
        assert ci["low"] <= rec["metrics"]["top1_accuracy"] <= ci["high"]
    protocol = res.protocol
    assert protocol["config"]["method"] == ["knn", "logistic", "linear"]
    assert protocol["data"]["splits"] == {"train": 15, "val": 6, "test": 9}
    assert "C" in protocol["methods"]["logistic"]["hyperparameters"]
    counts = protocol["methods"]["linear"]["hyperparameters"]["parameters"]
    assert counts["encoder_trainable"] == 0 and counts["head_trainable"] > 0  # frozen tower
    assert (res.output_dir / "protocol.yaml").is_file()
    summary = pd.read_csv(res.save_path / "summary.csv")
    assert len(summary) == 4 and summary.columns.tolist() == ["model", scenes.name]
    # the cache was filled once and reused: a second run encodes nothing
    again = run_finetune(_cfg(tmp_path / "again", folders=str(scenes), method=["knn"],
                              cache_dir=str(tmp_path.parent / "cache")))  # fmt: skip
    assert again.protocol["feature_cache"]["cls"]["encoded"] == 0


def test_multilabel_and_regression_tables(scenes, tmp_path):
    ml, reg = _tables(scenes)
    res = run_finetune(_cfg(tmp_path / "ml", csv=str(ml), task="multi-label",
                            label_columns=["water", "green"], method=["knn", "logistic",
                                                                     "linear"]))  # fmt: skip
    for m in res.methods:
        assert m.main_metric == "map_at_k" and m.record["task"] == "multi_label"
        assert {"map", "micro_f1", "macro_f1"} <= set(m.result.metrics)
    res = run_finetune(_cfg(tmp_path / "reg", csv=str(reg), task="regression",
                            value_columns=["cover"], scale=1e-4, method=["ridge", "linear"],
                            loss="huber"))  # fmt: skip
    ridge, linear = res.methods
    assert ridge.main_metric == "r2" and {"rmse", "mae", "r2"} <= set(ridge.result.metrics)
    assert ridge.result.metrics["r2"] > 0.5  # classes differ in cover; features tell them apart
    assert linear.result.hyperparameters["loss"] == "huber"
    preds = pd.read_csv(ridge.files["predictions"])
    assert preds["target_cover"].max() <= 0.9 + 1e-9  # scale applied
    head = read_head(linear.files["head"])
    assert head.task == "regression" and head.names == ["cover"]


def test_bad_input_writes_nothing(scenes, tmp_path):
    caps = pd.read_csv(scenes / "captions.csv")
    bad = pd.DataFrame({"path": caps["image"], "value": 1.0})
    bad.loc[7, "value"] = float("nan")
    table = scenes / "nan.csv"
    bad.to_csv(table, index=False)
    cfg = _cfg(tmp_path, csv=str(table), task="regression", method=["ridge"])
    with pytest.raises(HeadInputError, match=r"line 9 .*not a finite number"):
        run_finetune(cfg)
    with pytest.raises(ConfigError, match="methods \\['knn'\\] do not apply to regression"):
        run_finetune(dataclasses.replace(cfg, method=["knn"]))
    assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists()
    from msclip.errors import OutputPathError

    in_the_way = tmp_path / "cache_file"
    in_the_way.write_text("x")
    with pytest.raises(OutputPathError, match="not a folder") as err:
        run_finetune(_cfg(tmp_path, folders=str(scenes), method=["knn"],
                          cache_dir=str(in_the_way)))  # fmt: skip
    assert err.value.param == "cache_dir"
    assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists()


def test_blocks_the_model_lacks_are_refused_before_any_output(scenes, tmp_path):
    from msclip.errors import HeadConfigError

    with pytest.raises(HeadConfigError, match=r"layers \[5\] do not name blocks") as err:
        run_finetune(_cfg(tmp_path, folders=str(scenes), method=["knn"], layers=[5]))
    assert err.value.param == "layers"
    cfg = _cfg(tmp_path, folders=str(scenes), method=["linear"], encoder_mode="last-n", last_n=3)
    with pytest.raises(HeadConfigError, match="last_n = 3 but the image tower has 2 blocks"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists()


def test_one_class_and_missing_classes(scenes, tmp_path, caplog):
    caps = pd.read_csv(scenes / "captions.csv")
    one = pd.DataFrame({"path": caps["image"], "label": "sea"})
    table = scenes / "one_class.csv"
    one.to_csv(table, index=False)
    cfg = _cfg(tmp_path, csv=str(table), method=["zero-shot", "knn"])
    with pytest.raises(HeadInputError, match=r"every train sample is of one class \('sea'\)"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists()
    some = pd.DataFrame({"path": caps["image"], "label": caps["label"], "split": "train"})
    some.loc[some["label"] == "desert", "split"] = "test"  # desert never trained on
    some.loc[some.index[:2], "split"] = "test"
    some.loc[some.index[2:4], "split"] = "val"
    table = scenes / "missing.csv"
    some.to_csv(table, index=False)
    caplog.set_level("WARNING", logger="msclip.shown_when_quiet")  # kept under --quiet
    run_finetune(_cfg(tmp_path / "m", csv=str(table), method=["knn"]))
    said = [r.getMessage() for r in caplog.records if r.name == "msclip.shown_when_quiet"]
    assert any("the train split holds no sample of 'desert'" in m for m in said)
    assert any("the test split holds no sample of 'forest'" in m for m in said)


def test_multilabel_classes_and_regression_outputs_a_split_lacks_are_named(caplog):
    # classification named a class a split lacks; a multi-label class with no positive test
    # image was left out of mAP, and a constant regression target gave R² NaN, without a word
    from msclip.heads.data import TaskData
    from msclip.heads.finetune import _check_classes

    splits = {"train": np.arange(0, 6), "val": np.arange(6, 8), "test": np.arange(8, 12)}
    labels = np.zeros((12, 3))
    labels[:, 0] = 1  # 'land' everywhere
    labels[[1, 3, 9], 1] = 1  # 'water' in train and test
    labels[[10, 11], 2] = 1  # 'snow' only in test
    labels[8:, 1] = 0
    multi = TaskData("ml", "multi-label", [f"{i}.tif" for i in range(12)], labels,
                     ["land", "water", "snow"], None, splits, {})  # fmt: skip
    values = np.stack([np.arange(12.0), np.r_[np.arange(8.0), [5.0] * 4]], axis=1)
    reg = TaskData("reg", "regression", [f"{i}.tif" for i in range(12)], values,
                   ["biomass", "height"], None, splits, {})  # fmt: skip
    caplog.set_level("WARNING", logger="msclip.shown_when_quiet")  # kept under --quiet
    _check_classes(multi)
    _check_classes(reg)
    said = [r.getMessage() for r in caplog.records if r.name == "msclip.shown_when_quiet"]
    assert said == [
        "ml: no image of the train split is labelled 'snow'",
        "ml: no image of the test split is labelled 'water' (no AP: left out of mAP)",
        "reg: target 'height' has one value on every image of the test split (R² undefined: "
        "NaN, left out of the mean R²)",
    ]


def test_a_finished_run_is_never_overwritten(scenes, tmp_path):
    cfg = _cfg(tmp_path, folders=str(scenes), method=["knn"])
    run_finetune(cfg)
    head = tmp_path / "run" / "knn" / "head.safetensors"
    before = head.read_bytes()
    with pytest.raises(ConfigError, match="already holds a run of knn"):
        run_finetune(cfg)
    with pytest.raises(ConfigError, match="protocol card of another run"):
        run_finetune(dataclasses.replace(cfg, method=["logistic"]))
    assert head.read_bytes() == before
    # resume adds a method: the card describes both
    run_finetune(dataclasses.replace(cfg, method=["logistic"], resume=True))
    import yaml

    card = yaml.safe_load((tmp_path / "run" / "protocol.yaml").read_text())
    assert {"knn", "logistic"} <= set(card["methods"])


def test_resume_refuses_probes_of_other_settings_or_data(scenes, tmp_path):
    """The probes have no training checkpoint; their finished heads carry the run's key and
    settings, so --resume with another k, seed (another split) or dataset is refused before any
    head of the folder is replaced, naming what differs."""
    cfg = _cfg(tmp_path, folders=str(scenes), method=["knn", "logistic"], n_resamples=0)
    run_finetune(cfg)
    heads = sorted((tmp_path / "run").glob("*/head.safetensors"))
    assert [h.parent.name for h in heads] == ["knn", "knn-unweighted", "logistic"]
    before = {h: h.read_bytes() for h in heads}
    resumed = dataclasses.replace(cfg, resume=True, method=["knn"])
    with pytest.raises(CheckpointError, match=r"other settings \(k 20 -> 5\)"):
        run_finetune(dataclasses.replace(resumed, k=5))
    with pytest.raises(CheckpointError, match=r"other settings \(seed 0 -> 3\)"):
        run_finetune(dataclasses.replace(resumed, seed=3))
    with pytest.raises(CheckpointError, match="other settings"):  # logistic's head is checked too
        run_finetune(dataclasses.replace(resumed, method=["linear"], max_iter=10))
    other = tmp_path / "other"
    generate_dataset(other, classes=["sea", "forest", "desert"], n_per_class=10, size=32, seed=1)
    with pytest.raises(CheckpointError, match="folders"):
        run_finetune(dataclasses.replace(resumed, folders=str(other)))
    assert {h: h.read_bytes() for h in heads} == before
    run_finetune(resumed)  # the same settings: knn is run again in place
    # the card still describes the logistic head it keeps: its features and its method (both
    # were dropped, the card then said knn alone was run but held logistic's metrics)
    import yaml

    card = yaml.safe_load((tmp_path / "run" / "protocol.yaml").read_text())
    assert set(card["methods"]) == {"knn", "knn-unweighted", "logistic"}
    assert set(card["features"]) == {"knn", "logistic"}
    assert card["config"]["method"] == ["knn", "logistic"]


def test_resume_adds_a_method_with_its_own_options(scenes, tmp_path):
    """Options of a method a head does not use do not make it another run: a knn folder takes a
    linear head with its own epochs (knn's head stored the default, which a knn run cannot be
    given), and a linear checkpoint takes a logistic probe beside it with its own C values.
    Both were refused."""
    cfg = _cfg(tmp_path, folders=str(scenes), method=["knn"], n_resamples=0)
    run_finetune(cfg)
    cfg = dataclasses.replace(cfg, method=["knn", "linear"], epochs=2, resume=True)
    added = run_finetune(cfg)
    assert [m.label for m in added.methods] == ["knn", "knn-unweighted", "linear"]
    assert len(pd.read_csv(added.methods[-1].files["history"])) == 2
    again = run_finetune(dataclasses.replace(cfg, method=["linear", "logistic"], cs=[1.0]))
    assert again.methods[0].result.metrics == added.methods[-1].result.metrics  # resumed
    # an option a head uses still refuses it, named without those it does not use
    with pytest.raises(CheckpointError, match=r"linear/head.* other settings \(epochs 2 -> 3\);"):
        run_finetune(dataclasses.replace(cfg, method=["linear", "logistic"], cs=[1.0], epochs=3,
                                         max_iter=50))  # fmt: skip


def test_a_tile_of_nodata_only_is_skipped_and_counted(scenes, tmp_path):
    """As msclip-inference (--min-valid 0.5), a tile with fewer valid pixels than min_valid is
    never a sample: it is left out and named; min_valid 0 keeps it (filled with band means)."""
    import shutil

    import rasterio

    root = tmp_path / "tiles"
    shutil.copytree(scenes, root, ignore=shutil.ignore_patterns("*.csv"))
    empty = sorted((root / "sea").glob("*.tif"))[0]
    with rasterio.open(empty, "r+") as f:
        f.nodata = 0
        f.write(np.zeros((f.count, f.height, f.width), dtype=f.dtypes[0]))
    name = f"sea/{empty.name}"
    res = run_finetune(_cfg(tmp_path, folders=str(root), method=["knn"], n_resamples=0))
    assert any(u.endswith(name) for u in res.unreadable)
    assert res.protocol["unreadable"] == res.unreadable
    kept = run_finetune(_cfg(tmp_path / "all", folders=str(root), method=["knn"], min_valid=0.0,
                             n_resamples=0))  # fmt: skip
    assert not kept.unreadable
    # the default for a benchmark dataset: none left out (its protocol scores every image)
    assert FinetuneRunConfig(folders="x").valid_share() == 0.5
    assert FinetuneRunConfig(csv="t.csv").valid_share() == 0.5
    assert FinetuneRunConfig(dataset="EuroSAT_MS").valid_share() is None
    assert FinetuneRunConfig(dataset="EuroSAT_MS", min_valid=0.3).valid_share() == 0.3
    assert FinetuneRunConfig(folders="x", min_valid=0.0).valid_share() is None


def _run_then_die(cfg: FinetuneRunConfig) -> None:
    """Child process: train, and die (no clean-up at all) once epoch 2 is checkpointed."""

    def die(label: str, epoch: int) -> None:
        if epoch == 2:
            os._exit(7)

    run_finetune(cfg, hooks=[die])
    os._exit(0)


def _tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


def test_killed_lora_run_resumes_to_the_same_bits(scenes, tmp_path):
    kw = dict(folders=str(scenes), method=["linear"], encoder_mode="lora", lora_dropout=0.2,
              augment=True, epochs=4, n_resamples=0)  # fmt: skip
    whole = run_finetune(_cfg(tmp_path / "a", **kw))
    cfg = _cfg(tmp_path / "b", **kw)
    assert exit_code_of(_run_then_die, cfg) == 7
    folder = tmp_path / "b" / "run" / "linear-lora"
    assert (folder / "checkpoint.pt").is_file() and not (folder / "head.safetensors").exists()
    with pytest.raises(ConfigError, match="resume"):
        run_finetune(cfg)  # an existing run is never overwritten without resume
    with pytest.raises(CheckpointError, match="other settings"):
        run_finetune(dataclasses.replace(cfg, resume=True, encoder_lr=5e-4))
    seen: list[int] = []
    resumed = run_finetune(dataclasses.replace(cfg, resume=True),
                           hooks=[lambda label, epoch: seen.append(epoch)])  # fmt: skip
    assert seen == [3, 4]  # continued after the checkpoint of epoch 2, not started again
    a, b = whole.methods[0].files, resumed.methods[0].files
    for key in ("head", "adapters"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (key, k)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in ta.items() if "lora_B" in k)
    ha, hb = pd.read_csv(a["history"]), pd.read_csv(b["history"])
    pd.testing.assert_frame_equal(ha, hb)
    assert len(hb) == 4
    pd.testing.assert_frame_equal(pd.read_csv(a["predictions"]), pd.read_csv(b["predictions"]))


def test_a_resumed_run_names_the_unreadable_training_images_it_does_not_read_again(
    scenes, tmp_path
):
    """An unreadable training image is found while the tower trains; a run resumed after its
    last epoch reads no training image again, yet names it (protocol card, exit status 1) and
    counts the images trained on as the uninterrupted run does."""
    caps = pd.read_csv(scenes / "captions.csv")
    table = pd.DataFrame({"path": [str(scenes / p) for p in caps["image"]],
                          "label": caps["label"]})  # fmt: skip
    table["split"] = [("train", "train", "train", "val", "test")[i % 5] for i in range(len(table))]
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a GeoTIFF")
    table.loc[len(table)] = [str(broken), "sea", "train"]
    table.to_csv(tmp_path / "t.csv", index=False)
    cfg = _cfg(tmp_path, csv=str(tmp_path / "t.csv"), method=["linear"], encoder_mode="lora",
               epochs=2, n_resamples=0)  # fmt: skip
    first = run_finetune(cfg)
    again = run_finetune(dataclasses.replace(cfg, resume=True))
    assert first.unreadable == again.unreadable == [str(broken)]
    assert again.protocol["unreadable"] == [str(broken)]
    n_train = [r.methods[0].result.n_train for r in (first, again)]
    assert n_train == [int((table["split"] == "train").sum()) - 1] * 2


def test_precision_auto_is_the_machines_choice_only_for_frozen_features(tmp_path, monkeypatch):
    from msclip.heads.finetune import run_precision

    frozen = FinetuneRunConfig(model_name="msclip-tiny", method=["knn"])
    assert frozen.precision == "auto" and run_precision(frozen) == "auto"
    lora = dataclasses.replace(frozen, method=["linear"], encoder_mode="lora")
    assert run_precision(lora) == "fp32"  # training through the tower: never the machine's choice
    dense = dataclasses.replace(frozen, task="segmentation", method=["linear"])
    assert dense.dense and run_precision(dense) == "fp32"
    # asked for: the weights that train stay float32, computed in bf16 by autocast
    assert run_precision(dataclasses.replace(lora, precision="bf16")) == "fp32"
    assert run_precision(dataclasses.replace(frozen, precision="bf16")) == "bf16"  # nothing trains
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        dataclasses.replace(frozen, precision="fp16", output_dir=str(tmp_path)).validate()


def test_a_tower_trained_in_bf16_keeps_float32_weights_under_autocast(monkeypatch) -> None:
    """--precision bf16 with a trained tower trained the bf16 weights themselves: every update
    below bf16's resolution was lost (on msclip-demo the update came out half of float32's). The
    weights now stay float32 and the tower computes in bf16 by autocast, as msclip-train trains;
    a frozen encoder keeps bf16 weights, and auto trains in fp32 on a CPU."""
    import torch

    from msclip.heads.features import FeatureSpec
    from msclip.heads.finetune import EncoderHead
    from msclip.heads.runs import load_run_model, tower_autocast

    monkeypatch.setenv("MSCLIP_BF16_CHECK", "0")  # the machine's bf16 kernels are not the point
    base = FinetuneRunConfig(model_name="msclip-tiny", pretrained=False, method=["linear"],
                             device="cpu")  # fmt: skip
    cfg = dataclasses.replace(base, encoder_mode="full", precision="bf16")
    assert tower_autocast(cfg, "cpu") == (torch.bfloat16, "bf16: asked for")
    assert tower_autocast(dataclasses.replace(cfg, precision="auto"), "cpu")[0] is None
    assert tower_autocast(dataclasses.replace(cfg, encoder_mode="frozen"), "cpu")[0] is None
    model = load_run_model(cfg)
    assert model.precision == "fp32" and model.precision_requested == "bf16"
    assert "bf16 autocast over float32 weights" in model.precision_reason
    assert load_run_model(dataclasses.replace(base, precision="bf16")).precision == "bf16"

    spec = FeatureSpec("embedding")
    head = torch.nn.Linear(model.embed_dim, 3)
    net = EncoderHead(model, head, spec, "full", autocast=tower_autocast(cfg, "cpu")[0])
    x = torch.randn(2, len(model.bands), model.image_size, model.image_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = spec.forward(model)(x).float()
    feats = net.features(x)
    assert feats.dtype == torch.float32 and torch.equal(feats, torch.nn.functional.normalize(
        expected, dim=-1) if spec.normalize else expected)  # fmt: skip
    plain = EncoderHead(model, head, spec, "full").features(x)
    assert not torch.equal(feats, plain)  # the tower did compute in bf16

    # an update far below bf16's resolution is kept by the float32 weights
    weight = model.clip.visual.proj
    before = weight.detach().clone()
    opt = torch.optim.AdamW([weight], lr=1e-6, weight_decay=0.0)
    net(x).sum().backward()
    opt.step()
    moved = (weight.detach() - before).abs()
    assert weight.dtype == torch.float32 and 0 < float(moved.max()) < 2e-6
    assert float(moved.max()) < float(before.abs().max()) / 256  # below bf16's resolution


def test_resuming_a_finished_linear_probe_changes_nothing(scenes, tmp_path):
    """The batch-norm statistics of a head on frozen features are part of its training
    checkpoint: a resumed run starts from them (a finished one reproduces its result)."""
    cfg = _cfg(tmp_path, folders=str(scenes), method=["linear"], batch_norm=True)
    first = run_finetune(cfg).methods[0]
    before = {k: v.clone() for k, v in load_file(first.files["head"]).items()}
    assert any("running_mean" in k for k in before)
    again = run_finetune(dataclasses.replace(cfg, resume=True)).methods[0]
    after = load_file(again.files["head"])  # the same file, written again by the resumed run
    assert again.result.metrics == first.result.metrics and after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_regression_loss_follows_the_head_to_the_encoders_device():
    """In the encoder modes the regression head moves to the encoder's device after its loss is
    made; the loss uses the head's buffers where they are then (the meta device stands in for a
    GPU: a move replaces the buffers by new tensors, so ones taken before it stay behind)."""
    import torch.nn.functional as F

    from msclip.heads.finetune import _standardised_loss
    from msclip.heads.linear import LinearHead

    head = LinearHead(4, 2)
    head.target_mean.copy_(torch.tensor([1.0, -2.0]))
    head.target_std.copy_(torch.tensor([2.0, 4.0]))
    loss = _standardised_loss(F.mse_loss, head)
    out, target = torch.tensor([[3.0, 2.0]]), torch.tensor([[1.0, -2.0]])
    assert float(loss(out, target)) == pytest.approx(1.0)  # in standardised units
    head.to("meta")
    assert loss(out.to("meta"), target.to("meta")).device.type == "meta"
    assert _standardised_loss(F.mse_loss, None) is F.mse_loss


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_run_on_the_cpu_releases_the_library_pages(tmp_path, monkeypatch, device):
    from msclip import memory
    from msclip.heads.runs import load_run_model

    calls: list[tuple[str, int]] = []
    release = memory.release_library_pages

    def spy(dev):
        calls.append((str(dev), release(dev)))
        return calls[-1][1]

    monkeypatch.setattr(memory, "release_library_pages", spy)
    if device == "cuda":  # a GPU run keeps its libraries (no GPU here: no model is built)
        monkeypatch.setattr("msclip.factory.create_model", lambda *a, **k: SimpleNamespace())
    cfg = dataclasses.replace(_cfg(tmp_path), device=device)
    model = load_run_model(cfg)
    assert [d for d, _ in calls] == [device]  # asked once, for the run's device
    assert device == "cpu" or calls[0][1] == 0  # nothing dropped for a GPU run
    assert device == "cuda" or model.clip is not None


def _head_record(hp: dict) -> dict:
    from msclip.eval.report import make_head_record

    return make_head_record(
        model={"label": "demo", "checkpoint_sha256": "abc"},
        dataset={"name": "ds", "split": "test"}, task="single_label",
        method={"name": "logistic", "label": "logistic", "hyperparameters": hp},
        metrics={"top1_accuracy": 1.0}, ci={}, per_class=[], confusion=None,
        main_metric="top1_accuracy", seed=0, run_key="k", wall_s=0.1,
    )  # fmt: skip


def test_a_probe_record_with_a_grid_is_replaced_with_a_warning(tmp_path, caplog):
    """The C and alpha grids of the probes are compared as JSON holds them: a rerun into the
    same results folder replaces the record (a warning names what changed) instead of failing on
    numpy's element-wise comparison."""
    from msclip.eval.report import write_record

    caplog.set_level("WARNING", logger="msclip.eval.report")
    path = write_record(tmp_path, _head_record({"C": 1.0, "C_grid": np.logspace(-7, 2, 20)}))
    write_record(tmp_path, _head_record({"C": 1.0, "C_grid": np.logspace(-7, 2, 20)}))
    assert "replaced" not in caplog.text  # the same settings: nothing to warn about
    write_record(tmp_path, _head_record({"C": 2.0, "C_grid": np.logspace(-7, 2, 10)}))
    assert "replaced by a result" in caplog.text and "C_grid" in caplog.text
    assert json.loads(path.read_text())["method"]["hyperparameters"]["C"] == 2.0


def test_probe_hyperparameters_are_json_clean():
    from msclip.heads.probes import logistic_probe, ridge_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    res = logistic_probe(x[:20], y[:20], x[30:], y[30:], x[20:30], y[20:30], [0.1, 1.0],
                         n_resamples=0)  # fmt: skip
    assert json.loads(json.dumps(res.hyperparameters)) == res.hyperparameters
    res = ridge_probe(x[:20], x[:20, 1], x[30:], x[30:, 1], x[20:30], x[20:30, 1], [0.1, 1.0],
                      n_resamples=0)  # fmt: skip
    assert json.loads(json.dumps(res.hyperparameters)) == res.hyperparameters


def test_dense_only_options_stay_out_of_image_level_run_settings(tmp_path):
    from msclip.heads.runs import run_settings, setting_facts

    # an option added for dense runs leaves the settings, and so the run keys, of image-level
    # runs as they were: runs started before it resume and are skipped as before
    image = _cfg(tmp_path, folders=str(tmp_path))
    assert "eval_mode" not in run_settings(image)
    assert setting_facts(image) == setting_facts(dataclasses.replace(image, eval_mode="whole"))
    dense = _cfg(tmp_path, csv=str(tmp_path / "index.csv"), task="segmentation")
    assert run_settings(dense)["eval_mode"] == "auto"  # it decides how a dense run is scored


def test_the_projection_is_not_counted_as_trained_by_cls_features(scenes, tmp_path):
    """``--features cls`` is read before the image tower's projection: a last-n run counts (and
    trains) only what gives the feature, here the final norm of ``last_n=0``."""
    import msclip

    res = run_finetune(_cfg(tmp_path, folders=str(scenes), method=["linear"], epochs=1,
                            encoder_mode="last-n", last_n=0))  # fmt: skip
    (label,) = [m.label for m in res.methods]
    counts = res.protocol["methods"][label]["hyperparameters"]["parameters"]
    visual = msclip.create_model("msclip-tiny").clip.visual
    assert counts["encoder_trainable"] == sum(p.numel() for p in visual.ln_post.parameters())


def test_blocks_after_the_deepest_tapped_one_are_not_counted_as_trained(scenes, tmp_path):
    """``--layers -2`` reads the next-to-last block: the last block gets no gradient, so a
    last-n run of two blocks trains (and counts) the next-to-last block and the final norm."""
    import msclip

    res = run_finetune(_cfg(tmp_path, folders=str(scenes), method=["linear"], epochs=1,
                            encoder_mode="last-n", last_n=2, layers=[-2]))  # fmt: skip
    (label,) = [m.label for m in res.methods]
    counts = res.protocol["methods"][label]["hyperparameters"]["parameters"]
    visual = msclip.create_model("msclip-tiny").clip.visual
    want = [*visual.transformer.resblocks[-2].parameters(), *visual.ln_post.parameters()]
    assert counts["encoder_trainable"] == sum(p.numel() for p in want)
