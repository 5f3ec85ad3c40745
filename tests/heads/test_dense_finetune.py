"""Dense tasks in the runner with a tiny random model: raster pairs checked, nodata masked, class
weights counted, multi-task, exact resume after a kill, the grid table, scene prediction with a
trained head."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from safetensors.torch import load_file
from support.killed import exit_code_of

from msclip.errors import CheckpointError, CheckpointMismatchError, ConfigError, HeadInputError
from msclip.heads.dense_data import DenseSamples, check_alignment
from msclip.heads.dense_finetune import load_dense_data
from msclip.heads.dense_grid import run_grid
from msclip.heads.dense_head import read_dense_head
from msclip.heads.finetune import FinetuneRunConfig, run_finetune
from msclip.heads.losses import ClassCounter
from msclip.synthetic import generate_dense_dataset


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dense") / "data"
    generate_dense_dataset(root, classes=["sea", "forest", "desert"], n_per_class=4, size=16,
                           seed=0, splits=(0.5, 0.25, 0.25))  # fmt: skip
    return root


def _rewrite_labels(dense, tmp_path, table, edit, name) -> None:
    """Write each label raster of ``table`` edited (``edit(arr) -> (arr, profile changes)``)
    under ``tmp_path``, and the table pointing at them as ``tmp_path / name``."""
    for k, rel in enumerate(table["label"]):
        with rasterio.open(dense / rel) as src:
            arr, profile = edit(src.read(1))
            profile = {**src.profile, **profile}
        out = tmp_path / f"l{k}.tif"
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(arr, 1)
        table.loc[k, "label"] = str(out)
    table.to_csv(tmp_path / name, index=False)


def _cfg(tmp, data, **kw) -> FinetuneRunConfig:
    base = dict(csv=str(data / "index.csv"), task="segmentation", model_name="msclip-tiny",
                pretrained=False, decoder="linear", epochs=2, batch_size=2, crop_size=16,
                output_dir=str(tmp / "run"), save_path=str(tmp / "res"), progress=False,
                seed=0)  # fmt: skip
    base.update(kw)
    return FinetuneRunConfig(**base)


def test_misaligned_label_refused_naming_both_files(dense, tmp_path):
    data = load_dense_data(_cfg(tmp_path, dense))
    img, lab = data.images[0], data.rasters["segmentation"][0]
    with rasterio.open(lab) as src:
        arr, profile = src.read(1), src.profile
    moved = tmp_path / "moved.tif"
    profile["transform"] = profile["transform"] @ profile["transform"].translation(3, 0)
    with rasterio.open(moved, "w", **profile) as dst:
        dst.write(arr, 1)
    with pytest.raises(HeadInputError, match="transform") as err:
        check_alignment(img, moved)
    assert str(moved) in str(err.value) and img in str(err.value)
    # judged in pixels, not CRS units: an origin moved by a millionth of a pixel (float rounding
    # of a tool's arithmetic is smaller still) is the same grid, a tenth of a pixel is not
    from affine import Affine

    grid = profile["transform"] @ Affine.translation(-3, 0)  # the image's own grid
    for shift, same in ((grid.a * 1e-6, True), (grid.a * 0.1, False)):
        profile["transform"] = Affine.translation(shift, 0) @ grid
        with rasterio.open(moved, "w", **profile) as dst:
            dst.write(arr, 1)
        if same:
            check_alignment(img, moved)
        else:
            with pytest.raises(HeadInputError, match="transform"):
                check_alignment(img, moved)
    profile["transform"] = grid @ Affine.translation(3, 0)
    with rasterio.open(moved, "w", **profile) as dst:
        dst.write(arr, 1)
    table = pd.read_csv(dense / "index.csv")
    table.loc[3, "label"] = str(moved)
    table.to_csv(tmp_path / "bad.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "bad.csv"), data_root=str(dense))
    with pytest.raises(HeadInputError, match="is not on the grid of image"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "res").exists()


def test_a_label_without_georeference_of_the_images_size_is_on_its_pixel_grid(
    dense, tmp_path, caplog
):
    """A mask written from an array (no CRS, no geotransform) has nothing to compare but its
    size: of the image's size it is that image's pixel grid (named in a warning), of another
    size it is refused; a georeferenced label on another grid is still refused."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    table = pd.read_csv(dense / "index.csv")
    img = str(dense / table.loc[0, "image"])
    with rasterio.open(dense / table.loc[0, "label"]) as src:
        arr = src.read(1)
    for k, rel in enumerate(table["label"]):
        with rasterio.open(dense / rel) as src:
            a = src.read(1)
        out = tmp_path / f"mask{k}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(out, "w", driver="GTiff", width=a.shape[1], height=a.shape[0],
                               count=1, dtype=a.dtype) as dst:  # fmt: skip
                dst.write(a, 1)
        table.loc[k, "label"] = str(out)
    assert check_alignment(img, table.loc[0, "label"]) is True
    assert check_alignment(img, dense / "labels" / Path(img).name) is False  # georeferenced
    small = tmp_path / "small.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(small, "w", driver="GTiff", width=8, height=8, count=1,
                           dtype=arr.dtype) as dst:  # fmt: skip
            dst.write(arr[:8, :8], 1)
    with pytest.raises(HeadInputError, match=r"size 16x16 vs 8x8"):
        check_alignment(img, small)
    table.to_csv(tmp_path / "masks.csv", index=False)
    caplog.set_level("WARNING")
    data = load_dense_data(_cfg(tmp_path, dense, csv=str(tmp_path / "masks.csv"),
                                data_root=str(dense)))  # fmt: skip
    assert f"{len(table)} label raster(s) of task segmentation have no georeference" in caplog.text
    assert data.rasters["segmentation"][0] == str(tmp_path / "mask0.tif")


