"""Helpers shared by the msclip.cuda tests (imported, not collected)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import msclip

REPO = Path(msclip.__file__).resolve().parent.parent
PYTHON = sys.executable

#: Set in the environment of the subprocess that runs the kernel tests on the CPU.
INTERPRETER_ENV = {"TRITON_INTERPRET": "1"}


def kernel_device(module: str) -> str | None:
    """Device on which the kernels of ``module`` run in this process, if any."""
    from msclip.cuda.runtime import kernels_can_run, triton_available

    if not triton_available():
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu" if kernels_can_run("cpu", module) else None
    if torch.cuda.is_available() and kernels_can_run("cuda", module):
        return "cuda"
    return None


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a child test process: this checkout first on the path, one thread."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **extra,
    )
