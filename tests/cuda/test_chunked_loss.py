"""The chunked (blockwise PyTorch) contrastive loss against the plain loss, its memory bound, the
choice of implementation, and one training step with --loss-impl chunked and GradCache."""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from cuda_helpers import REPO, assert_matches, loss_and_grads
from msclip.cuda import contrastive as bc
from msclip.cuda.contrastive import (
    ENV_LOSS_IMPL,
    LOSS_IMPLS,
    LossImplError,
    blockwise_contrastive_loss,
    check_loss_impl,
    resolve_loss_impl,
)
from msclip.cuda.memory import TensorMemoryTracker
from msclip.cuda.runtime import KernelUnavailableError

import msclip
from msclip.cli.train import config_from_args
from msclip.train.config import ConfigError, TrainConfig
from msclip.train.loss import LOSS_IMPLS as TRAIN_LOSS_IMPLS
from msclip.train.loss import ContrastiveLoss


def _features(n: int, d: int = 12, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    y = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    return x.requires_grad_(), y.requires_grad_()


def plain(kind):
    def run(x, y, t, b):
        loss_fn = ContrastiveLoss(kind)
        if b is not None:  # the test's bias tensor, to read its gradient
            del loss_fn.logit_bias
            loss_fn.logit_bias = b
        return loss_fn(x, y, t)

    return run


def chunked(kind, block):
    def run(x, y, t, b):
        return blockwise_contrastive_loss(x, y, t, b, kind=kind, impl="chunked", block_size=block)

    return run


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("n", [16, 21])  # a multiple of the block, and not
def test_chunked_equals_plain_loss_and_gradients(kind: str, n: int) -> None:
    x, y = _features(n)
    t = torch.tensor(math.log(20.0), requires_grad=True)
    b = torch.tensor(-3.0, requires_grad=True) if kind == "siglip" else None
    ref = loss_and_grads(plain(kind), x, y, t, b)
    got = loss_and_grads(chunked(kind, 8), x, y, t, b)
    assert_matches(*got, *ref)
    # one tile and tiles smaller than the batch give the same numbers
    assert_matches(*loss_and_grads(chunked(kind, 64), x, y, t, b), *ref)
    assert_matches(*loss_and_grads(chunked(kind, 1), x, y, t, b), *ref)


def test_siglip_with_confident_positives_keeps_its_precision() -> None:
    # Orthonormal images, captions close to their image: positive logits ~ +90 (per-pair loss
    # ~1e-39), negatives ~ -10 (~5e-5). Each positive must be taken as its own small term, not
    # as the difference of large ones.
    g = torch.Generator().manual_seed(3)
    x = torch.linalg.qr(torch.randn(32, 32, generator=g))[0][:20]
    y = F.normalize(x + 0.02 * torch.randn(20, 32, generator=g), dim=1)
    x.requires_grad_()
    y.requires_grad_()
    t = torch.tensor(math.log(100.0), requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True)
    ref = loss_and_grads(plain("siglip"), x, y, t, b)
    got = loss_and_grads(chunked("siglip", 8), x, y, t, b)
    assert float(ref[0]) < 1.0
    assert_matches(*got, *ref)


def test_float64_and_half_inputs() -> None:
    x, y = _features(13, dtype=torch.float64)
    t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    ref = loss_and_grads(plain("clip"), x, y, t, None)
    got = loss_and_grads(chunked("clip", 4), x, y, t, None)
    assert got[0].dtype == torch.float64
    assert_matches(*got, *ref, tol=1e-12)
    # bf16 embeddings are computed in fp32: the plain loss of the same (rounded) values
    xb, yb = (v.detach().bfloat16().requires_grad_() for v in (x, y))
    t32 = torch.tensor(math.log(10.0), requires_grad=True)
    loss = blockwise_contrastive_loss(xb, yb, t32, impl="chunked", block_size=4)
    loss.backward()
    assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    xf, yf = (v.detach().float().requires_grad_() for v in (xb, yb))
    ref32 = ContrastiveLoss("clip")(xf, yf, t32.detach())
    assert loss.item() == pytest.approx(ref32.item(), rel=1e-6)


def test_frozen_tower_and_frozen_temperature() -> None:
    x, y = _features(10)
    y = y.detach()
    t = torch.tensor(math.log(20.0))
    ref = loss_and_grads(plain("clip"), x, y, t, None)
    got = loss_and_grads(chunked("clip", 4), x, y, t, None)
    assert set(got[1]) == {"image"}
    assert_matches(*got, *ref)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_temperature_and_bias_of_shape_one(kind: str) -> None:
    """A single value is accepted in any shape ([1] as well as []): its gradient comes back in
    that shape (autograd refused a 0-d one for a [1] parameter)."""
    x, y = _features(6)
    t = torch.tensor([math.log(10.0)], requires_grad=True)
    b = torch.tensor([-2.0], requires_grad=True) if kind == "siglip" else None
    ref = loss_and_grads(plain(kind), x, y, t, b)
    got = loss_and_grads(chunked(kind, 4), x, y, t, b)
    assert got[1]["logit_scale"].shape == (1,)
    assert_matches(*got, *ref)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_number_temperature_and_bias_are_constants(kind: str) -> None:
    """Python numbers for the temperature and bias (a fixed temperature) give the loss of the
    same tensors and the embeddings' gradients; they raised AttributeError ('float' object has
    no attribute 'numel')."""
    x, y = _features(7)
    t, b = torch.tensor(math.log(30.0)), torch.tensor(-2.0) if kind == "siglip" else None
    ref = loss_and_grads(chunked(kind, 4), x, y, t, b)
    got = loss_and_grads(
        lambda x, y, t, b: blockwise_contrastive_loss(
            x, y, math.log(30.0), None if b is None else -2.0, kind=kind, block_size=4
        ),
        x, y, t, b,
    )  # fmt: skip
    assert set(got[1]) == {"image", "text"}
    assert_matches(*got, ref[0], {k: v for k, v in ref[1].items() if k in got[1]}, tol=1e-6)
    assert got[0].dtype == torch.float32
    x64, y64 = _features(7, dtype=torch.float64)
    assert blockwise_contrastive_loss(x64, y64, 2.0, -1.0, kind=kind).dtype == torch.float64


def test_a_number_temperature_whose_exp_overflows_is_refused() -> None:
    """The scale itself (open_clip's ClipLoss takes exp(t)) gave a NaN loss without a word."""
    x, y = _features(4)
    with pytest.raises(bc.ContrastiveInputError, match=r"pass math.log\(100\)"):
        blockwise_contrastive_loss(x, y, 100.0)
    with pytest.raises(bc.ContrastiveInputError, match="logit_scale must be finite, got nan"):
        blockwise_contrastive_loss(x, y, math.nan)
    with pytest.raises(bc.ContrastiveInputError, match="logit_bias must be finite, got -inf"):
        blockwise_contrastive_loss(x, y, 1.0, -math.inf, kind="siglip")
    with pytest.raises(bc.ContrastiveInputError, match="a tensor or a number, got bool"):
        blockwise_contrastive_loss(x, y, True)
    # float64 embeddings compute in float64, where exp(100) is finite
    x64, y64 = _features(4, dtype=torch.float64)
    assert torch.isfinite(blockwise_contrastive_loss(x64, y64, 100.0))


def test_bad_inputs_name_the_problem() -> None:
    x, y = _features(4)
    t = torch.tensor(0.0)
    with pytest.raises(bc.ContrastiveInputError, match="same shape"):
        blockwise_contrastive_loss(x, y[:3], t)
    with pytest.raises(bc.ContrastiveInputError, match="logit_bias"):
        blockwise_contrastive_loss(x, y, t, kind="siglip")
    with pytest.raises(bc.ContrastiveInputError, match="sizes"):
        blockwise_contrastive_loss(x, y, t, shard=(0, [2, 3]))
    with pytest.raises(LossImplError, match="chunked"):
        blockwise_contrastive_loss(x, y, t, impl="plain")
    with pytest.raises(bc.ContrastiveInputError, match="block size must be >= 1, got 0"):
        blockwise_contrastive_loss(x, y, t, block_size=0)  # not the default in disguise
    # a tile edge that is not an integer: torch's "empty(): argument 'size' ... must be tuple of
    # ints" from inside the loss; True was taken as tiles of one row
    for bad in (2.5, True):
        with pytest.raises(bc.ContrastiveInputError, match="block size must be an integer"):
            blockwise_contrastive_loss(x, y, t, block_size=bad)


def _peak_bytes(n: int, d: int, block: int, impl: str) -> int:
    x, y = _features(n, d)
    t = torch.tensor(math.log(10.0), requires_grad=True)
    tracker = TensorMemoryTracker("cpu")
    with tracker:
        if impl == "plain":
            loss = ContrastiveLoss("clip")(x, y, t)
        else:
            loss = blockwise_contrastive_loss(x, y, t, impl="chunked", block_size=block)
        loss.backward()
    return tracker.peak


def test_chunked_memory_grows_linearly_with_the_batch() -> None:
    small, large, d, block = 256, 1024, 16, 128
    peak_small = _peak_bytes(small, d, block, "chunked")
    peak_large = _peak_bytes(large, d, block, "chunked")
    matrix = large * large * 4  # one B x B fp32 matrix
    # 4x the batch: O(B d + block^2) grows at most 4x (quadratic would be 16x), and the whole
    # forward and backward pass never holds as much as one B x B matrix.
    assert peak_large <= 4.5 * peak_small
    assert peak_large < matrix / 2
    # the tracker does see quadratic memory: the plain loss holds several B x B matrices
    assert _peak_bytes(large, d, block, "plain") > 2 * matrix


def test_resolve_and_check_the_implementation(monkeypatch) -> None:
    assert LOSS_IMPLS == TRAIN_LOSS_IMPLS
    monkeypatch.delenv(ENV_LOSS_IMPL, raising=False)
    cpu = torch.device("cpu")
    assert resolve_loss_impl("auto", bc.CHUNKED_MIN_BATCH - 1, cpu) == "plain"
    assert resolve_loss_impl("auto", bc.CHUNKED_MIN_BATCH, cpu) == "chunked"
    assert resolve_loss_impl("plain", 10**6, cpu) == "plain"
    # on a GPU by the batch alone (every process of a run picks the same), never Triton
    for gpu in ("cuda", "cuda:1", torch.device("cuda", 0)):
        assert resolve_loss_impl("auto", bc.CUDA_CHUNKED_MIN_BATCH - 1, gpu) == "plain"
        assert resolve_loss_impl("auto", bc.CUDA_CHUNKED_MIN_BATCH, gpu) == "chunked"
    assert bc.CUDA_CHUNKED_MIN_BATCH > bc.CHUNKED_MIN_BATCH
    assert resolve_loss_impl("triton", 8, "cuda") == "triton"
    # the environment variable decides 'auto', never an explicit choice
    monkeypatch.setenv(ENV_LOSS_IMPL, "chunked")
    assert resolve_loss_impl("auto", 8, cpu) == "chunked"
    assert resolve_loss_impl("plain", 8, cpu) == "plain"
    monkeypatch.setenv(ENV_LOSS_IMPL, "fastest")
    with pytest.raises(LossImplError, match=ENV_LOSS_IMPL):
        resolve_loss_impl("auto", 8, cpu)
    with pytest.raises(LossImplError, match="fastest"):
        check_loss_impl("auto", cpu)
    monkeypatch.delenv(ENV_LOSS_IMPL)
    with pytest.raises(LossImplError, match="'chunky'"):
        resolve_loss_impl("chunky", 8, cpu)
    # Triton on CPU tensors only under the interpreter, which this session does not use
    with pytest.raises(KernelUnavailableError, match=r"TRITON_INTERPRET|triton"):
        check_loss_impl("triton", cpu)
    with pytest.raises(ValueError, match="loss impl"):
        ContrastiveLoss("clip", impl="fused")


def test_triton_chosen_by_the_environment_is_named_when_refused(monkeypatch) -> None:
    """--loss-impl auto with MSCLIP_LOSS_IMPL=triton where the kernels cannot run: the error
    names the variable that chose them, not only the flag's implementation."""
    monkeypatch.setenv(ENV_LOSS_IMPL, "triton")
    with pytest.raises(KernelUnavailableError, match=f"set by {ENV_LOSS_IMPL}"):
        check_loss_impl("auto", "cpu")
    monkeypatch.delenv(ENV_LOSS_IMPL)
    with pytest.raises(KernelUnavailableError) as info:
        check_loss_impl("triton", "cpu")
    assert ENV_LOSS_IMPL not in str(info.value)


def test_contrastive_loss_module_uses_the_chosen_implementation(monkeypatch, caplog) -> None:
    monkeypatch.setattr(bc, "DEFAULT_CHUNK", 4)
    x, y = _features(11)
    t = torch.tensor(math.log(20.0), requires_grad=True)
    ref = loss_and_grads(plain("siglip"), x, y, t, torch.tensor(-10.0, requires_grad=True))
    loss_fn = ContrastiveLoss("siglip", impl="auto")
    monkeypatch.setenv(ENV_LOSS_IMPL, "chunked")
    with caplog.at_level(logging.INFO, logger="msclip.train.loss"):
        got = loss_and_grads(lambda a, b_, c, d: loss_fn(a, b_, c), x, y, t, loss_fn.logit_bias)
    assert "contrastive loss: chunked implementation (auto requested" in caplog.text
    assert_matches(*got, *ref)


def test_config_flag_and_validation() -> None:
    cfg, _ = config_from_args(["--loss-impl", "chunked"])
    assert cfg.loss_impl == "chunked"
    assert TrainConfig().loss_impl == "auto"
    with pytest.raises(ConfigError, match="loss_impl must be one of"):
        TrainConfig(loss_impl="fused").validate()


def _module_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (top-level statements, not functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_msclip_imports_the_kernels_lazily() -> None:
    # No module of the library imports a kernel module or triton when it is imported (the
    # package's own __init__, which holds only names and constants, is light) ...
    def kernel_module(name: str) -> bool:
        parts = name.split(".")
        return len(parts) > 2 and (REPO / "cuda" / f"{parts[2]}.py").is_file()

    for path in sorted((REPO / "msclip").rglob("*.py")):
        bad = {
            m
            for m in _module_level_imports(path)
            if m.startswith("triton") or (m.startswith("msclip.cuda.") and kernel_module(m))
        }
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)} at import time"
    # ... and in msclip.cuda only the kernel modules import triton.
    for path in sorted((REPO / "cuda").glob("*.py")):
        uses_triton = any(m.startswith("triton") for m in _module_level_imports(path))
        assert uses_triton == path.stem.endswith("_kernels"), path.name