def test_a_label_raster_of_several_bands_is_refused_not_read_as_its_first(dense, tmp_path):
    """A one-hot mask (one 0/1 band per class) read as its first band trains 'sea' against
    'lake' without a word; it is refused before any output, naming the file and the fix."""
    table = pd.read_csv(dense / "index.csv")
    with rasterio.open(dense / table.loc[0, "label"]) as src:
        arr, profile = src.read(1), src.profile
    profile.update(count=3, nodata=None)
    onehot = tmp_path / "onehot.tif"
    with rasterio.open(onehot, "w", **profile) as dst:
        dst.write(np.stack([(arr == k).astype(arr.dtype) for k in range(3)]))
    table.loc[0, "label"] = str(onehot)
    table.to_csv(tmp_path / "oh.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "oh.csv"), data_root=str(dense))
    with pytest.raises(HeadInputError, match=r"onehot.tif \(of image .*\) has 3 bands; .*one-hot"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "res").exists()


def test_bad_class_value_in_a_test_label_is_refused_before_training(dense, tmp_path, caplog):
    from msclip.errors import LabelError

    table = pd.read_csv(dense / "index.csv")
    row = int(np.flatnonzero(table["split"].str.lower().str.startswith("test"))[0])
    src_path = dense / table.loc[row, "label"]
    with rasterio.open(src_path) as src:
        arr, profile = src.read(1), src.profile
    arr[0, 0] = 20  # 3 classes
    bad = tmp_path / "bad_label.tif"
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(arr, 1)
    table.loc[row, "label"] = str(bad)
    table.to_csv(tmp_path / "bad.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "bad.csv"), data_root=str(dense))
    with pytest.raises(LabelError, match=r"bad_label.tif: label values \[20\] are outside"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "res").exists()
    # a nodata value that is also a class is named in a warning
    profile.update(nodata=0)
    arr[0, 0] = 1
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(arr, 1)
    caplog.set_level("WARNING", logger="msclip.heads.dense_data")
    load_dense_data(cfg)
    assert "declare nodata 0, which is also the class" in caplog.text


def test_dense_input_mistakes_are_named_with_their_fix(dense, tmp_path):
    """An empty split of the split column names the column (the fractions do not apply to it);
    a label that is no whole number is named with its place, without the class-list advice
    that fits values outside the classes; a single class names it."""
    from msclip.errors import HeadInputError, LabelError

    table = pd.read_csv(dense / "index.csv")
    noval = table.assign(split=table["split"].replace({"val": "train"}))
    noval.to_csv(tmp_path / "noval.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "noval.csv"), data_root=str(dense))
    with pytest.raises(HeadInputError, match=r"the val split is empty \(no row has split = val\)"
                       r"; give it rows, or drop the column") as err:  # fmt: skip
        load_dense_data(cfg)
    assert err.value.param == "split_column"

    with rasterio.open(dense / table.loc[0, "label"]) as src:
        arr, profile = src.read(1).astype("float32"), src.profile
    arr[3, 5] = 2.5
    profile.update(dtype="float32")
    frac = tmp_path / "frac.tif"
    with rasterio.open(frac, "w", **profile) as dst:
        dst.write(arr, 1)
    labels = [str(frac), *table["label"][1:]]
    table.assign(label=labels).to_csv(tmp_path / "f.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "f.csv"), data_root=str(dense))
    with pytest.raises(LabelError, match=r"frac.tif: labels must be whole class indices, but 1 "
                       r"value\(s\) are not, first 2.5 at row 3, column 5") as err:  # fmt: skip
        load_dense_data(cfg)
    assert "class list" not in str(err.value) and err.value.param == "labels"

    one = tmp_path / "one"
    one.mkdir()
    for k, rel in enumerate(table["label"]):
        with rasterio.open(dense / rel) as src:
            profile = src.profile
        with rasterio.open(one / f"l{k}.tif", "w", **profile) as dst:
            dst.write(np.zeros((16, 16), profile["dtype"]), 1)
    table.assign(label=[str(one / f"l{k}.tif") for k in range(len(table))]).to_csv(
        tmp_path / "one.csv", index=False
    )
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "one.csv"), data_root=str(dense))
    with pytest.raises(
        HeadInputError, match=r"has a single class \('class_0'\) in the training labels"
    ):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_float_labels_with_nan_nodata_are_ignored(dense, tmp_path):
    """Float32 label rasters (e.g. after a reprojection) whose nodata is NaN: NaN pixels are
    unlabelled, not a bad class value."""
    table = pd.read_csv(dense / "index.csv")

    def float_nan(arr):
        arr = arr.astype("float32")
        arr[arr == 255] = np.nan
        arr[:2, :3] = np.nan
        return arr, {"dtype": "float32", "nodata": float("nan")}

    _rewrite_labels(dense, tmp_path, table, float_nan, "f.csv")
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "f.csv"), data_root=str(dense))
    data = load_dense_data(cfg)
    counter = ClassCounter(len(data.tasks[0].names))
    counter.update_file(data.rasters["segmentation"][0])
    assert counter.counts.sum() == 16 * 16 - 6
    from msclip.factory import create_model
    from msclip.heads.scene_predict import ScenePreprocess

    _, y = DenseSamples(data, ScenePreprocess.from_model(create_model("msclip-tiny")))[0]
    lab = y["segmentation"]
    assert (lab[:2, :3] == 255).all() and int((lab == 255).sum()) == 6
    assert int(lab.max()) == 255 and int(lab[lab != 255].max()) < len(data.tasks[0].names)


