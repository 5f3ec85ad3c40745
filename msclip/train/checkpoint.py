"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts,
so it is read back with ``torch.load(weights_only=True)`` and never unpickles code: the model
state dict (OpenCLIP names, under ``model``, with the msclip model config as JSON under
``msclip_config``, so :func:`msclip.read_checkpoint` and ``create_model(path)`` also read it), the
loss, optimiser and scheduler states, the random states of Python, NumPy and torch (numbers and
tensors, not NumPy objects), the data position (epoch, step within the epoch) and the training
config. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msclip.errors import CheckpointError
from msclip.io import atomic_write

__all__ = [
    "FORMAT",
    "checkpoint_dir",
    "find_latest",
    "get_rng_state",
    "load_train_checkpoint",
    "prune_checkpoints",
    "remove_unfinished",
    "save_train_checkpoint",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

FORMAT = "msclip-train-v1"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def get_rng_state() -> dict[str, Any]:
    """Random states of Python, NumPy and torch as tensors and plain numbers."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in state], "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint has CUDA random states of %d devices, this machine %d; not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """Folder of the step checkpoints of a run."""
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    """File of the checkpoint after ``step`` optimiser steps."""
    return checkpoint_dir(output_dir) / f"step_{step:08d}.pt"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run's checkpoints, oldest first."""
    d = checkpoint_dir(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def find_latest(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run, if any."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def _newest_readable(bad: Path) -> Path | None:
    """The other step checkpoint of ``bad``'s folder with the highest step that loads: the order
    of :func:`find_latest` (file times change under copies without ``-t``, so they do not tell
    which is newest), and never a suggestion that fails the same way."""
    if not bad.parent.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), q)
        for q in bad.parent.iterdir()
        if (m := _STEP_FILE.match(q.name)) and q.name != bad.name
    )
    for _, q in reversed(found):
        try:  # memory-mapped: only the archive's index and records are read, not every tensor
            data = torch.load(os.fspath(q), map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return q
    return None


#: Files a run writes (atomically, through a temporary file beside each).
_RUN_FILES = ("step_", "final.safetensors", "metrics.csv", "train_log.csv", "config.yaml")


def remove_unfinished(output_dir: str | os.PathLike) -> int:
    """Delete the temporary files of writes a killed run left in ``output_dir`` and its
    checkpoint folder, and return how many bytes they held. A run stopped by SIGKILL (the
    kernel's out-of-memory killer, a scheduler past its grace period) in the middle of saving
    leaves one beside the checkpoint, as large as the checkpoint; call this only while holding
    the folder (no other run writes there)."""
    from msclip.io import TMP_PREFIX

    prefixes = tuple(TMP_PREFIX + name for name in _RUN_FILES)
    freed = 0
    for folder in (Path(output_dir), checkpoint_dir(output_dir)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(prefixes) and entry.is_file():
                size = entry.stat().st_size
                entry.unlink(missing_ok=True)
                freed += size
                logger.info("removed %s, left by an interrupted write", entry)
    return freed


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep = 0`` keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(output_dir)[:-keep]:
        p.unlink(missing_ok=True)


def save_train_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically."""
    data = {"format": FORMAT, **payload}
    return atomic_write(path, lambda tmp: torch.save(data, tmp), ".pt")


def load_train_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``).

    Raises:
        CheckpointError: unreadable file, or not an msclip training checkpoint.
    """
    from msclip.pretrained import checkpoint_read_reason

    p = os.fspath(path)
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{p} holds Python objects other than tensors and plain containers; msclip never "
            "unpickles arbitrary objects (unpickling runs code from the file): resume only from "
            "checkpoints msclip-train wrote",
            param="resume",
        ) from err
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        good = _newest_readable(Path(p))
        hint = f"; resume from the newest one that reads (resume={good})" if good else ""
        raise CheckpointError(
            f"cannot read training checkpoint {p}: {checkpoint_read_reason(p, err)}{hint}",
            param="resume",
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not an msclip training checkpoint (format {FORMAT!r}); to start from model "
            "weights use the option init instead of resume",
            param="init",
        )
    return data
