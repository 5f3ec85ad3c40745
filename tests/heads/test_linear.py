"""Heads trained by gradient descent (msclip.heads.linear): the text-initialised head equals
zero-shot classification before training, the linear head trains, is deterministic, reads
memory-mapped features and rebuilds from its config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msclip
from msclip.errors import HeadConfigError, HeadInputError
from msclip.heads import (
    LinearHead,
    TextInitHead,
    build_head,
    fit_head,
    linear_probe,
    predict_head,
    text_linear_probe,
)
from msclip.zero_shot import build_classifier, zero_shot_logits

CLASSES = ["annual crop", "forest", "river", "industrial buildings", "sea or lake"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny").eval()
    tokenizer = msclip.get_tokenizer(model)
    classifier = build_classifier(model, tokenizer, CLASSES, ["a satellite image of {c}.", "{c}"])
    images = torch.randn(12, len(model.bands), 32, 32)
    with torch.no_grad():
        features = model.encode_image(images)
    return model, classifier, features


def test_text_head_equals_zero_shot_before_training(tiny) -> None:
    _, classifier, features = tiny
    expected = zero_shot_logits(features, classifier)
    for kwargs in ({}, {"bias": True}, {"learnable_scale": True}):
        head = TextInitHead(classifier, class_names=CLASSES, **kwargs)
        with torch.no_grad():
            assert torch.equal(head(features), expected), kwargs
    head = TextInitHead(classifier, bias=True, learnable_scale=True)
    assert {n for n, p in head.named_parameters()} == {"weight", "bias", "scale"}
    assert float(head.scale.detach()) == 100.0 and torch.equal(head.bias, torch.zeros(5))


def test_text_head_training_moves_from_zero_shot(tiny, rng) -> None:
    _, classifier, _ = tiny
    # Features near the class embeddings, but labelled with a permutation zero-shot cannot know.
    d = classifier.shape[1]
    y = rng.integers(0, 5, size=200)
    perm = np.array([1, 2, 3, 4, 0])
    x = classifier[perm[y]].numpy() + 0.05 * rng.normal(size=(200, d)).astype(np.float32)
    zs = text_linear_probe(classifier, x[:150], y[:150], x[150:], y[150:], epochs=0, n_resamples=0)
    np.testing.assert_allclose(
        zs.scores,
        zero_shot_logits(torch.from_numpy(x[150:]), classifier).double().softmax(1).numpy(),
        rtol=1e-6,
    )
    tuned = text_linear_probe(
        classifier,
        x[:150],
        y[:150],
        x[150:],
        y[150:],
        epochs=30,
        batch_size=32,
        lr=3e-3,
        n_resamples=0,
    )
    assert zs.metrics["top1_accuracy"] < 0.3 < 0.9 < tuned.metrics["top1_accuracy"]
    head = tuned.extra["head"]
    assert not torch.equal(head.weight.detach(), classifier)
    assert tuned.hyperparameters["init"] == "zero-shot classifier"


def _blobs(rng, n=300, d=8, c=3):
    centers = rng.normal(size=(c, d)) * 3
    y = rng.integers(0, c, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_linear_head_trains_deterministically(rng) -> None:
    x, y = _blobs(rng, n=257)  # 257 = one batch of 256 and a batch of 1, merged
    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        head = LinearHead(8, 3)
        history = fit_head(head, x, y, epochs=20, batch_size=256, lr=0.05, seed=3)
        heads.append(head)
    assert len(history) == 20 and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0
    for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    p = predict_head(heads[0], x, "single-label")
    assert (p.argmax(1) == y).mean() > 0.95 and np.allclose(p.sum(1), 1.0)
    assert not heads[0].training  # left in eval mode


def test_linear_probe_reads_memory_mapped_features(rng, tmp_path) -> None:
    x, y = _blobs(rng, n=200)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    a = linear_probe(
        mapped[:150],
        y[:150],
        mapped[150:],
        y[150:],
        epochs=5,
        batch_size=32,
        n_resamples=20,
        val_features=x[150:],
        val_targets=y[150:],
    )
    b = linear_probe(x[:150], y[:150], x[150:], y[150:], epochs=5, batch_size=32, n_resamples=20)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.hyperparameters["lr"] == pytest.approx(1e-3 * 32 / 256)
    assert "val_loss" in a.extra["history"][-1] and "val_loss" not in b.extra["history"][-1]
    # torch input (float16, as a feature cache stores) works too
    c = linear_probe(
        torch.from_numpy(x[:150]).half(),
        y[:150],
        x[150:],
        y[150:],
        epochs=2,
        batch_size=32,
        n_resamples=0,
    )
    assert c.scores.shape == (50, 3)


def test_linear_head_regression_and_multilabel(rng) -> None:
    x = rng.normal(size=(300, 6)).astype(np.float32)
    t = np.stack([x @ rng.normal(size=6) * 50 + 1000, x[:, 0] * 0.01], axis=1)
    res = linear_probe(
        x[:240],
        t[:240],
        x[240:],
        t[240:],
        task="regression",
        epochs=25,
        batch_size=60,
        lr=0.05,
        n_resamples=0,
    )
    assert res.task == "regression" and res.metrics["r2"] > 0.9
    head = res.extra["head"]
    np.testing.assert_allclose(head.target_mean.numpy(), t[:240].mean(0), rtol=1e-5)
    for loss in ("l1", "huber"):
        r = linear_probe(
            x[:240],
            t[:240, 0],
            x[240:],
            t[240:, 0],
            task="regression",
            epochs=2,
            loss=loss,
            batch_size=60,
            n_resamples=0,
        )
        assert r.scores.shape == (60, 1) and r.hyperparameters["loss"] == loss
    labels = np.stack([x[:, 0] > 0, x[:, 1] > 0], axis=1).astype(np.int64)
    ml = linear_probe(
        x[:240],
        labels[:240],
        x[240:],
        labels[240:],
        epochs=15,
        batch_size=60,
        lr=0.05,
        n_resamples=0,
    )
    assert ml.task == "multi-label" and ml.metrics["map"] > 0.9


def test_head_config_round_trip(tiny, rng) -> None:
    _, classifier, features = tiny
    x, y = _blobs(rng, d=32)
    head = LinearHead(32, 3)
    fit_head(head, x, y, epochs=2, batch_size=64)
    text = TextInitHead(classifier, bias=True, class_names=CLASSES)
    for h in (head, text):
        rebuilt = build_head(h.config())
        rebuilt.load_state_dict(h.state_dict())
        rebuilt.eval()
        h.eval()
        with torch.no_grad():
            assert torch.equal(rebuilt(features), h(features))
    assert build_head(text.config()).class_names == CLASSES
    with pytest.raises(HeadConfigError, match="unknown head type 'mlp'"):
        build_head({"type": "mlp"})


def test_head_training_bad_input(rng) -> None:
    x, y = _blobs(rng, n=20)
    with pytest.raises(HeadConfigError, match="loss 'mse' does not fit a single-label task"):
        fit_head(LinearHead(8, 3), x, y, loss="mse")
    with pytest.raises(HeadInputError, match="the head has 4 outputs but the targets have 3"):
        fit_head(LinearHead(8, 4), x, y, num_classes=3)
    t = rng.normal(size=20)
    t[11] = np.nan
    with pytest.raises(
        HeadInputError, match=r"train_targets has NaN or infinite values at rows \[11\]"
    ):
        fit_head(LinearHead(8, 1), x, t, task="regression")
    with pytest.raises(HeadConfigError, match="non-integer values: pass task='regression'"):
        fit_head(LinearHead(8, 1), x, rng.normal(size=20))
    with pytest.raises(HeadConfigError, match="batch_size must be an integer >= 2"):
        fit_head(LinearHead(8, 3), x, y, batch_size=1)
    with pytest.raises(HeadInputError, match="a single class"):
        fit_head(LinearHead(8, 3), x, np.zeros(20, int), num_classes=3)


def test_seeding_leaves_the_callers_random_state(rng, monkeypatch) -> None:
    """The heads seed torch's CPU generator and restore the caller's; they never reseed the CUDA
    generators (``torch.manual_seed`` would, or queue it for when CUDA starts) unless the work
    runs there, and then restore those too."""
    import contextlib

    from msclip.heads.seeding import seeded

    reseeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    x, y = _blobs(rng, n=64)
    state = torch.random.get_rng_state()
    linear_probe(x[:48], y[:48], x[48:], y[48:], epochs=2, batch_size=16, n_resamples=0)
    assert torch.equal(torch.random.get_rng_state(), state) and reseeded == []
    with seeded(5):
        a = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state) and reseeded == []
    torch.random.default_generator.manual_seed(5)
    assert torch.equal(a, torch.rand(3))
    # with cuda=True on a machine with 2 devices: both forked, then seeded
    forked: list[list[int]] = []

    @contextlib.contextmanager
    def fork(devices):
        forked.append(list(devices))
        yield

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.random, "fork_rng", fork)
    with seeded(7, cuda=True):
        pass
    assert forked == [[0, 1]] and reseeded == [7]
