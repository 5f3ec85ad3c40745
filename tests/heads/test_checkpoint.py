"""Head-only checkpoints: probes as heads, the file round trip, binding to the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

import msclip
from msclip.errors import CheckpointError, CheckpointMismatchError, HeadConfigError, HeadInputError
from msclip.heads import FeatureSpec, LinearHead, fit_logistic, fit_ridge, knn_scores, predict_head
from msclip.heads.checkpoint import (
    KNNHead,
    bind_head,
    encoder_facts,
    head_scores,
    logistic_to_head,
    read_head,
    ridge_to_head,
    save_head,
)


def _data(n: int = 60, d: int = 8, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + np.eye(c, d)[y] * 2 + 5.0  # offset: standardisation matters
    return x.astype(np.float32), y


@pytest.mark.parametrize("kind", ["multinomial", "binary", "absent-class", "multi-label"])
def test_logistic_as_a_linear_head_gives_the_same_probabilities(kind):
    x, y = _data()
    task, nc = "classification", None
    if kind == "binary":
        y = (y > 0).astype(int)
    if kind == "absent-class":
        y = np.where(y == 1, 2, y)
        nc = 4  # classes 1 and 3 never seen
    if kind == "multi-label":
        y = np.stack([y == 0, y == 1, np.zeros_like(y)], axis=1).astype(float)  # last: constant
        task = "multi-label"
    model = fit_logistic(x, y, C=0.5, num_classes=nc)
    head = logistic_to_head(model)
    np.testing.assert_allclose(head_scores(head, x, task), model.predict_proba(x), atol=1e-5)


def test_ridge_and_knn_heads_equal_their_probes():
    x, y = _data()
    t = np.stack([x[:, 0] * 3 + 1, x[:, 1] - x[:, 2]], axis=1)
    ridge = fit_ridge(x, t, alpha=2.0)
    np.testing.assert_allclose(
        head_scores(ridge_to_head(ridge), x, "regression"), ridge.predict(x), atol=1e-4
    )
    head = KNNHead(x[:40], y[:40], 3, k=7, temperature=0.07)
    want = knn_scores(x[:40].astype(np.float16), y[:40], x[40:], k=7, num_classes=3)
    np.testing.assert_allclose(head_scores(head, x[40:], "classification"), want, atol=1e-12)


def test_predict_head_reads_a_knn_head_and_the_task_of_head_files():
    x, y = _data()
    head = KNNHead(x[:40], y[:40], 3, k=7)
    want = knn_scores(x[:40].astype(np.float16), y[:40], x[40:], k=7, num_classes=3)
    # vote fractions already: no softmax over them, whatever the task is called
    for task in ("single-label", "classification"):
        np.testing.assert_allclose(predict_head(head, x[40:], task), want, atol=1e-12)


def test_a_knn_head_checks_its_bank_and_labels_when_built():
    x, y = _data()  # 3 classes
    # each failed on the first prediction, as an index error of torch
    with pytest.raises(HeadInputError, match=r"class index 2 .* num_classes = 2"):
        KNNHead(x, y, 2)
    with pytest.raises(HeadInputError, match="labels has 40 rows but the features have 60"):
        KNNHead(x, y[:40], 3)
    with pytest.raises(HeadInputError, match="map class names to indices"):
        KNNHead(x, np.array(["a", "b", "c"])[y], 3)
    with pytest.raises(HeadInputError, match=r"beyond float16 .* L2-normalise"):
        KNNHead(x * 1e5, y, 3)  # the bank would be infinite: every query 'NaN or infinite'
    with pytest.raises(HeadConfigError, match="k must be"):
        KNNHead(x, y, 3, k=0)


def test_head_scores_refuses_an_unknown_task_and_features_of_another_width():
    x, y = _data()
    head = logistic_to_head(fit_logistic(x, y, C=0.5))
    with pytest.raises(HeadConfigError, match="unknown task 'classfication'"):
        head_scores(head, x, "classfication")  # would have returned the raw logits
    with pytest.raises(HeadInputError, match=r"5 features per row but .* have 8"):
        head_scores(head, x[:, :5], "classification")


def test_head_file_round_trip_holds_no_encoder(tmp_path):
    model = msclip.create_model("msclip-tiny")
    x, y = _data(d=model.width)
    knn = KNNHead(x, y, 3, k=5, temperature=None)
    torch.manual_seed(0)
    lin = LinearHead(model.width, 3)
    lin.eval()
    for head, name in ((knn, "knn"), (lin, "linear")):
        path = save_head(tmp_path / f"{name}.safetensors", head, task="classification",
                         names=["a", "b", "c"], features=FeatureSpec("cls", (-1,)),
                         encoder=encoder_facts(model), method=name,
                         prompt_names=["A", "B", "C"])  # fmt: skip
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        assert not any(k.startswith(("visual", "clip", "transformer")) for k in keys)
        back = read_head(path)
        assert back.names == ["a", "b", "c"] and back.prompt_names == ["A", "B", "C"]
        assert back.features == FeatureSpec("cls", (-1,)) and back.method == name
        assert back.encoder["fingerprint"] == model.fingerprint(precision=False)
        np.testing.assert_array_equal(
            head_scores(back.head, x, "classification"), head_scores(head, x, "classification")
        )
        bind_head(back, model)  # the same encoder: accepted


def test_head_on_another_encoder_is_refused_naming_both_fingerprints(tmp_path):
    torch.manual_seed(0)
    trained_on = msclip.create_model("msclip-tiny")
    torch.manual_seed(1)
    other = msclip.create_model("msclip-tiny")
    path = save_head(tmp_path / "h.safetensors", LinearHead(trained_on.width, 2),
                     task="classification", names=["x", "y"], features=FeatureSpec(),
                     encoder=encoder_facts(trained_on), method="linear")  # fmt: skip
    head = read_head(path)
    a, b = trained_on.fingerprint(precision=False), other.fingerprint(precision=False)
    assert a != b
    with pytest.raises(CheckpointMismatchError, match=rf"trained on encoder {a}.*model is {b}"):
        bind_head(head, other)
    bf16 = trained_on.to(torch.bfloat16)  # same weights in another precision: accepted
    bind_head(head, bf16)


def test_predicting_refuses_an_encoder_the_head_was_not_trained_on(tmp_path):
    from msclip.encode import ImageDataset
    from msclip.heads.checkpoint import predict_images
    from msclip.heads.decoders import build_decoder
    from msclip.heads.dense_head import DenseHeadCheckpoint

    torch.manual_seed(0)
    trained_on = msclip.create_model("msclip-tiny")
    torch.manual_seed(1)
    other = msclip.create_model("msclip-tiny")
    path = save_head(tmp_path / "h.safetensors", LinearHead(trained_on.width, 2).eval(),
                     task="classification", names=["x", "y"], features=FeatureSpec(),
                     encoder=encoder_facts(trained_on), method="linear")  # fmt: skip
    head = read_head(path)
    files = ["benchmark_datasets/examples/sea_01.tif"]
    b = other.fingerprint(precision=False)
    # without bind_head: refused before any image is read, not scored on the wrong features
    with pytest.raises(CheckpointMismatchError, match=rf"but the model is {b}"):
        predict_images(head, other, ImageDataset(files, other.preprocess()))
    scores, ok, *_ = predict_images(head, trained_on, ImageDataset(files, trained_on.preprocess()))
    assert scores.shape == (1, 2) and ok == [0]
    decoder = build_decoder("linear", [trained_on.width], 2, trained_on.patch_size)
    dense = DenseHeadCheckpoint(
        tasks=[{"name": "seg", "kind": "segmentation", "num_outputs": 2, "decoder": "linear"}],
        layers=[-1], pad_mode="reflect", heads=torch.nn.ModuleDict({"seg": decoder}),
        encoder=encoder_facts(trained_on), method="linear-frozen",
    )  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match=rf"but the model is {b}"):
        dense.dense_model(other)
    assert dense.dense_model(trained_on).task_names == ["seg"]


def test_not_a_head_file_is_refused(tmp_path):
    model = msclip.create_model("msclip-tiny")
    from msclip.pretrained import save_checkpoint

    ckpt = save_checkpoint(model, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not an msclip head file"):
        read_head(ckpt)
    with pytest.raises(CheckpointError, match="not found"):
        read_head(tmp_path / "missing.safetensors")


def test_a_damaged_head_file_is_a_checkpoint_error(tmp_path):
    from msclip.heads.dense_head import head_file_format, read_dense_head
    from msclip.heads.runs import head_file_info

    model = msclip.create_model("msclip-tiny")
    path = save_head(tmp_path / "h.safetensors", LinearHead(model.width, 2),
                     task="classification", names=["x", "y"], features=FeatureSpec(),
                     encoder=encoder_facts(model), method="linear")  # fmt: skip
    data = path.read_bytes()
    cut, junk = tmp_path / "cut.safetensors", tmp_path / "junk.safetensors"
    cut.write_bytes(data[: len(data) - 20])  # a copy cut short: the header outruns the file
    junk.write_bytes(b"not a head\n")
    for bad in (cut, junk):  # the safetensors reader's own error, not an internal error
        for read in (read_head, read_dense_head, head_file_format):
            with pytest.raises(CheckpointError, match=rf"cannot read head file .*{bad.name}"):
                read(bad)
        with pytest.raises(CheckpointError, match="remove its folder"):
            head_file_info(bad)


def test_a_pytorch_pickle_given_as_a_head_file_is_named(tmp_path):
    """A head saved with torch.save (zip or legacy format) is said to be a pickle, which msclip
    never unpickles, with the fix; it read 'damaged or cut short?'."""
    import torch

    from msclip.heads.dense_head import read_dense_head

    state = LinearHead(8, 2).state_dict()
    zipped, legacy = tmp_path / "head.pt", tmp_path / "legacy.pt"
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        for read in (read_head, read_dense_head):
            with pytest.raises(CheckpointError, match=r"is a PyTorch pickle .*save_head"):
                read(path)


def _rewrite(path, tmp_path, **changes):
    """A copy of a head file with some metadata entries changed."""
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.update(changes)
    out = tmp_path / f"{'-'.join(changes)}.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


def test_a_head_file_of_another_format_version_or_damaged_metadata_is_refused(tmp_path):
    import json

    from msclip.heads.decoders import build_decoder
    from msclip.heads.dense_head import read_dense_head, save_dense_head

    model = msclip.create_model("msclip-tiny")
    path = save_head(tmp_path / "h.safetensors", LinearHead(model.width, 3),
                     task="classification", names=["a", "b", "c"], features=FeatureSpec(),
                     encoder=encoder_facts(model), method="linear")  # fmt: skip
    newer = _rewrite(path, tmp_path, format_version="2", msclip_version="9.0")
    with pytest.raises(CheckpointError, match=r"format version '2'.*msclip 9\.0.*upgrade msclip"):
        read_head(newer)
    # a head type this msclip does not know: the file is named, not a bare config error
    mlp = json.dumps({"type": "mlp", "in_features": model.width, "out_features": 3})
    with pytest.raises(CheckpointError, match=r"head\.safetensors holds a head .*'mlp'"):
        read_head(_rewrite(path, tmp_path, head=mlp))
    # names that do not match the outputs would label the scores wrongly
    with pytest.raises(CheckpointError, match=r"names 2 outputs .* head of 3"):
        read_head(_rewrite(path, tmp_path, names=json.dumps(["a", "b"])))
    decoder = build_decoder("linear", [model.width], 2, model.patch_size)
    dense = save_dense_head(
        tmp_path / "d.safetensors", torch.nn.ModuleDict({"seg": decoder}),
        tasks=[{"name": "seg", "kind": "segmentation", "num_outputs": 2, "decoder": "linear"}],
        layers=[-1], pad_mode="reflect", method="linear-frozen",
        encoder=encoder_facts(model, width=model.width, patch_size=model.patch_size),
    )  # fmt: skip
    read_dense_head(dense)
    with pytest.raises(CheckpointError, match=r"format version '3'"):
        read_dense_head(_rewrite(dense, tmp_path, format_version="3"))


def test_save_head_refuses_names_that_do_not_match_the_outputs(tmp_path):
    model = msclip.create_model("msclip-tiny")
    args = dict(task="classification", features=FeatureSpec(), encoder=encoder_facts(model),
                method="linear")  # fmt: skip
    with pytest.raises(HeadConfigError, match=r"2 names .* head of 3 outputs"):
        save_head(tmp_path / "h.safetensors", LinearHead(model.width, 3), names=["a", "b"], **args)
    with pytest.raises(HeadConfigError, match="single string"):
        save_head(tmp_path / "h.safetensors", LinearHead(model.width, 3), names="abc", **args)
    assert not (tmp_path / "h.safetensors").exists()
