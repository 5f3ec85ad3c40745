"""Two-process training with torchrun (gloo, CPU) against one process on the same global batch.

Two launches of ``torch.distributed.run --standalone --nproc_per_node=2``: a worker script that
checks the loss and gradients of one step (with unequal shards and feature-cache accumulation)
and an exact kill-and-resume, and the ``python -m msclip.train`` command line itself.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from support.train_tiles import write_class_tif

import msclip
from msclip.train.config import TrainConfig
from msclip.train.trainer import train

REPO = Path(msclip.__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    import msclip
    from msclip.train.config import TrainConfig
    from msclip.train.distributed import DistContext, all_reduce_gradients, init_distributed
    from msclip.train.loss import ContrastiveLoss
    from msclip.train.step import contrastive_step
    from msclip.train.trainer import train

    table, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    ctx = init_distributed()
    rank = ctx.rank
    torch.set_num_threads(1)

    # -- one step: 7 samples split 3 / 4 (as after a bad sample), accumulation differs by rank
    g = torch.Generator().manual_seed(0)
    images = torch.randn(7, 10, 32, 32, generator=g)
    tokens = msclip.get_tokenizer("msclip-tiny")([f"tile {i} {'x ' * i}" for i in range(7)])
    sizes = [3, 4]
    lo, hi = (0, 3) if rank == 0 else (3, 7)
    results = {}
    for kind in ("clip", "siglip"):
        torch.manual_seed(1)
        model = msclip.create_model("msclip-tiny").train()
        loss_fn = ContrastiveLoss(kind)
        params = list(model.clip.parameters()) + list(loss_fn.parameters())
        shared = [model.clip.logit_scale] + list(loss_fn.parameters())
        out_d = contrastive_step(model, loss_fn, images[lo:hi], tokens[lo:hi], ctx, sizes,
                                 accum_steps=1 + rank, trim_text=False)
        all_reduce_gradients(params, shared, ctx)
        results[kind + "_loss"] = out_d.loss
        results[kind + "_n"] = torch.tensor(out_d.n_global)
        for n, p in list(model.clip.named_parameters()) + list(loss_fn.named_parameters()):
            results[kind + "/" + n] = p.grad.clone()
        if rank == 0:  # the same global batch in one process
            model.zero_grad(set_to_none=True)
            loss_fn.zero_grad(set_to_none=True)
            ref = contrastive_step(model, loss_fn, images, tokens, DistContext(),
                                   trim_text=False)
            results[kind + "_loss_ref"] = ref.loss
            for n, p in list(model.clip.named_parameters()) + list(loss_fn.named_parameters()):
                results[kind + "_ref/" + n] = p.grad.clone()
    torch.save(results, out / f"step_rank{rank}.pt")

    # -- a run killed after step 3 (checkpoint at step 2) and resumed, against an uninterrupted one
    def cfg(name, **kw):
        return TrainConfig(train_data=table, model="msclip-tiny", output_dir=str(out / name),
                           batch_size=6, val_fraction=0.25, epochs=2, save_every=2,
                           accum_steps=2, progress=False, lr=2e-3, **kw)

    class Killed(Exception):
        pass

    def kill(trainer):
        if trainer.state.step == 3:
            raise Killed

    draws = {"full": {}, "killed": {}}

    def draw(name):
        def hook(trainer):
            # only the second process draws (the processes' generators differ), and not at a
            # checkpoint's step (hooks run after the checkpoint: a draw there is not in it)
            if rank == 1 and trainer.state.step % 2:
                draws[name][trainer.state.step] = float(torch.rand(1))
        return hook

    train(cfg("full"), hooks=[draw("full")])
    try:
        train(cfg("killed"), hooks=[draw("killed"), kill])
    except Killed:
        pass
    train(cfg("killed", resume="latest"), hooks=[draw("killed")])
    (out / f"draws_rank{rank}.json").write_text(json.dumps(draws))
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    rows = []
    for c, name in enumerate(("Forest", "River", "Industrial", "Pasture")):
        for i in range(6):
            rel = f"{name}/{name}_{i}.tif"
            write_class_tif(root / rel, c, 10 * c + i)
            rows.append(
                {
                    "image": rel,
                    "caption": f"a satellite image of {name.lower()}.",
                    "caption_2": f"{name.lower()} tile {i}",
                    "label": name,
                }
            )
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root / "captions.csv"


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    err = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= 1e-4 * scale + 1e-9, f"{name}: max error {err:.3g} vs max |grad| {scale:.3g}"


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_exactly(scenes: Path, tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun([str(tmp_path / "worker.py"), str(scenes), str(tmp_path)], tmp_path)
    r0 = torch.load(tmp_path / "step_rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "step_rank1.pt", weights_only=True)
    for kind in ("clip", "siglip"):
        assert int(r0[kind + "_n"]) == 7
        # Every process computes the loss of the global batch, equal to one process's.
        assert float(r0[kind + "_loss"]) == pytest.approx(float(r1[kind + "_loss"]), abs=1e-6)
        assert float(r0[kind + "_loss"]) == pytest.approx(float(r0[kind + "_loss_ref"]), rel=1e-5)
        names = [k.split("/", 1)[1] for k in r0 if k.startswith(kind + "/")]
        assert "visual.conv1.weight" in names and "logit_scale" in names
        for n in names:
            # After the reduction both processes hold the single-process gradient.
            _assert_grad_close(r0[f"{kind}/{n}"], r0[f"{kind}_ref/{n}"], n)
            assert torch.equal(r0[f"{kind}/{n}"], r1[f"{kind}/{n}"]), n
    full = load_file(str(tmp_path / "full" / "final.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "final.safetensors"))
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k
    # each process resumes from its own random states, not the first process's
    draws = json.loads((tmp_path / "draws_rank1.json").read_text())
    assert len(draws["full"]) == 3 and draws["killed"] == draws["full"]


@pytest.mark.slow
def test_torchrun_command_line_matches_one_process(scenes: Path, tmp_path: Path) -> None:
    options = dict(
        train_data=str(scenes),
        model="msclip-tiny",
        batch_size=6,
        val_fraction=0.25,
        epochs=2,
        accum_steps=3,
        lr=2e-3,
        zeroshot_data=str(scenes.parent),
        progress=False,
        log_every=1,
        threads=1,
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(options))
    proc = _torchrun(
        ["-m", "msclip.train", "--config", str(config), "--output-dir", str(tmp_path / "two")],
        tmp_path,
    )
    assert "trained 6 steps" in proc.stdout and proc.stdout.count("model:") == 1  # rank 0 only
    train(TrainConfig(**options, output_dir=str(tmp_path / "one")))
    logs = []
    for name in ("one", "two"):
        with open(tmp_path / name / "train_log.csv") as f:
            logs.append([float(r["loss"]) for r in csv.DictReader(f)])
    assert len(logs[0]) == 6
    np.testing.assert_allclose(logs[1], logs[0], rtol=1e-4)
    one = load_file(str(tmp_path / "one" / "final.safetensors"))
    two = load_file(str(tmp_path / "two" / "final.safetensors"))
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-3, atol=1e-5)
    with open(tmp_path / "two" / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert [int(r["step"]) for r in metrics] == [3, 6] and "zs_top1" in metrics[0]
    # inference.py classifies with the two-process result given as the model name, with the
    # numbers of the run's own zero-shot validation.
    from msclip.cli.inference import main as inference_main

    names = ["forest", "industrial", "pasture", "river"]
    table = tmp_path / "classified.csv"
    code = inference_main(
        ["--run-classification", "--model-name", str(tmp_path / "two" / "final.safetensors"),
         "--images", str(scenes.parent), "--class-names", *names, "--templates", "short",
         "--save-path", str(table), "--no-text-cache", "--quiet"]
    )  # fmt: skip
    assert code == 0
    rows = pd.read_csv(table)
    truth = [Path(p).parent.name.lower() for p in rows["Image"]]
    assert len(rows) == 24 and set(rows["Class"]) <= set(names)
    top1 = float(np.mean(rows["Class"].to_numpy() == np.array(truth)))
    assert top1 == pytest.approx(float(metrics[-1]["zs_top1"]))