def test_an_ignore_index_beyond_the_label_dtype_does_not_wrap(dense, tmp_path):
    """uint8 labels whose nodata is 13 with ignore_index 300: the nodata pixels are 300 (the
    index was cast to uint8 first and became 44, a class)."""
    table = pd.read_csv(dense / "index.csv")
    with rasterio.open(dense / table.loc[0, "label"]) as src:
        arr, profile = src.read(1), src.profile
    arr[:3, :3] = 13
    profile.update(nodata=13)
    out = tmp_path / "l0.tif"
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(arr, 1)
    table.loc[0, "label"] = str(out)
    table.to_csv(tmp_path / "n.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "n.csv"), data_root=str(dense),
               ignore_index=300)  # fmt: skip
    data = load_dense_data(cfg)
    from msclip.factory import create_model
    from msclip.heads.scene_predict import ScenePreprocess

    row = [str(p) for p in data.rasters["segmentation"]].index(str(out))
    _, y = DenseSamples(data, ScenePreprocess.from_model(create_model("msclip-tiny")))[row]
    lab = y["segmentation"].numpy()
    assert (lab[arr == 13] == 300).all() and not (lab == 44).any()


def test_a_negative_ignore_index_trains_and_is_left_out_of_the_metrics(dense, tmp_path):
    """int16 labels with -1 for unlabelled pixels and no nodata declared (TerraTorch's
    ``ignore_index: -1`` convention): ignore_index=-1 is accepted, and the -1 pixels count in
    neither the class weights nor the metrics."""

    def signed(arr):
        arr = arr.astype("int16")
        arr[:2, :] = -1
        return arr, {"dtype": "int16", "nodata": None}

    table = pd.read_csv(dense / "index.csv")
    _rewrite_labels(dense, tmp_path, table, signed, "m.csv")
    # under the default ignore index the -1 pixels are refused with the fix (no class list
    # holds a class -1)
    from msclip.errors import LabelError

    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "m.csv"), data_root=str(dense))
    with pytest.raises(LabelError, match=r"\[-1\] are outside .* make it the ignore index") as info:
        load_dense_data(cfg)
    assert info.value.param == "ignore_index" and "class list" not in str(info.value)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "m.csv"), data_root=str(dense),
               ignore_index=-1, class_weights=["auto"], epochs=1)  # fmt: skip
    (m,) = run_finetune(cfg).methods
    n_test = int(table["split"].str.lower().str.startswith("test").sum())
    assert m.record["metrics"]["n_pixels"] == n_test * 16 * (16 - 2)
    assert m.record["dense_settings"]["ignore_index"] == -1


def test_segmentation_run_records_class_weights_and_head(dense, tmp_path):
    cfg = _cfg(tmp_path, dense, class_weights=["auto"])
    res = run_finetune(cfg)
    (m,) = res.methods
    assert m.label == "linear-frozen" and m.main_metric == "miou"
    rec = m.record
    assert rec["task"] == "segmentation" and rec["dense_settings"]["ignore_index"] == 255
    assert 0 <= rec["metrics"]["miou"] <= 1 and len(rec["per_class"]) == 14
    # every test pixel counted once (the generator labels every pixel)
    assert rec["metrics"]["n_pixels"] == 16 * 16 * len(res.data.splits["test"])
    counter = ClassCounter(14, 255)
    for i in res.data.splits["train"]:
        counter.update_file(res.data.rasters["segmentation"][int(i)])
    weights = rec["method"]["hyperparameters"]["tasks"][0]["class_weights"]
    np.testing.assert_allclose(weights, counter.weights("auto"), rtol=1e-6)
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert summary["model"].tolist() == ["msclip-tiny-random+linear-frozen"]
    assert "segmentation" in (tmp_path / "res" / "report.md").read_text()
    ckpt = read_dense_head(m.files["head"])
    assert ckpt.tasks[0]["names"][0] == "sea" and ckpt.encoder["mode"] == "frozen"
    assert os.path.getsize(m.files["head"]) < 200_000  # decoder only, no encoder weights


