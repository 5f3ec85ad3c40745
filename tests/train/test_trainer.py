"""End-to-end training runs of msclip.train in one process: train, validate, resume exactly,
initialise from RGB, skip bad samples, and produce a checkpoint that classifies."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from support.train_tiles import write_class_tif

import msclip
from msclip.errors import TrainingDivergedError
from msclip.train.checkpoint import load_train_checkpoint
from msclip.train.config import ConfigError, TrainConfig
from msclip.train.data import BadSampleError, TooManyBadSamplesError, class_display_name
from msclip.train.distributed import DistContext
from msclip.train.optim import lr_factor
from msclip.train.trainer import Trainer, build_model, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASSES = ("Forest", "River", "Industrial", "Pasture")


def make_scenes(root: Path, per_class: int = 6) -> Path:
    """Class folders of 12-band tiles and a captions.csv as msclip.synthetic writes them."""
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"{name}/{name}_{i}.tif"
            write_class_tif(root / rel, c, 100 * c + i)
            text = class_display_name(name)
            rows.append(
                {
                    "image": rel,
                    "caption": f"a satellite image of {text}.",
                    "caption_2": f"{text} seen from above, tile {i}",
                    "caption_3": f"sentinel-2 view of {text}",
                    "label": name,
                }
            )
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root / "captions.csv"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


def _cfg(scenes: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        train_data=str(scenes),
        model="msclip-tiny",
        output_dir=str(out),
        batch_size=6,
        val_fraction=0.25,
        epochs=2,
        lr=2e-3,
        warmup_steps=1,
        progress=False,
        log_every=1,
        seed=0,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_train_validate_and_classify_with_the_result(scenes: Path, tmp_path: Path) -> None:
    losses: list[float] = []
    cfg = _cfg(
        scenes,
        tmp_path / "run",
        epochs=4,
        accum_steps=2,
        keep_checkpoints=2,
        zeroshot_data=str(scenes.parent),
        save_every=5,
    )
    result = train(cfg, hooks=[lambda t: losses.append(t.last_loss)])
    # 24 pairs, 6 held out, 18 / 6 = 3 steps per epoch.
    assert result.steps == 12 and len(losses) == 12
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns
    out = tmp_path / "run"
    assert {p.name for p in (out / "checkpoints").iterdir()} == {
        "step_00000010.pt",
        "step_00000012.pt",
    }
    metrics = _read(out / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == [3, 6, 9, 12]
    for key in (
        "val_loss",
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "zs_top1",
        "zs_balanced",
    ):
        value = float(metrics[-1][key])
        assert math.isfinite(value) and (key == "val_loss" or 0.0 <= value <= 1.0), key
    log = _read(out / "train_log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, 13))
    assert {"loss", "lr", "logit_scale", "samples_per_s", "grad_norm"} <= set(log[0])
    assert float(log[0]["lr"]) == pytest.approx(2e-3)  # warm-up of one step, then cosine
    assert float(log[-1]["lr"]) < float(log[5]["lr"]) < float(log[0]["lr"])

    # The final file is an msclip checkpoint: it loads by path alone and classifies.
    final = out / "final.safetensors"
    assert result.final_checkpoint == final
    ckpt = load_train_checkpoint(out / "checkpoints" / "step_00000012.pt")
    for k, v in _weights(final).items():
        assert torch.equal(v, ckpt["model"][k]), k
    assert msclip.create_model(str(final)).bands == msclip.create_model("msclip-tiny").bands
    # inference.py classifies with it, with the numbers of the run's zero-shot validation.
    from msclip.cli.inference import main as inference_main

    names = [class_display_name(c) for c in CLASSES]
    table = tmp_path / "classified.csv"
    code = inference_main(
        [
            "--run-classification",
            "--ckpt-path",
            str(final),
            "--images",
            str(scenes.parent),
            "--class-names",
            *names,
            "--templates",
            "short",
            "--save-path",
            str(table),
            "--no-text-cache",
            "--quiet",
        ]
    )
    assert code == 0
    rows = pd.read_csv(table)
    assert len(rows) == 24 and list(rows.columns[2:]) == [*names, "valid_fraction", "status"]
    truth = [class_display_name(Path(p).parent.name) for p in rows["Image"]]
    top1 = float(np.mean(rows["Class"].to_numpy() == np.array(truth)))
    assert top1 == pytest.approx(float(metrics[-1]["zs_top1"]))


def test_killed_run_resumes_to_the_same_weights(scenes: Path, tmp_path: Path) -> None:
    # log rows every 3 steps, checkpoints every 2: the resumed run starts inside a log row
    kw = dict(epochs=2, save_every=2, keep_checkpoints=0, accum_steps=2, caption_columns=None,
              log_every=3)  # fmt: skip
    train(_cfg(scenes, tmp_path / "a", **kw))

    class Killed(Exception):
        pass

    def kill_at_5(trainer) -> None:
        if trainer.state.step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(_cfg(scenes, tmp_path / "b", **kw), hooks=[kill_at_5])
    assert not (tmp_path / "b" / "final.safetensors").exists()
    # Without --resume an existing run is not overwritten.
    with pytest.raises(ConfigError, match="resume='latest'"):
        train(_cfg(scenes, tmp_path / "b", **kw))
    # Options that change the result cannot change on resume.
    with pytest.raises(ConfigError, match="lr"):
        train(_cfg(scenes, tmp_path / "b", resume="latest", **{**kw, "lr": 1e-3}))
    resumed = train(_cfg(scenes, tmp_path / "b", resume="latest", **kw))
    assert resumed.steps == 6
    # A finished run resumed with fewer steps is refused before anything is written over.
    final = (tmp_path / "b" / "final.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="is at step 6, past the 4 steps") as info:
        train(_cfg(scenes, tmp_path / "b", resume="latest", **{**kw, "max_steps": 4}))
    assert info.value.param == "max_steps"
    assert (tmp_path / "b" / "final.safetensors").read_bytes() == final
    a, b = (
        _weights(tmp_path / "a" / "final.safetensors"),
        _weights(tmp_path / "b" / "final.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = _read(tmp_path / "a" / "train_log.csv"), _read(tmp_path / "b" / "train_log.csv")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    ma, mb = _read(tmp_path / "a" / "metrics.csv"), _read(tmp_path / "b" / "metrics.csv")
    assert [r["i2t_r1"] for r in ma] == [r["i2t_r1"] for r in mb]
    assert [r["val_loss"] for r in ma] == [r["val_loss"] for r in mb]


def test_a_resume_may_change_accum_steps_but_not_the_batch(scenes: Path, tmp_path: Path) -> None:
    """accum_steps splits the same contrastive batch into chunks (the feature cache): a run
    resumed on a device of less memory with more chunks ends at the uninterrupted run's weights
    up to float rounding; it was refused as an option that changes the result. batch_size does
    change it: refused, naming accum_steps as the way to fit memory."""
    kw = dict(val_every=0, save_every=1, keep_checkpoints=0, caption_columns=None)
    train(_cfg(scenes, tmp_path / "a", max_steps=4, **kw))
    train(_cfg(scenes, tmp_path / "b", max_steps=2, **kw))
    with pytest.raises(ConfigError, match=r"batch_size: 6 -> 4\).*raise accum_steps") as info:
        train(_cfg(scenes, tmp_path / "b", max_steps=4, batch_size=4, resume="latest", **kw))
    assert info.value.param == "batch_size"
    resumed = train(_cfg(scenes, tmp_path / "b", max_steps=4, accum_steps=3, resume="latest", **kw))
    assert resumed.steps == 4
    a, b = (
        _weights(tmp_path / "a" / "final.safetensors"),
        _weights(tmp_path / "b" / "final.safetensors"),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_checks_the_tables_by_content_not_by_path(
    scenes: Path, tmp_path: Path, monkeypatch
) -> None:
    table = tmp_path / "data" / "captions.csv"
    table.parent.mkdir()
    table.write_bytes(scenes.read_bytes())
    (tmp_path / "data" / "images").symlink_to(scenes.parent, target_is_directory=True)
    df = pd.read_csv(table)
    df["image"] = "images/" + df["image"]
    df.to_csv(table, index=False)
    kw = dict(val_every=0, save_every=1, keep_checkpoints=0)
    monkeypatch.chdir(tmp_path)
    train(_cfg(Path("data/captions.csv"), tmp_path / "run", max_steps=1, **kw))
    # The same table spelt otherwise (absolute, from another folder) resumes.
    monkeypatch.chdir(tmp_path / "data")
    assert train(_cfg(table, tmp_path / "run", max_steps=2, resume="latest", **kw)).steps == 2
    # Shuffled rows and an edited caption in the same file do not: the data order would differ.
    edited = df.sample(frac=1.0, random_state=0)
    edited.loc[edited.index[0], "caption"] = "edited"
    edited.to_csv(table, index=False)
    with pytest.raises(ConfigError, match=r"content of train_data .* changed") as info:
        train(_cfg(table, tmp_path / "run", max_steps=3, resume="latest", **kw))
    assert info.value.param == "train_data"
    # A checkpoint written before digests were recorded compares the paths as given.
    df.to_csv(table, index=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    data = load_train_checkpoint(ckpt)
    del data["data_digest"]
    torch.save(data, ckpt)
    with pytest.raises(ConfigError, match="predates table digests"):
        train(_cfg(Path("captions.csv"), tmp_path / "run", max_steps=3, resume="latest", **kw))
    assert train(_cfg(table, tmp_path / "run", max_steps=3, resume="latest", **kw)).steps == 3


def test_resume_refuses_a_table_whose_usable_rows_changed(tmp_path: Path) -> None:
    """An image file that went missing (or came back) since the run started changes the pairs,
    their order and the validation split, though the table's content is the same."""
    data = tmp_path / "data"
    make_scenes(data, per_class=5)
    kw = dict(val_every=0, save_every=1, keep_checkpoints=0, max_bad_fraction=0.1)
    train(_cfg(data / "captions.csv", tmp_path / "run", max_steps=1, **kw))
    gone = data / "River" / "River_2.tif"
    gone.rename(gone.with_suffix(".moved"))
    with pytest.raises(
        ConfigError, match=r"row 8 \(line 9\) is now left out \(image file not"
    ) as info:
        train(_cfg(data / "captions.csv", tmp_path / "run", max_steps=2, resume="latest", **kw))
    assert info.value.param == "train_data" and "restore the image files" in str(info.value)
    gone.with_suffix(".moved").rename(gone)
    assert (
        train(
            _cfg(data / "captions.csv", tmp_path / "run", max_steps=2, resume="latest", **kw)
        ).steps
        == 2
    )


