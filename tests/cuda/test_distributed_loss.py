"""The blockwise losses across two processes (torchrun, gloo) against one process's plain loss.

One launch of ``torch.distributed.run --standalone --nproc_per_node=2`` (as the tests of
msclip.train do), with ``TRITON_INTERPRET=1`` in the workers' environment only, so the Triton
kernels run on their CPU tensors. The workers check

* the loss level: 21 gathered rows split 8 / 13 (no multiple of the 16-row kernel blocks) and
  0 / 21, each process computing its share with ``shard=(rank, sizes)``, for both backends and
  both losses;
* the training step: ``contrastive_step`` with ``ContrastiveLoss(impl=...)``, unequal shards
  and feature-cache (GradCache) accumulation that differs by process, then the gradient
  reduction, against one process computing the global batch with the plain loss.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cuda_helpers import INTERPRETER_ENV, PYTHON, interpreter_takes_numpy, subprocess_env
from msclip.cuda.runtime import triton_available

from msclip.train.loss import ContrastiveLoss

WORKER = textwrap.dedent(
    """
    import itertools
    import math
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import msclip
    from msclip.cuda import contrastive as bc
    from msclip.train.distributed import (
        DistContext, all_gather_rows, all_reduce_gradients, init_distributed,
    )
    from msclip.train.loss import ContrastiveLoss
    from msclip.train.step import contrastive_step

    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    ctx = init_distributed()
    rank = ctx.rank
    torch.set_num_threads(1)
    impls = sys.argv[2].split(",")
    results = {}

    # -- loss level
    g = torch.Generator().manual_seed(0)
    X = F.normalize(torch.randn(21, 24, generator=g), dim=1)
    Y = F.normalize(torch.randn(21, 24, generator=g), dim=1)
    blocks = {"chunked": 4, "triton": (16, 16, 16)}
    for sizes, kind, impl in itertools.product(([8, 13], [0, 21]), ("clip", "siglip"), impls):
        lo, hi = (0, sizes[0]) if rank == 0 else (sizes[0], 21)
        x = X[lo:hi].clone().requires_grad_()
        y = Y[lo:hi].clone().requires_grad_()
        t = torch.tensor(math.log(20.0), requires_grad=True)
        b = torch.tensor(-3.0, requires_grad=True) if kind == "siglip" else None
        loss = bc.blockwise_contrastive_loss(
            all_gather_rows(x, sizes, ctx), all_gather_rows(y, sizes, ctx), t, b,
            kind=kind, impl=impl, block_size=blocks[impl], shard=(rank, sizes),
        )
        loss.backward()
        key = f"loss/{sizes[0]}/{kind}/{impl}/"
        results[key + "loss"] = loss.detach()
        results[key + "image"], results[key + "text"] = x.grad, y.grad
        results[key + "logit_scale"] = t.grad
        if b is not None:
            results[key + "logit_bias"] = b.grad

    # -- training step with GradCache: 7 samples split 3 / 4, accumulation differs by rank
    bc.DEFAULT_CHUNK = 2
    g = torch.Generator().manual_seed(0)
    images = torch.randn(7, 10, 32, 32, generator=g)
    tokens = msclip.get_tokenizer("msclip-tiny")([f"tile {i} {'x ' * i}" for i in range(7)])
    step_sizes = [3, 4]
    a, z = (0, 3) if rank == 0 else (3, 7)
    for kind in ("clip", "siglip"):
        for impl in impls:
            torch.manual_seed(1)
            model = msclip.create_model("msclip-tiny").train()
            loss_fn = ContrastiveLoss(kind, impl=impl)
            params = list(model.clip.parameters()) + list(loss_fn.parameters())
            shared = [model.clip.logit_scale] + list(loss_fn.parameters())
            step = contrastive_step(model, loss_fn, images[a:z], tokens[a:z], ctx, step_sizes,
                                    accum_steps=1 + rank, trim_text=False)
            all_reduce_gradients(params, shared, ctx)
            key = f"step/{kind}/{impl}/"
            results[key + "loss"] = step.loss
            for n, p in list(model.clip.named_parameters()) + list(loss_fn.named_parameters()):
                results[key + n] = p.grad.clone()
            if rank == 0 and impl == impls[0]:  # the global batch in one process, plain loss
                torch.manual_seed(1)
                model = msclip.create_model("msclip-tiny").train()
                loss_fn = ContrastiveLoss(kind, impl="plain")
                ref = contrastive_step(model, loss_fn, images, tokens, DistContext(),
                                       trim_text=False)
                results[f"ref/{kind}/loss"] = ref.loss
                for n, p in list(model.clip.named_parameters()) + list(loss_fn.named_parameters()):
                    results[f"ref/{kind}/{n}"] = p.grad.clone()
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    """
)


def _torchrun(script: Path, args: list[str], cwd: Path) -> None:
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), *args],
        cwd=cwd,
        env=subprocess_env(**INTERPRETER_ENV),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str, tol: float) -> None:
    assert actual.shape == expected.shape, name
    if expected.numel() == 0:
        return
    err = float((actual.double() - expected.double()).abs().max())
    scale = float(expected.abs().max())
    assert err <= tol * scale + 1e-9, f"{name}: max error {err:.3g} vs max |value| {scale:.3g}"


@pytest.mark.slow  # two processes that import msclip: ~15 s
def test_two_processes_equal_one_plain_process(tmp_path: Path) -> None:
    # the Triton kernels through the interpreter, where this Triton's interpreter runs
    impls = ["chunked"] + (["triton"] if triton_available() and interpreter_takes_numpy() else [])
    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun(tmp_path / "worker.py", [str(tmp_path), ",".join(impls)], tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    # loss level: each process's rows against the plain loss of the whole batch
    g = torch.Generator().manual_seed(0)
    X = F.normalize(torch.randn(21, 24, generator=g), dim=1).requires_grad_()
    Y = F.normalize(torch.randn(21, 24, generator=g), dim=1).requires_grad_()
    for kind in ("clip", "siglip"):
        X.grad = Y.grad = None
        t = torch.tensor(math.log(20.0), requires_grad=True)
        loss_fn = ContrastiveLoss(kind, init_logit_bias=-3.0)
        ref = loss_fn(X, Y, t)
        ref.backward()
        # unequal shards, and a process without rows (all its samples unreadable)
        for first, impl in itertools.product((8, 0), impls):
            key = f"loss/{first}/{kind}/{impl}/"
            for r, (lo, hi) in enumerate([(0, first), (first, 21)]):
                got = ranks[r]
                assert got[key + "image"].shape == (hi - lo, 24)
                assert float(got[key + "loss"]) == pytest.approx(ref.item(), rel=1e-5)
                _close(got[key + "image"], X.grad[lo:hi], key + "image", 1e-5)
                _close(got[key + "text"], Y.grad[lo:hi], key + "text", 1e-5)
                # the temperature (and bias) get the full derivative in every process
                _close(got[key + "logit_scale"], t.grad, key + "logit_scale", 1e-5)
                if kind == "siglip":
                    _close(got[key + "logit_bias"], loss_fn.logit_bias.grad, key + "bias", 1e-5)

    # training step: after the reduction both processes hold the one-process plain gradient
    r0, r1 = ranks
    for kind in ("clip", "siglip"):
        ref_loss = float(r0[f"ref/{kind}/loss"])
        prefix = f"ref/{kind}/"
        names = [k[len(prefix) :] for k in r0 if k.startswith(prefix) and k != prefix + "loss"]
        assert "visual.conv1.weight" in names and "logit_scale" in names
        assert ("logit_bias" in names) == (kind == "siglip")
        for impl in impls:
            key = f"step/{kind}/{impl}/"
            assert float(r0[key + "loss"]) == pytest.approx(ref_loss, rel=1e-5)
            assert float(r1[key + "loss"]) == pytest.approx(ref_loss, rel=1e-5)
            for n in names:
                _close(r0[key + n], r0[f"ref/{kind}/{n}"], key + n, 1e-4)
                assert torch.equal(r0[key + n], r1[key + n]), key + n