def test_class_weights_leave_out_the_labels_under_image_nodata(dense, tmp_path):
    """Label pixels where the image has no data (a swath edge under a land-cover product that
    covers it) are ignored by the loss and the metrics: computed class weights leave them out
    too (they were counted from the label files alone)."""
    table = pd.read_csv(dense / "index.csv")
    for k, rel in enumerate(table["image"]):
        with rasterio.open(dense / rel) as src:
            arr, profile, names = src.read(), src.profile, src.descriptions
        arr[:, :, :10] = 0  # the image's nodata, in every band
        out = tmp_path / f"i{k}.tif"
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(arr)
            dst.descriptions = names
        table.loc[k, "image"] = str(out)
    table.to_csv(tmp_path / "edge.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "edge.csv"), data_root=str(dense),
               classes=str(dense / "classes.csv"), class_weights=["auto"], epochs=1)  # fmt: skip
    res = run_finetune(cfg)
    counter = ClassCounter(14, 255)
    for i in res.data.splits["train"]:
        with rasterio.open(res.data.rasters["segmentation"][int(i)]) as src:
            counter.update(src.read(1)[:, 10:])  # the pixels the loss sees
    weights = res.methods[0].record["method"]["hyperparameters"]["tasks"][0]["class_weights"]
    np.testing.assert_allclose(weights, counter.weights("auto"), rtol=1e-6)
    assert res.methods[0].record["metrics"]["n_pixels"] == 16 * 6 * len(res.data.splits["test"])


def test_nodata_targets_are_masked(dense, tmp_path):
    data_dir = tmp_path / "data"
    table = pd.read_csv(dense / "index.csv")
    masked = 0
    for k, rel in enumerate(table["target"]):
        with rasterio.open(dense / rel) as src:
            arr, profile = src.read(1), src.profile
        arr[:4, :] = -9999.0  # nodata value of the file
        arr[4, :3] = np.nan
        profile["nodata"] = -9999.0
        out = data_dir / f"t{k}.tif"
        out.parent.mkdir(exist_ok=True)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(arr, 1)
        table.loc[k, "target"] = str(out)
        if table.loc[k, "split"] == "test":
            masked += int(np.isfinite(arr).sum() - (arr == -9999.0).sum())
    table.to_csv(tmp_path / "t.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "t.csv"), data_root=str(dense),
               task="pixel-regression", loss="huber", scale=2.0)  # fmt: skip
    data = load_dense_data(cfg)
    from msclip.factory import create_model
    from msclip.heads.scene_predict import ScenePreprocess

    model = create_model("msclip-tiny")
    _, y = DenseSamples(data, ScenePreprocess.from_model(model))[0]
    t = y["pixel-regression"]
    assert torch.isnan(t[:4]).all() and torch.isnan(t[4, :3]).all() and torch.isfinite(t[5:]).all()
    with rasterio.open(dense / pd.read_csv(dense / "index.csv")["target"][0]) as src:
        np.testing.assert_allclose(t[5:].numpy(), src.read(1)[5:] * 2.0, rtol=1e-6)
    res = run_finetune(cfg, model=model)
    rec = res.methods[0].record
    assert rec["task"] == "pixel_regression" and rec["main_metric"] == "rmse"
    assert rec["metrics"]["n_pixels"] == masked  # only valid target pixels are scored
    assert np.isfinite(rec["metrics"]["rmse"]) and np.isfinite(rec["metrics"]["r2"])


def test_multi_task_one_encoder_pass(dense, tmp_path):
    cfg = _cfg(tmp_path, dense, task="multi-task", dense_tasks=[
        "name=cover,kind=segmentation,column=label,decoder=segformer,weight=1",
        "name=fcover,kind=pixel-regression,column=target,weight=0.5,loss=l1",
    ], decoder_channels=8, epochs=1)  # fmt: skip
    res = run_finetune(cfg)
    assert [m.label for m in res.methods] == ["linear-frozen:cover", "linear-frozen:fcover"]
    assert [m.record["task"] for m in res.methods] == ["segmentation", "pixel_regression"]
    ckpt = read_dense_head(res.methods[0].files["head"])
    assert [t["decoder"] for t in ckpt.tasks] == ["segformer", "linear"]
    assert [t["loss_weight"] for t in ckpt.tasks] == [1.0, 0.5]
    assert len(pd.read_csv(tmp_path / "res" / "summary_long.csv")["dataset"].unique()) == 2


