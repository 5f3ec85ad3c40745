"""The exactly resumable training loop shared by every trained head (image-level and dense).

:func:`train_loop`: AdamW parameter groups (:func:`head_groups` for a head alone; the tower's
come from :mod:`msclip.heads.modes`), a linear warm-up then cosine decay per step, a seeded batch
order per epoch (``numpy.random.default_rng((seed, epoch))``), validation after every epoch, and
a training checkpoint after every ``save_every`` epochs: the trainable state (parameters that
require gradients, and the batch-norm statistics of heads), optimiser, scheduler, torch (and
CUDA) random state, history and the rows found unreadable, written atomically and read back
with ``weights_only=True`` and a run key, so that a run killed at any point resumes to the same
bits as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msclip.errors import CheckpointError
from msclip.heads.seeding import seeded

__all__ = ["head_groups", "train_loop"]

logger = logging.getLogger(__name__)


_CKPT_FORMAT = "msclip-finetune-v1"


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Seeded batch order of one epoch (a last batch of one row joins the previous one)."""
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    bounds = [*range(0, n, batch_size), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    return [perm[a:b] for a, b in itertools.pairwise(bounds)]


def _trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, the buffers of the head(s), and every batch-norm statistic
    (running mean, variance and count change in training like parameters: a resumed run must
    start from them, whatever the module's name)."""
    state = {n: p.detach().cpu().clone() for n, p in net.named_parameters() if p.requires_grad}
    for n, b in net.named_buffers():
        if n.startswith(("head.", "heads.")):  # (dense) heads
            state[n] = b.detach().cpu().clone()
    for prefix, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            for n, b in module.named_buffers(recurse=False):
                state[f"{prefix}.{n}" if prefix else n] = b.detach().cpu().clone()
    return state


def _load_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = dict(net.named_parameters())
    own.update(dict(net.named_buffers()))
    missing = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(f"training checkpoint holds tensors this run lacks: {missing[:4]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


def train_loop(
    net: nn.Module,
    groups: list[dict[str, Any]],
    n: int,
    batches: Callable[[list[np.ndarray], int], Iterator[tuple[torch.Tensor | None, np.ndarray]]],
    loss_fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    warmup_epochs: int = 0,
    checkpoint: Path | None = None,
    run_key: str = "",
    run_facts: Mapping[str, Any] | None = None,
    same_run: Any = None,
    resume: bool = False,
    save_every: int = 1,
    validate: Callable[[], dict[str, float]] | None = None,
    hooks: Sequence[Callable[[int], None]] = (),
    progress: bool = False,
    desc: str = "train",
    unreadable: set[int] | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` by AdamW with an exact, resumable schedule.

    Args:
        net: the module (its trainable parameters are those in ``groups``).
        groups: AdamW parameter groups (``lr`` each).
        n: training samples.
        batches: ``(batch row lists, epoch) -> (inputs, rows)`` per batch, in order; ``inputs``
            is ``None`` when no row of the batch could be read (the step is skipped, the
            schedule still advances).
        loss_fn: ``(outputs, rows) -> loss``.
        epochs: passes over the data.
        batch_size: rows per step.
        seed: seed of the batch order (``default_rng((seed, epoch))``) and of the torch random
            state at the start.
        warmup_epochs: linear warm-up, then cosine decay to 0 (per step).
        checkpoint: file of the training checkpoint.
        run_key: what the run is; a checkpoint of another run is refused.
        run_facts: the run's settings (:func:`msclip.heads.runs.run_settings`), kept in the
            checkpoint so a refusal names what changed.
        same_run: a :class:`msclip.heads.runs.SameRun` that also accepts a checkpoint whose key
            differs only in options this head does not use.
        resume: continue from ``checkpoint`` when it exists.
        save_every: write the checkpoint every this many epochs (and after the last).
        validate: called after each epoch; its values join the history.
        hooks: called with the epoch number after each checkpoint.
        progress: show a progress bar.
        desc: label of the bar.
        unreadable: the rows found unreadable so far (the caller's set, which ``batches`` and
            ``validate`` add to): kept in the checkpoint, and on resume given back the rows of
            the epochs that are not run again, so that a resumed run names the same images as
            an uninterrupted one.

    Returns:
        The history: per epoch ``epoch``, ``loss``, ``lr`` and the validation values.

    Raises:
        CheckpointError: an unreadable checkpoint or one of another run.
    """
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = len(_epoch_batches(n, batch_size, seed, 0))
    total = max(1, epochs * steps_per_epoch)
    warm = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    with seeded(seed, cuda=True):  # the caller's random state is left as it was
        return _train_epochs(
            net, opt, sched, n, batches, loss_fn, epochs, batch_size, seed, checkpoint,
            (run_key, dict(run_facts or {}), same_run), resume, save_every, validate, hooks,
            progress, desc, unreadable,
        )  # fmt: skip


def _train_epochs(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    n: int,
    batches: Callable[..., Iterator[Any]],
    loss_fn: Callable[..., torch.Tensor],
    epochs: int,
    batch_size: int,
    seed: int,
    checkpoint: Path | None,
    identity: tuple[str, dict[str, Any], Any],
    resume: bool,
    save_every: int,
    validate: Callable[[], dict[str, float]] | None,
    hooks: Sequence[Callable[[int], None]],
    progress: bool,
    desc: str,
    unreadable: set[int] | None = None,
) -> list[dict[str, Any]]:
    from msclip.progress import progress_bar

    history: list[dict[str, Any]] = []
    start = 0
    run_key, run_facts, same_run = identity
    if resume and checkpoint is not None and checkpoint.is_file():
        state = _read_training_checkpoint(checkpoint, run_key, run_facts, same_run)
        _load_state(net, state["state"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        cuda = state.get("cuda_rng")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)
        history = list(state["history"])
        start = int(state["epoch"])
        if unreadable is not None:
            unreadable.update(int(i) for i in state.get("unreadable", ()))
        logger.info("resumed %s after epoch %d of %d", checkpoint, start, epochs)
    for epoch in progress_bar(range(start, epochs), desc=desc, unit="epoch", disable=not progress,
                      initial=start, total=epochs):  # fmt: skip
        net.train()
        total_loss, seen = 0.0, 0
        for inputs, rows in batches(_epoch_batches(n, batch_size, seed, epoch), epoch):
            if inputs is not None and len(rows):
                loss = loss_fn(net(inputs), rows)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += float(loss.detach()) * len(rows)
                seen += len(rows)
            sched.step()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total_loss / max(1, seen),
            "lr": sched.get_last_lr()[0],
            "n": seen,
        }
        if validate is not None:
            net.eval()
            record.update(validate())
        history.append(record)
        last = epoch + 1 == epochs
        if checkpoint is not None and ((epoch + 1) % save_every == 0 or last):
            _write_training_checkpoint(checkpoint, {
                "run_key": run_key, "run_facts": run_facts, "epoch": epoch + 1,
                "state": _trainable_state(net),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": _cuda_rng(), "history": history,
                "unreadable": sorted(unreadable or ()),
            })  # fmt: skip
        for hook in hooks:
            hook(epoch + 1)
    net.eval()
    return history


def _cuda_rng() -> list[torch.Tensor] | None:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def _write_training_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    from msclip.io import atomic_write

    data = {"format": _CKPT_FORMAT, **payload}
    atomic_write(path, lambda tmp: torch.save(data, tmp), ".pt")


def _read_training_checkpoint(
    path: Path, run_key: str, run_facts: Mapping[str, Any] | None = None, same_run: Any = None
) -> dict[str, Any]:
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read training checkpoint {path}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != _CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an msclip-finetune training checkpoint")
    from msclip.heads.runs import refuse_other_run

    refuse_other_run(path, data.get("run_key"), data.get("run_facts"), run_key, run_facts, same_run)
    return data


def head_groups(head: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    from msclip.layer_decay import no_weight_decay

    decay, no_decay = [], []
    for name, p in head.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0}]  # fmt: skip
    return [g for g in groups if g["params"]]
