"""Process groups and the collectives of contrastive training.

The run is data parallel without ``DistributedDataParallel``: every process computes the
contrastive loss of the *global* batch from features gathered across processes, with its own
features kept in the autograd graph (the other processes' copies are constants). The gradient a
process then holds is the exact derivative of the global loss through its own samples, so summing
the gradients of all processes gives the gradient of the global loss, the same as one process
computing the whole batch. Parameters that enter the loss directly (the temperature, the SigLIP
bias) receive the full derivative in every process, so they are averaged instead. Gradients are
reduced explicitly once per optimiser step, which also lets the feature-cache accumulation of
:mod:`msclip.train.step` run any number of backward passes without extra synchronisation.

Launch with ``torchrun --nproc_per_node=N``; the ``gloo`` backend runs on CPU, ``nccl`` on GPUs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from msclip.errors import ConfigError

__all__ = [
    "DistContext",
    "all_gather_rows",
    "all_reduce_gradients",
    "gather_counts",
    "init_distributed",
    "torchrun_world_size",
]

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process stands in the run.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this machine.
        local_world_size: processes on this machine.
        device: the device this process computes on.
        owns_group: the process group was created here (and is destroyed by :meth:`close`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """The first process (writes files, shows progress)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op for one process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _pick_device(device: str, local_rank: int) -> torch.device:
    """This process's device: ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` (``auto`` without a
    GPU the CPU). A device this machine cannot give is refused here, before any work, with the
    option that asked for it (not torch's error on the first copy): the checks of
    :func:`msclip.create_model`, raised as this option's :class:`ConfigError`."""
    from msclip.errors import DeviceError
    from msclip.factory import _check_device
    from msclip.hardware import is_auto_device

    device = "auto" if is_auto_device(device) else device  # in any case, as create_model's
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    per_rank = device in ("auto", "cuda")
    if per_rank and torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"device {device!r} means cuda:{local_rank} (LOCAL_RANK {local_rank}), but torch "
            f"sees {count} CUDA device(s); start at most {count} processes per machine "
            "(torchrun --nproc_per_node) or name a visible device",
            param="device",
        )
    try:
        _check_device(f"cuda:{local_rank}" if per_rank else device)
    except DeviceError as err:
        raise ConfigError(str(err), param="device") from err
    return torch.device(f"cuda:{local_rank}") if per_rank else torch.device(device)


#: What torchrun (and ``torch.distributed.run``) sets in every process it starts.
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: str | None = None) -> int:
    """A whole number from torchrun's environment, or a :class:`ConfigError` naming it."""
    raw = os.environ.get(name, default)
    if raw is None:
        raise ConfigError(
            f"{name} is not set, but WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for a group of "
            f"processes: start every process with torchrun (it sets {', '.join(_TORCHRUN_VARS)}), "
            "or set them all; unset WORLD_SIZE to run one process"
        )
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number: start every process with torchrun (it sets "
            f"{', '.join(_TORCHRUN_VARS)}), or set them all"
        ) from None


def torchrun_world_size() -> int:
    """``WORLD_SIZE`` of torchrun's environment (1 when unset); a :class:`ConfigError` when it
    is not a positive whole number."""
    world = _env_int("WORLD_SIZE", "1")
    if world < 1:
        raise ConfigError(f"WORLD_SIZE={world} must be at least 1 (the number of processes)")
    return world


def _torchrun_ranks(world: int) -> tuple[int, int, int]:
    """``(RANK, LOCAL_RANK, LOCAL_WORLD_SIZE)`` of a process of a group of ``world``, checked
    before the rendezvous: a missing variable, or a rank past the group, would otherwise be
    torch's error, or a wait for processes that never come (a rank of 5 in a group of 2 waits
    for the group's store until its timeout, without even heeding SIGTERM)."""
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", "0")
    local_world = _env_int("LOCAL_WORLD_SIZE", str(world))
    if not 0 <= rank < world:
        raise ConfigError(
            f"RANK={rank} is not a process of a group of WORLD_SIZE={world} (0 to {world - 1}): "
            "give each process its own rank (torchrun does)"
        )
    if not 0 <= local_rank < max(1, local_world):
        raise ConfigError(
            f"LOCAL_RANK={local_rank} is not a process of the {local_world} on this machine "
            "(LOCAL_WORLD_SIZE): give each process of a machine its own local rank (torchrun "
            "does)"
        )
    return rank, local_rank, local_world