def test_windows_blend_to_the_whole_prediction_of_a_pointwise_model():
    from msclip.heads.dense_finetune import predict_windows

    torch.manual_seed(0)
    seg, reg = torch.nn.Conv2d(5, 3, 1), torch.nn.Conv2d(5, 2, 1)
    sizes = []

    def predict(x):
        sizes.append(tuple(x.shape))
        return {"cover": seg(x), "fcover": reg(x)}

    x = torch.randn(1, 5, 40, 37)
    kinds = {"cover": "segmentation", "fcover": "pixel-regression"}
    with torch.no_grad():
        whole = predict(x)
        sizes.clear()
        got = predict_windows(predict, x, 16, kinds, batch_size=3)
    # probabilities for segmentation, values for regression, on the whole image's grid
    torch.testing.assert_close(got["cover"], whole["cover"].softmax(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["fcover"], whole["fcover"], rtol=0, atol=1e-5)
    # windows of 16 starting every 12 pixels, the last ones ending at the border, 3 per call
    assert {s[-2:] for s in sizes} == {(16, 16)} and sum(s[0] for s in sizes) == 3 * 3
    with torch.no_grad():  # an image narrower than a window: windows cut to it
        sizes.clear()
        predict_windows(predict, x[:, :, :, :10], 16, kinds)
    assert {s[-2:] for s in sizes} == {(16, 10)}


def test_images_larger_than_the_crops_are_scored_window_by_window(tmp_path):
    from msclip.heads import dense_finetune
    from msclip.heads.dense_finetune import evaluate_dense

    root = tmp_path / "data"
    generate_dense_dataset(root, classes=["sea", "forest", "desert"], n_per_class=4, size=32,
                           seed=0, splits=(0.5, 0.25, 0.25))  # fmt: skip
    cfg = _cfg(tmp_path, root, epochs=1, crop_size=16)
    res = run_finetune(cfg)
    hp = res.methods[0].result.hyperparameters
    assert hp["eval_mode"] == "auto" and hp["crop_size"] == 16
    # the modes call the predictor with windows of the crop size, or with the whole image
    data = load_dense_data(cfg)
    samples = dense_finetune.DenseSamples(data, _prep(), keep=False)
    seen = []

    def predict(x):
        seen.append(tuple(x.shape[-2:]))
        return {"segmentation": torch.zeros(x.shape[0], 14, *x.shape[-2:])}

    rows = data.splits["test"]
    for mode, tile, sizes in (("auto", 16, {(16, 16)}), ("sliding", 24, {(24, 24)}),
                              ("auto", 32, {(32, 32)}), ("whole", 16, {(32, 32)})):  # fmt: skip
        seen.clear()
        evaluate_dense(predict, samples, rows, tile=tile, mode=mode)
        assert set(seen) == sizes, (mode, tile, seen)
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_dense(predict, samples, rows, tile=16, mode="tiled")
    with pytest.raises(ConfigError, match="eval_mode must be auto, whole or sliding"):
        dataclasses.replace(cfg, eval_mode="tiles").validate()
    classification = FinetuneRunConfig(folders=str(tmp_path), eval_mode="whole")
    assert classification.inapplicable(["eval_mode"])[0].startswith("eval_mode: applies to dense")


def _prep():
    from msclip.factory import create_model
    from msclip.heads.scene_predict import ScenePreprocess

    return ScenePreprocess.from_model(create_model("msclip-tiny"))


def _run_then_die(cfg: FinetuneRunConfig) -> None:
    def die(label: str, epoch: int) -> None:
        if epoch == 2:
            os._exit(7)

    run_finetune(cfg, hooks=[die])
    os._exit(0)


def test_a_dense_lora_run_in_bf16_trains_float32_adapters_under_autocast(dense, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """--precision bf16 with a tower that trains: the adapters stay float32 and the encoder
    computes in bf16 by autocast (they were bf16 and lost updates below its resolution); the
    record says so."""
    monkeypatch.setenv("MSCLIP_BF16_CHECK", "0")  # the machine's bf16 kernels are not the point
    kw = dict(decoder="fcn", decoder_channels=8, encoder_mode="lora", epochs=1, precision="bf16")
    result = run_finetune(_cfg(tmp_path, dense, **kw))
    adapters = load_file(result.methods[0].files["adapters"])
    assert adapters and all(t.dtype == torch.float32 for t in adapters.values())
    record = json.loads(next((tmp_path / "res" / "records").glob("*.json")).read_text())
    assert record["model"]["precision"] == "fp32"
    assert "bf16 autocast over float32 weights" in record["model"]["precision_reason"]


def test_killed_dense_lora_run_resumes_to_the_same_bits(dense, tmp_path):
    kw = dict(decoder="fcn", decoder_channels=8, encoder_mode="lora", lora_dropout=0.2, epochs=3)
    whole = run_finetune(_cfg(tmp_path / "a", dense, **kw))
    cfg = _cfg(tmp_path / "b", dense, **kw)
    assert exit_code_of(_run_then_die, cfg) == 7
    folder = tmp_path / "b" / "run" / "fcn-lora"
    assert (folder / "checkpoint.pt").is_file() and not (folder / "dense_head.safetensors").exists()
    with pytest.raises(ConfigError, match="resume"):
        run_finetune(cfg)
    with pytest.raises(CheckpointError, match=r"other settings \(crop_size \d+ -> 8\)"):
        run_finetune(dataclasses.replace(cfg, resume=True, crop_size=8))
    seen: list[int] = []
    resumed = run_finetune(dataclasses.replace(cfg, resume=True),
                           hooks=[lambda label, epoch: seen.append(epoch)])  # fmt: skip
    assert seen == [3]
    a, b = whole.methods[0].files, resumed.methods[0].files
    for key in ("head", "adapters"):
        ta, tb = load_file(a[key]), load_file(b[key])
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (key, k)
    assert any("running_mean" in k for k in load_file(a["head"]))  # batch-norm state kept
    pd.testing.assert_frame_equal(pd.read_csv(a["history"]), pd.read_csv(b["history"]))
    assert whole.methods[0].result.metrics == resumed.methods[0].result.metrics


def test_grid_table_every_combination_and_skips_finished(dense, tmp_path):
    cfg = _cfg(tmp_path, dense, epochs=1, decoder_channels=8)
    res = run_grid(cfg, ["linear", "segformer"], ["frozen", "scratch"])
    df = pd.read_csv(res.csv)
    assert sorted(res.ran) == sorted(["linear-frozen", "segformer-frozen", "linear-scratch",
                                      "segformer-scratch"])  # fmt: skip
    assert set(zip(df["decoder"], df["encoder_mode"])) == {
        ("linear", "frozen"), ("segformer", "frozen"), ("linear", "scratch"),
        ("segformer", "scratch"), ("maskclip", "frozen")}  # fmt: skip
    assert df["miou"].between(0, 1).all()
    md = res.markdown.read_text()
    assert "| linear |" in md and "zero-shot (MaskCLIP)" in md
    again = run_grid(cfg, ["linear", "segformer"], ["frozen", "scratch"])
    assert again.ran == [] and len(again.skipped) == 4
    pd.testing.assert_frame_equal(pd.read_csv(again.csv).drop(columns="seconds"),
                                  df.drop(columns="seconds"))  # fmt: skip
    with pytest.raises(ConfigError, match="decoders"):
        run_grid(cfg, ["unet"], ["frozen"])
    # a last_n the tower cannot take is refused before any cell trains (it was found when the
    # last-n cells came, after the frozen ones had trained)
    deep = dataclasses.replace(cfg, last_n=99, output_dir=str(tmp_path / "deep"))
    with pytest.raises(ConfigError, match=r"last_n = 99 but the image tower has \d+ blocks") as e:
        run_grid(deep, ["linear"], ["frozen", "last-n"])
    assert e.value.param == "last_n" and not (tmp_path / "deep").exists()
    # another setting: the finished cells are not passed off as its results
    with pytest.raises(ConfigError, match=r"other settings \(epochs 1 -> 2\).*another output_dir"):
        run_grid(dataclasses.replace(cfg, epochs=2), ["linear"], ["frozen"])


def test_a_grid_cell_killed_while_writing_its_outputs_is_completed(dense, tmp_path, monkeypatch):
    """A cell killed after its head file but before its record and protocol card is not taken
    as finished by the next grid: it is completed (summary.csv gets its row), not skipped."""
    import msclip.eval.report as report

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    cfg = _cfg(tmp_path, dense, epochs=1, decoder_channels=8)
    with monkeypatch.context() as m:
        m.setattr(report, "write_record", killed)
        with pytest.raises(Killed):
            run_grid(cfg, ["linear"], ["frozen"], zero_shot=False)
    cell = tmp_path / "run" / "linear-frozen"
    assert (cell / "linear-frozen" / "dense_head.safetensors").is_file()
    assert not (cell / "protocol.yaml").exists()
    res = run_grid(cfg, ["linear"], ["frozen"], zero_shot=False)
    assert res.ran == ["linear-frozen"] and res.skipped == []
    assert (cell / "protocol.yaml").is_file()
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert summary["model"].str.endswith("+linear-frozen").any()
    again = run_grid(cfg, ["linear"], ["frozen"], zero_shot=False)
    assert again.ran == [] and again.skipped == ["linear-frozen"]


def test_grid_scores_the_zero_shot_row_again_under_other_settings(dense, tmp_path, monkeypatch):
    """The zero-shot row is kept with its settings: a grid of new cells in the same folder with
    other templates scores it again instead of showing the earlier templates' row."""
    import msclip.heads.dense_finetune as dense_finetune

    scored: list[object] = []
    real = dense_finetune.evaluate_maskclip

    def counting(model, samples, ids, task, names, templates, **windows):
        scored.append(templates)
        assert windows == {"tile": 16, "mode": "auto"}  # the crops' size and the run's mode
        return real(model, samples, ids, task, names, templates, **windows)

    monkeypatch.setattr(dense_finetune, "evaluate_maskclip", counting)
    cfg = _cfg(tmp_path, dense, epochs=1, decoder_channels=8, templates="short")
    run_grid(cfg, ["linear"], ["frozen"])
    run_grid(cfg, ["linear"], ["frozen"])  # the same settings: the kept row
    assert len(scored) == 1
    run_grid(dataclasses.replace(cfg, templates="eo"), ["segformer"], ["scratch"])
    assert len(scored) == 2 and scored[1] != scored[0]


def test_scene_prediction_with_a_trained_head(dense, tmp_path, caplog, monkeypatch):
    from msclip.factory import create_model
    from msclip.heads.scene_predict import predict_scene_with_head

    cfg = _cfg(tmp_path, dense, epochs=1)
    torch.manual_seed(0)
    model = create_model("msclip-tiny")
    head = run_finetune(cfg, model=model).methods[0].files["head"]
    # a 40 x 24 scene with a nodata corner, from two tiles side by side
    data = load_dense_data(cfg)
    with rasterio.open(data.images[0]) as a, rasterio.open(data.images[1]) as b:
        arr = np.concatenate([a.read(), b.read(), a.read()[:, :, :8]], axis=2)
        arr = np.concatenate([arr, arr[:, :8]], axis=1)
        profile = a.profile
        names = a.descriptions
    arr[:, :5, :7] = 0
    profile.update(width=arr.shape[2], height=arr.shape[1], nodata=0)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(arr)
        dst.descriptions = names
    fresh = create_model("msclip-tiny")
    fresh.load_state_dict(model.state_dict())
    fresh.checkpoint_sha256 = model.checkpoint_sha256
    out = predict_scene_with_head(scene, tmp_path / "map.tif", head, fresh, tile_size=16,
                                  progress=False)  # fmt: skip
    with rasterio.open(out.path) as o, rasterio.open(scene) as s:
        assert o.crs == s.crs and o.transform == s.transform and (o.width, o.height) == (40, 24)
        cls, conf = o.read(1), o.read(2)
        assert o.descriptions == ("class", "confidence") and o.nodata == 255
    assert (cls[:5, :7] == 255).all() and (conf[:5, :7] == 255).all()
    assert (cls[5:] < 14).all() and (conf[5:] <= 100).all()
    # the head keeps its training images' ground resolution (10 m); a scene of 30 m pixels is
    # named, one of about 10 m in degrees is not
    assert read_dense_head(head).info["pixel_size_m"] == [10.0, 10.0]
    coarse, geographic = tmp_path / "coarse.tif", tmp_path / "geographic.tif"
    for path, crs, transform in (
        (coarse, profile["crs"], rasterio.transform.from_origin(300000, 5100000, 30, 30)),
        (geographic, "EPSG:4326", rasterio.transform.from_origin(9.0, 46.0, 1.3e-4, 9e-5)),
    ):
        with rasterio.open(path, "w", **{**profile, "crs": crs, "transform": transform}) as dst:
            dst.write(arr)
            dst.descriptions = names
    with caplog.at_level("WARNING"):
        predict_scene_with_head(coarse, tmp_path / "c.tif", head, fresh, progress=False)
    assert "the pixels of " in caplog.text and "are 30 m on the ground" in caplog.text
    assert "trained on images of 10 m pixels" in caplog.text
    caplog.clear()
    monkeypatch.chdir(Path(head).parent)  # a head named by a relative path
    with caplog.at_level("WARNING"):
        predict_scene_with_head(geographic, tmp_path / "g.tif", "dense_head.safetensors", fresh,
                                progress=False)  # fmt: skip
    assert "on the ground" not in caplog.text
    with rasterio.open(tmp_path / "g.tif") as o:  # the map names the head wherever it is read
        assert o.tags()["msclip_head"] == str(Path(head).resolve())
    torch.manual_seed(1)
    other = create_model("msclip-tiny")
    with pytest.raises(CheckpointMismatchError, match="was trained on encoder"):
        predict_scene_with_head(scene, tmp_path / "no.tif", head, other, progress=False)
    assert not (tmp_path / "no.tif").exists()


def test_one_training_image_with_upernet_is_refused_in_one_line(dense, tmp_path):
    table = pd.read_csv(dense / "index.csv")
    train = np.flatnonzero(table["split"] == "train")
    table.loc[train[1:], "split"] = "val"
    table.to_csv(tmp_path / "one.csv", index=False)
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "one.csv"), data_root=str(dense),
               classes=str(dense / "classes.csv"),
               decoder="upernet", decoder_channels=4, epochs=1)  # fmt: skip
    with pytest.raises(HeadInputError, match=r"train split holds 1 image.*upernet"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "res").exists()