def test_extended_run_resumes_at_the_rate_of_its_new_schedule(scenes: Path, tmp_path: Path) -> None:
    train(_cfg(scenes, tmp_path, max_steps=2, warmup_steps=0, val_every=0))
    # The finished cosine ended at rate 0; four steps in all put step 3 halfway down the cosine.
    cfg = _cfg(scenes, tmp_path, max_steps=4, warmup_steps=0, val_every=0, resume="latest")
    trainer = Trainer(cfg.validate(), DistContext())
    assert trainer.state.step == 2
    factor = lr_factor(2, 4)
    assert factor == pytest.approx(0.5)
    for group, base in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs):
        assert group["lr"] == pytest.approx(base * factor)
    assert trainer.scheduler.get_last_lr() == [g["lr"] for g in trainer.optimizer.param_groups]


def test_the_logged_rate_of_a_small_peak_follows_the_schedule(scenes: Path, tmp_path: Path) -> None:
    """Continual pretraining runs at rates of 1e-5 and below: train_log.csv gives the rate of
    every step as the schedule sets it, not rounded to 6 decimals (1e-05 or 0.0)."""
    train(_cfg(scenes, tmp_path, lr=1e-5, warmup_steps=3, max_steps=5, val_every=0))
    rows = _read(tmp_path / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        expected = 1e-5 * lr_factor(int(r["step"]) - 1, 5, 3)
        assert float(r["lr"]) == pytest.approx(expected, rel=1e-5, abs=1e-15)
    assert float(rows[0]["lr"]) == pytest.approx(1e-5 / 3, rel=1e-5)  # not 3e-06


def test_rgb_initialisation_and_patch_embedding_stage(scenes: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    rgb = msclip.create_model("msclip-tiny-rgb")
    msclip.save_checkpoint(rgb, tmp_path / "rgb.safetensors")
    cfg = _cfg(
        scenes,
        tmp_path / "run",
        init=str(tmp_path / "rgb.safetensors"),
        trainable="patch-embed",
        max_steps=2,
        lr=1e-2,
    )
    model = build_model(cfg)
    w, w_rgb = model.patch_embed.weight.detach(), rgb.patch_embed.weight.detach()
    for band, colour in (("B04", 0), ("B03", 1), ("B02", 2)):
        assert torch.equal(w[:, model.bands.index(band)], w_rgb[:, colour])
    others = [i for i, b in enumerate(model.bands) if b not in ("B02", "B03", "B04")]
    assert float(w[:, others].abs().max()) == 0.0
    rgb_sd = rgb.clip.state_dict()
    for k, v in model.clip.state_dict().items():
        if k != "visual.conv1.weight":
            assert torch.equal(v, rgb_sd[k]), k

    train(cfg)
    after = msclip.create_model(str(tmp_path / "run" / "final.safetensors"))
    sd = after.clip.state_dict()
    assert float(after.patch_embed.weight.detach()[:, others].abs().max()) > 0  # bands learn
    for k, v in rgb_sd.items():
        if k not in ("visual.conv1.weight", "logit_scale"):
            assert torch.equal(sd[k], v), k  # everything else was frozen
    # An msclip checkpoint as --init (no --model) continues from its weights as they are.
    cont = build_model(TrainConfig(init=str(tmp_path / "run" / "final.safetensors")))
    for k, v in cont.clip.state_dict().items():
        assert torch.equal(v, sd[k]), k


def _bad_table(root: Path) -> Path:
    """21 rows: one image missing (found up front), one corrupt (found when read)."""
    rows = []
    for i in range(21):
        rel = f"img_{i}.tif"
        if i != 3:
            write_class_tif(root / rel, i % 4, i)
        rows.append({"image": rel, "caption": f"tile {i} of class {i % 4}"})
    (root / "img_7.tif").write_bytes(b"II*\x00 truncated")
    val = root / "val.csv"
    pd.DataFrame(rows[7:12]).to_csv(val, index=False)  # holds the corrupt image
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def test_bad_samples_are_counted_skipped_and_bounded(tmp_path: Path, caplog) -> None:
    table = _bad_table(tmp_path)
    kw = dict(val_data=str(tmp_path / "val.csv"), batch_size=5, epochs=1, augment=False)
    # 1 of 21 missing up front is allowed at 5%; the corrupt one read in the epoch is not.
    with pytest.raises(TooManyBadSamplesError, match=r"2 of 21 samples are bad") as info:
        train(_cfg(table, tmp_path / "strict", max_bad_fraction=0.05, **kw))
    assert "max_bad_fraction" in str(info.value) and "image file not found" in str(info.value)
    assert "row 4 (line 5)" in str(info.value)  # img_3.tif, as a reader counts the table
    # Too many up front: fails before any model is built or file written.
    with pytest.raises(TooManyBadSamplesError, match="1 found up front"):
        train(_cfg(table, tmp_path / "early", max_bad_fraction=0.01, **kw))
    assert not (tmp_path / "early").exists()
    # every row bad (a table moved away from its images): the bad rows are the error, not the
    # validation split of zero pairs
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "train.csv").write_text(table.read_text())
    with pytest.raises(TooManyBadSamplesError, match=r"21 of 21 .*every row is bad.*data_root"):
        train(_cfg(moved / "train.csv", tmp_path / "moved", batch_size=5, epochs=1))
    caplog.set_level("WARNING")
    result = train(_cfg(table, tmp_path / "ok", max_bad_fraction=0.1, **kw))
    assert result.steps == 4  # 20 readable rows of 21 / batch 5
    assert any(
        "img_7.tif" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records
    )
    log = _read(tmp_path / "ok" / "train_log.csv")
    assert max(int(r["bad_in_epoch"]) for r in log) == 1
    assert int(_read(tmp_path / "ok" / "metrics.csv")[-1]["val_bad"]) == 1
    # a validation table of one usable pair would score recall 1 whatever the model
    one = tmp_path / "one.csv"
    one.write_text("".join(table.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(BadSampleError, match="1 usable pair; validation needs at least 2") as err:
        train(_cfg(table, tmp_path / "one", **{**kw, "val_data": str(one)}))
    assert err.value.param == "val_data" and not (tmp_path / "one").exists()


def test_bad_rows_of_a_validation_table_are_counted_once(scenes: Path, tmp_path: Path) -> None:
    rows = []
    for i in range(10):
        if i:  # row 1 names a file that does not exist
            write_class_tif(tmp_path / f"v{i}.tif", i % 4, 50 + i)
        rows.append({"image": f"v{i}.tif", "caption": f"held-out tile {i}"})
    pd.DataFrame(rows).to_csv(tmp_path / "val.csv", index=False)
    kw = dict(val_data=str(tmp_path / "val.csv"), max_steps=1)
    # 1 of 10 is 10%: within 15%, beyond 5%
    trainer = Trainer(_cfg(scenes, tmp_path / "ok", max_bad_fraction=0.15, **kw), DistContext())
    assert len(trainer.val_table) == 9
    with pytest.raises(TooManyBadSamplesError, match=r"1 of 10 samples are bad.* 0 unreadable"):
        Trainer(_cfg(scenes, tmp_path / "strict", max_bad_fraction=0.05, **kw), DistContext())


def test_validation_images_that_are_trained_on_are_named(
    scenes: Path, tmp_path: Path, caplog
) -> None:
    df = pd.read_csv(scenes)
    val = df.iloc[:4].copy()
    val["image"] = str(scenes.parent) + "/" + val["image"]  # the same files, spelt absolute
    val.loc[val.index[0], "image"] = str(scenes.parent / "Forest" / "." / "Forest_0.tif")
    val.to_csv(tmp_path / "val.csv", index=False)
    with caplog.at_level("WARNING", logger="msclip.train.trainer"):
        Trainer(_cfg(scenes, tmp_path / "run", val_data=str(tmp_path / "val.csv")), DistContext())
    (message,) = [r.getMessage() for r in caplog.records if "also in train_data" in r.getMessage()]
    assert message.startswith("4 of the 4 images of val_data") and "and 1 more" in message


def test_a_second_run_into_a_live_runs_output_dir_is_refused(scenes: Path, tmp_path: Path) -> None:
    """Two runs writing one folder (a job launched twice, or resumed while it still runs) would
    interleave their checkpoints and logs and both report success."""
    first = Trainer(_cfg(scenes, tmp_path / "run", max_steps=1), DistContext())
    with pytest.raises(ConfigError, match="another training run is writing") as info:
        train(_cfg(scenes, tmp_path / "run", max_steps=1, resume="latest"))
    assert info.value.param == "output_dir"
    first.close()
    assert train(_cfg(scenes, tmp_path / "run", max_steps=1, resume="latest")).steps == 1


def test_a_run_refused_as_second_launch_leaves_the_first_runs_lock(
    scenes: Path, tmp_path: Path, monkeypatch
) -> None:
    """Two launches at the same moment into a folder that does not exist yet: the one refused
    must not remove the folder and lock file of the one that holds them, or a third launch would
    run beside the first."""
    import fcntl

    import msclip.train.trainer as trainer_mod

    out = tmp_path / "run"
    first: list = []
    lock_output = trainer_mod._lock_output

    def first_run_takes_it(folder: Path):  # the other launch wins the race for the lock
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / trainer_mod.LOCK_NAME, "a+b")  # noqa: SIM115
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        first.append(fh)
        return lock_output(folder)

    monkeypatch.setattr(trainer_mod, "_lock_output", first_run_takes_it)
    with pytest.raises(ConfigError, match="another training run is writing"):
        Trainer(_cfg(scenes, out, max_steps=1), DistContext())
    monkeypatch.setattr(trainer_mod, "_lock_output", lock_output)
    assert (out / trainer_mod.LOCK_NAME).exists()
    with pytest.raises(ConfigError, match="another training run is writing"):
        Trainer(_cfg(scenes, out, max_steps=1), DistContext())
    first[0].close()


def test_writes_a_killed_run_left_unfinished_are_removed(scenes: Path, tmp_path: Path) -> None:
    """A run killed (SIGKILL) while saving leaves a temporary file as large as a checkpoint;
    the next run into the folder removes those of the run's own files, and nothing else."""
    out = tmp_path / "run"
    left = [out / "checkpoints" / ".tmp-step_00000004.pt.k2j.pt", out / ".tmp-final.safetensors.x"]
    other = out / ".tmp-notes.txt.abc"
    for f in [*left, other]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 10)
    Trainer(_cfg(scenes, out, max_steps=1), DistContext()).close()
    assert not any(f.exists() for f in left) and other.exists()


def test_a_table_of_one_row_per_caption_is_named(scenes: Path, tmp_path: Path, caplog) -> None:
    """Rows of one image in one batch are each other's negatives: the run says how many pairs
    repeat an image and how to give an image's captions instead."""
    df = pd.read_csv(scenes)
    df["image"] = str(scenes.parent) + "/" + df["image"]
    rows = pd.concat([df.assign(caption=df["caption"] + f" ({j})") for j in range(2)])
    rows.to_csv(tmp_path / "per_caption.csv", index=False)
    with caplog.at_level("WARNING", logger="msclip.train.trainer"):
        trainer = Trainer(_cfg(tmp_path / "per_caption.csv", tmp_path / "run"), DistContext())
        Trainer(_cfg(scenes, tmp_path / "other"), DistContext()).close()
    (message,) = [r.getMessage() for r in caplog.records if "repeat the image" in r.getMessage()]
    # 48 rows of 24 images; the 12 of 6 held-out images leave 36 pairs of 18 images
    assert "18 of the 36 training pairs repeat" in message and "caption_2" in message
    # the validation's recall counts each held-out image once, with both its captions
    row = trainer.validate()
    trainer.close()
    assert (row["n_pairs"], row["n_images"]) == (12, 6)


def test_captions_longer_than_the_text_context_are_named(
    scenes: Path, tmp_path: Path, caplog
) -> None:
    """A caption past the text tower's 77 tokens is trained on as its first 77 tokens: the run
    says which rows hold one (once, for the whole table), and a table of short captions says
    nothing."""
    df = pd.read_csv(scenes)
    df["image"] = str(scenes.parent) + "/" + df["image"]
    long = "a detailed description of fields, forest and a river " * 12
    df.loc[2, "caption_3"] = long
    df.loc[5, "caption"] = long + "again"
    df.to_csv(tmp_path / "long.csv", index=False)
    with caplog.at_level("WARNING"):
        Trainer(_cfg(tmp_path / "long.csv", tmp_path / "run"), DistContext()).close()
        Trainer(_cfg(scenes, tmp_path / "other"), DistContext()).close()
    (message,) = [r.getMessage() for r in caplog.records if "tokens" in r.getMessage()]
    assert "train_data" in message and "2 of its 72 captions are longer than" in message
    assert "77 tokens" in message and "row 3 (line 4)" in message and "row 6 (line 7)" in message


def test_the_run_summary_line_counts_one_in_the_singular(
    scenes: Path, tmp_path: Path, caplog
) -> None:
    """One step per epoch and one trainable tensor (the patch-embedding stage) read '1 step',
    '1 tensor', not '1 steps', '1 tensors'."""
    cfg = _cfg(scenes, tmp_path, batch_size=18, epochs=1, trainable="patch-embed")
    cfg.train_logit_scale = False
    with caplog.at_level("INFO", logger="msclip.train.trainer"):
        Trainer(cfg, DistContext()).close()
    (line,) = [r.getMessage() for r in caplog.records if "training pairs" in r.getMessage()]
    assert line.startswith("18 training pairs (1 step/epoch, 1 step), 6 validation pairs; ")
    assert "1 process; " in line and line.endswith(" trainable parameters in 1 tensor")


def test_other_options_train(scenes: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        scenes,
        tmp_path / "run",
        loss="siglip",
        optimizer="sgd",
        lr=0.05,
        precision="bf16",
        grad_checkpointing=True,
        layer_decay=0.7,
        patch_embed_lr=0.1,
        restart_steps=2,
        warmup_steps=0,
        max_steps=3,
        trainable="patch-embed+attn",
        trainable_patterns=["ln_final.*"],
        grad_clip_norm=None,
        accum_steps=2,
    )
    losses: list[float] = []
    result = train(cfg, hooks=[lambda t: losses.append(t.last_loss)])
    assert result.steps == 3 and all(math.isfinite(v) for v in losses)
    ckpt = load_train_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003.pt")
    assert float(ckpt["loss"]["logit_bias"]) != -10.0  # the SigLIP bias trains
    assert "momentum_buffer" in next(iter(ckpt["optimizer"]["state"].values()))
    log = _read(tmp_path / "run" / "train_log.csv")
    # Restart after 2 steps: the third step is back at the peak learning rate.
    assert float(log[2]["lr"]) == pytest.approx(0.05)
    assert float(log[1]["lr"]) == pytest.approx(0.025)


def test_scene_generator_output_trains_as_it_is(tmp_path: Path) -> None:
    from msclip.synthetic import generate_dataset

    summary = generate_dataset(
        tmp_path / "scenes", ["forest", "sea", "urban"], n_per_class=4, size=32, seed=0
    )
    cfg = TrainConfig(
        train_data=str(summary.captions_csv),
        model="msclip-tiny",
        batch_size=3,
        val_fraction=0.25,
        epochs=1,
        zeroshot_data=str(tmp_path / "scenes"),
        output_dir=str(tmp_path / "run"),
        progress=False,
        threads=1,
    )
    result = train(cfg)
    assert result.steps == 3  # 12 tiles, 3 held out, 9 / 3
    row = result.metrics[-1]
    assert row["zs_n"] == 12.0 and 0.0 <= row["zs_top1"] <= 1.0
    assert row["n_pairs"] == 3.0 and 0.0 <= row["t2i_r1"] <= 1.0


def test_an_output_dir_that_is_a_file_is_named_before_any_work(tmp_path: Path) -> None:
    from msclip.errors import OutputPathError

    table = _bad_table(tmp_path)
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("x")
    with pytest.raises(OutputPathError, match="it is a file, not a folder") as info:
        train(_cfg(table, in_the_way, max_steps=1))
    assert info.value.param == "output_dir"


def test_the_precision_variable_replaces_what_training_auto_picks(monkeypatch) -> None:
    """MSCLIP_PRECISION replaces what ``auto`` picks in every program: training's auto ignored
    it (bf16 autocast on a GPU with native bf16 under MSCLIP_PRECISION=fp32, and a mistyped
    value passed unnoticed)."""
    from msclip import hardware
    from msclip.errors import PrecisionError
    from msclip.hardware import training_precision

    monkeypatch.setattr(hardware, "cuda_bf16_supported", lambda index=None: True)
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    assert training_precision("auto", gpu)[0] == "bf16"
    assert training_precision("auto", cpu)[0] == "fp32"
    monkeypatch.setenv(hardware.PRECISION_ENV, "fp32")
    assert training_precision("auto", gpu) == ("fp32", "auto: MSCLIP_PRECISION=fp32")
    assert training_precision("bf16", gpu)[0] == "bf16"  # an explicit request is unaffected
    monkeypatch.setenv(hardware.PRECISION_ENV, " BF16")
    assert training_precision("auto", cpu)[0] == "bf16"
    for bad in ("bf17", "int8", "fp16"):
        monkeypatch.setenv(hardware.PRECISION_ENV, bad)
        with pytest.raises(PrecisionError, match=rf"MSCLIP_PRECISION='{bad}'.*fp32 or bf16"):
            training_precision("auto", cpu)
        assert training_precision("fp32", cpu)[0] == "fp32"


def test_a_resume_in_another_precision_than_the_run_is_said(
    scenes: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """``--precision auto`` on both sides, resolved otherwise on resume (another device, or
    MSCLIP_PRECISION set): the checkpoint records what the run computed in, and the resume says
    that it changed, with the fix; nothing recorded it before."""
    from msclip import hardware

    monkeypatch.setenv(hardware.PRECISION_ENV, "fp32")
    train(_cfg(scenes, tmp_path, max_steps=1, warmup_steps=0, val_every=0))
    ckpt = load_train_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt")
    assert ckpt["precision"] == "fp32" and "MSCLIP_PRECISION=fp32" in ckpt["precision_reason"]
    cfg = _cfg(scenes, tmp_path, max_steps=2, warmup_steps=0, val_every=0, resume="latest")
    with caplog.at_level("WARNING", logger="msclip.train.trainer"):
        Trainer(cfg.validate(), DistContext())
    assert "trained in" not in caplog.text  # the same precision: nothing to say
    monkeypatch.setenv(hardware.PRECISION_ENV, "bf16")
    with caplog.at_level("WARNING", logger="msclip.train.trainer"):
        Trainer(cfg.validate(), DistContext())
    assert "which trained in fp32" in caplog.text and "in bf16" in caplog.text
    assert "MSCLIP_PRECISION=fp32" in caplog.text


def test_initial_weights_with_a_nan_or_huge_logit_scale(scenes: Path, tmp_path: Path, caplog):
    """A NaN logit_scale survived the clamp: every loss, then every weight, of the run was NaN
    and the run finished as if trained. A huge one is clamped as after every step, now said."""
    model = msclip.create_model("msclip-tiny", None, precision="fp32", seed=0)
    for value in (float("nan"), 1e6):
        with torch.no_grad():
            model.clip.logit_scale.fill_(value)
        ckpt = tmp_path / f"init-{value}.safetensors"
        msclip.save_checkpoint(model, ckpt)
        cfg = _cfg(scenes, tmp_path / f"run-{value}", init=str(ckpt), model=None, max_steps=1)
        if math.isnan(value):
            with pytest.raises(ConfigError, match=r"logit_scale of NaN.*init_logit_scale") as info:
                Trainer(cfg.validate(), DistContext())
            assert info.value.param == "init_logit_scale"
            fresh = dataclasses_replace(cfg, init_logit_scale=2.0)  # the fix it names
            assert (
                float(Trainer(fresh.validate(), DistContext()).model.clip.logit_scale.detach())
                == 2.0
            )
        else:
            with caplog.at_level("WARNING", logger="msclip.train.trainer"):
                trainer = Trainer(cfg.validate(), DistContext())
            assert float(trainer.model.clip.logit_scale.detach()) == pytest.approx(math.log(100))
            assert "logit_scale 1e+06 lies above log(max_logit_scale) = 4.6052" in caplog.text


def test_a_diverged_step_stops_the_run_before_its_weights_are_lost(scenes: Path, tmp_path: Path):
    """A step whose loss is NaN made every weight NaN, and the run went on to its end, saving
    NaN checkpoints that pruned the good ones; it stops before the step, naming the fixes."""

    def poison(trainer) -> None:  # what a too-large learning rate does, deterministically
        if trainer.state.step == 2:
            with torch.no_grad():
                trainer.model.clip.visual.proj.fill_(math.nan)

    cfg = _cfg(scenes, tmp_path, max_steps=6, val_every=0, save_every=1, keep_checkpoints=1)
    with pytest.raises(TrainingDivergedError, match=r"step 3: the loss is nan.*lower lr") as info:
        train(cfg, hooks=[poison])
    assert "step_00000002.pt" in str(info.value)
    kept = load_train_checkpoint(tmp_path / "checkpoints" / "step_00000002.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert not (tmp_path / "final.safetensors").exists()


def test_bf16_training_on_a_cpu_that_emulates_it_says_so(scenes: Path, tmp_path: Path,
                                                         monkeypatch, caplog) -> None:  # fmt: skip
    """--precision bf16 on a CPU without native bf16 emulates every matrix product of the step:
    the warning says so and why, naming the CPU (it spoke of attention alone); with native bf16
    the note about attention stays."""
    from msclip import hardware
    from msclip.hardware import CPUInfo

    zen3 = CPUInfo("AMD EPYC 7B13", "AVX2", frozenset({"avx2", "fma"}), torch.__version__)
    zen4 = CPUInfo("AMD EPYC 9B14", "AVX512", frozenset({"avx512f", "avx512_bf16"}),
                   torch.__version__)  # fmt: skip
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    cfg = _cfg(scenes, tmp_path, max_steps=1, precision="bf16").validate()
    for cpu, said in ((zen3, "AMD EPYC 7B13 (torch AVX2; no AVX-512)): its matrix products are "
                             "emulated"), (zen4, "slow for attention")):  # fmt: skip
        monkeypatch.setattr(hardware, "cpu_info", lambda cpu=cpu: cpu)
        caplog.clear()
        with caplog.at_level("WARNING", logger="msclip.train.trainer"):
            Trainer(cfg, DistContext()).close()
        (line,) = [r.getMessage() for r in caplog.records if "bf16 autocast" in r.getMessage()]
        assert said in line, line