def _check_meeting_point(world: int) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(
                f"{name} is not set: the processes of a group of WORLD_SIZE={world} meet at "
                "MASTER_ADDR:MASTER_PORT (process 0's machine and a free port); start every "
                f"process with torchrun (it sets {', '.join(_TORCHRUN_VARS)}), or set them all"
            )


def init_distributed(backend: str = "auto", device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment (or run alone).

    Args:
        backend: ``auto`` (``nccl`` on CUDA, else ``gloo``), ``gloo`` or ``nccl``.
        device: ``auto``, ``cpu``, ``cuda`` (this process's local GPU) or ``cuda:<n>``.

    Returns:
        The context; a single-process context when ``WORLD_SIZE`` is unset or 1 and no group
        exists.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        dev = _pick_device(device, local_rank)
        if dev.type == "cuda":
            # the current device is what NCCL's barrier, autocast and the loader's pinning
            # use: left at cuda:0, every process would also work on the first GPU
            torch.cuda.set_device(dev)
        return DistContext(rank, world, local_rank, local_world, dev, owns_group=False)
    world = torchrun_world_size()
    if world <= 1:
        dev = _pick_device(device, 0)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # --device cuda:1: kernels and pinning on that GPU too
        return DistContext(device=dev)
    from msclip.hardware import is_auto_device

    rank, local_rank, local_world = _torchrun_ranks(world)
    dev = _pick_device(device, local_rank)
    per_rank = is_auto_device(device) or device.strip().lower() == "cuda"
    if dev.type == "cuda" and "LOCAL_RANK" not in os.environ and per_rank:
        # every process of a machine would take cuda:0
        raise ConfigError(
            f"LOCAL_RANK is not set: with {world} processes, device {device!r} means each "
            "process's own GPU, cuda:LOCAL_RANK; set LOCAL_RANK to the process's number on its "
            "machine (torchrun does; under Slurm it is SLURM_LOCALID)",
            param="device",
        )
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    _check_meeting_point(world)
    dist.init_process_group(backend=backend)
    logger.info("process %d of %d (%s, %s)", rank, world, backend, dev)
    return DistContext(rank, world, local_rank, local_world, dev, owns_group=True)


def gather_counts(values: Sequence[int], ctx: DistContext) -> list[list[int]]:
    """Every process's ``values`` (a few integers), in rank order."""
    if not ctx.distributed:
        return [list(values)]
    t = torch.tensor(list(values), dtype=torch.long, device=ctx.device)
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


def all_gather_rows(x: torch.Tensor, sizes: Sequence[int], ctx: DistContext) -> torch.Tensor:
    """Concatenate every process's rows in rank order; this process's rows keep their graph.

    Args:
        x: local rows ``[sizes[rank], ...]``.
        sizes: row count of every process (from :func:`gather_counts`), which may differ when
            unreadable samples were dropped.
        ctx: the process context.
    """
    if not ctx.distributed:
        return x
    width = max(sizes)
    padded = x.detach()
    if x.shape[0] < width:
        pad = x.new_zeros((width - x.shape[0], *x.shape[1:]))
        padded = torch.cat([padded, pad])
    buffers = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(buffers, padded.contiguous())
    parts = [b[:n] for b, n in zip(buffers, sizes)]
    parts[ctx.rank] = x
    return torch.cat(parts)


def all_reduce_gradients(
    params: Iterable[torch.nn.Parameter],
    shared: Iterable[torch.nn.Parameter],
    ctx: DistContext,
) -> None:
    """Sum the gradients of ``params`` over processes; average those of ``shared``.

    Missing gradients count as zero (a process whose samples were all unreadable). One
    flattened collective per dtype.
    """
    if not ctx.distributed:
        return
    shared_ids = {id(p) for p in shared}
    plist = [p for p in params if p.requires_grad]
    for p in plist:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in plist:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in group:
            n = p.grad.numel()
            chunk = flat[offset : offset + n].view_as(p.grad)
            if id(p) in shared_ids:
                chunk = chunk / ctx.world_size
            p.grad.copy_(chunk)
            offset += n