def test_image_and_label_folders_skip_hidden_files(tmp_path):
    """Images and labels matched by name in two folders: hidden files (a macOS ._* fork, an
    interrupted write's .tmp-* file) are not samples, so they do not count as unmatched."""
    from msclip.heads.dense_data import DenseTarget, from_folders
    from msclip.synthetic import generate_dense_dataset

    generate_dense_dataset(tmp_path / "d", classes=["sea", "forest"], n_per_class=3, size=16,
                           seed=0)  # fmt: skip
    images, labels = tmp_path / "d" / "images", tmp_path / "d" / "labels"
    first = sorted(images.iterdir())[0]
    (images / f"._{first.name}").write_bytes(b"\0\5\26\7")
    (labels / f".tmp-1234-{first.name}").write_bytes(first.read_bytes()[:100])
    task = DenseTarget("segmentation", "segmentation", "label_dir")
    data = from_folders(images, labels, task, val_fraction=0.2, test_fraction=0.2)
    assert len(data.images) == 6 and not any(Path(p).name.startswith(".") for p in data.images)


def test_spreadsheet_tables_and_class_lists_are_read(dense, tmp_path, caplog):
    """An index table and a class list saved by a spreadsheet (byte-order mark, semicolons, a
    capitalised header, a colour column) are read as the comma-separated ones; a classes.csv
    that is no class list is named, not passed over; an empty cell names its line."""
    table = pd.read_csv(dense / "index.csv")
    table["image"] = [str(dense / v) for v in table["image"]]
    table["label"] = [str(dense / v) for v in table["label"]]
    table[["image", "label", "split"]].to_csv(
        tmp_path / "index.csv", sep=";", index=False, encoding="utf-8-sig"
    )
    names = ["water", "lake", "river", "snow", "cloud", "forest", "crops", "grass", "bare",
             "desert", "urban", "wetland", "beach", "burnt"]  # fmt: skip
    colours = pd.DataFrame({"Value": range(14), "Class": names, "Colour": ["#0000ff"] * 14})
    colours.to_csv(tmp_path / "classes.csv", sep=";", index=False, encoding="utf-8-sig")
    data = load_dense_data(_cfg(tmp_path, dense, csv=str(tmp_path / "index.csv")))
    assert data.tasks[0].names == names and len(data) == len(table)
    # a file of that name without the columns: said, and the classes numbered from the labels
    pd.DataFrame({"code": [0], "name": ["sea"]}).to_csv(tmp_path / "classes.csv", index=False)
    with caplog.at_level("WARNING"):
        data = load_dense_data(_cfg(tmp_path, dense, csv=str(tmp_path / "index.csv")))
    assert data.tasks[0].names[0] == "class_0"
    assert "classes.csv has no 'value' and 'class' columns" in caplog.text
    bad = tmp_path / "bad_classes.csv"
    bad.write_text("value,class\n0,sea\n1.5,forest\n", encoding="utf-8")
    with pytest.raises(HeadInputError, match=r"line 3: class value '1.5' is not a whole number"):
        load_dense_data(_cfg(tmp_path, dense, csv=str(tmp_path / "index.csv"), classes=str(bad)))
    table.loc[2, "label"] = ""
    table[["image", "label", "split"]].to_csv(tmp_path / "hole.csv", index=False)
    with pytest.raises(HeadInputError, match=r"hole.csv, line 4: the 'label' cell is empty"):
        load_dense_data(_cfg(tmp_path, dense, csv=str(tmp_path / "hole.csv")))