# -- one training step ------------------------------------------------------------------------
def _write_pairs(root: Path, n: int = 8) -> Path:
    """Tiles of the ten bands of msclip-tiny and a table of captions."""
    from affine import Affine

    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        spectrum = 400 + 300 * np.abs(np.sin(np.arange(len(bands)) * (i % 4 + 1)))
        data = spectrum[:, None, None] * (1 + 0.2 * rng.standard_normal((len(bands), 16, 16)))
        msclip.write_geotiff(
            root / f"t{i}.tif",
            data.clip(0, 10000).astype(np.uint16),
            crs="EPSG:32632",
            transform=Affine(10, 0, 0, 0, -10, 0),
            bands=bands,
        )
        rows.append({"image": f"t{i}.tif", "caption": f"tile {i} of class {i % 4}"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    return root / "pairs.csv"


def test_training_step_with_chunked_loss_equals_plain(tmp_path: Path, monkeypatch) -> None:
    from msclip.train.distributed import DistContext
    from msclip.train.trainer import Trainer

    monkeypatch.setattr(bc, "DEFAULT_CHUNK", 2)  # batch 6 in 3 x 3 tiles
    table = _write_pairs(tmp_path)
    weights, losses = {}, {}
    for impl in ("plain", "chunked"):
        for kind in ("clip", "siglip"):
            cfg = TrainConfig(
                train_data=str(table),
                model="msclip-tiny",
                output_dir=str(tmp_path / f"{impl}-{kind}"),
                batch_size=6,
                val_fraction=0.25,
                accum_steps=3,  # GradCache: the loss of the cached features of 3 chunks
                loss=kind,
                loss_impl=impl,
                optimizer="sgd",  # an update linear in the gradient: rounding stays rounding
                momentum=0.0,
                lr=0.5,
                progress=False,
                threads=1,
            ).validate()
            trainer = Trainer(cfg, DistContext())
            before = {k: v.detach().clone() for k, v in trainer.model.clip.state_dict().items()}
            batch = next(iter(trainer._loader()))
            losses[impl, kind] = trainer.train_step(batch)
            after = {k: v.detach().clone() for k, v in trainer.model.clip.state_dict().items()}
            assert not torch.equal(after["visual.conv1.weight"], before["visual.conv1.weight"])
            assert not torch.equal(after["logit_scale"], before["logit_scale"])
            after.update(trainer.loss_fn.state_dict())
            weights[impl, kind] = after
    for kind in ("clip", "siglip"):
        assert losses["chunked", kind] == pytest.approx(losses["plain", kind], rel=1e-6)
        ref, got = weights["plain", kind], weights["chunked", kind]
        assert set(got) == set(ref) and ("logit_bias" in ref) == (kind == "siglip")
        for name, w in ref.items():
            torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_triton_asked_for_where_its_self_test_fails_is_refused(monkeypatch) -> None:
    monkeypatch.delenv(ENV_LOSS_IMPL, raising=False)
    monkeypatch.setattr(bc, "check_device", lambda *a: None)  # Triton and the device are there
    monkeypatch.setattr(bc, "_triton_self_test", lambda device: device != "cuda:1")
    check_loss_impl("triton", "cuda:0")
    with pytest.raises(KernelUnavailableError, match=r"cuda:1.*--loss-impl chunked"):
        check_loss_impl("triton", "cuda:1")
    check_loss_impl("chunked", "cuda:1")  # only Triton is checked