def test_label_codes_of_a_land_cover_product_are_named(dense, tmp_path, caplog):
    """Labels coded as ESA WorldCover codes them (10, 20, ... 100): without a class list the
    head would get 101 classes, 90 never seen, and that is said; a class list of those codes is
    refused with the remapping to make."""

    def codes(arr):
        out = np.full(arr.shape, 40, "uint8")
        out[arr == 0], out[arr == 5], out[arr == 9] = 80, 10, 60
        return out, {"nodata": 0}

    table = pd.read_csv(dense / "index.csv")
    _rewrite_labels(dense, tmp_path, table, codes, "wc.csv")
    cfg = _cfg(tmp_path, dense, csv=str(tmp_path / "wc.csv"), data_root=str(dense))
    with caplog.at_level("WARNING"):
        data = load_dense_data(cfg)
    assert len(data.tasks[0].names) == 81
    assert "the training labels hold 4 values (10, 40, 60, 80) up to 80" in caplog.text
    assert "77 of them never seen" in caplog.text and "remap the label rasters" in caplog.text
    listed = tmp_path / "wc_classes.csv"
    listed.write_text("value,class\n10,tree cover\n40,cropland\n60,bare\n80,water\n")
    with pytest.raises(
        HeadInputError, match=r"remap the label rasters \(10 -> 0, 40 -> 1, 60 -> 2"
    ):
        load_dense_data(dataclasses.replace(cfg, classes=str(listed)))
