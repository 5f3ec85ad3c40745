"""Where the Triton kernels of :mod:`msclip.cuda` can run, decided lazily and never at import.

A kernel runs on CUDA tensors when Triton imports, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, how the tests run the kernels without a GPU). Triton decides between
compiling and interpreting when a kernel is *decorated*, and its own library functions
(``tl.sum``, ``tl.sort``...) are decorated when ``triton`` is first imported, so the variable
must be set before anything in the process imports Triton (torch's compiler stack does, and
``import msclip`` pulls that in): the interpreter is a property of the whole process, read once
here from the kernel modules as they were loaded.

``auto`` choices additionally run a small self-test of each kernel family on the device once
per process (a compiler without a working toolchain fails there, not in the middle of a run).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
from types import ModuleType

import torch

from msclip.errors import KernelUnavailableError

__all__ = [
    "KernelUnavailableError",
    "kernel_module",
    "kernels_can_run",
    "launch_device",
    "triton_available",
]

logger = logging.getLogger(__name__)

#: The PyTorch path that replaces each kernel module, as errors tell the user to take it.
_FALLBACK = {
    "contrastive_kernels": "use the PyTorch loss (--loss-impl chunked)",
    "topk_kernels": "search on the CPU (SearchIndex(device='cpu') or 'auto')",
}


def _fallback(module_name: str) -> str:
    return _FALLBACK.get(module_name, "use the PyTorch path")


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` imports (it ships with the CUDA builds of torch)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except ImportError as exc:  # a broken install: say why once
        logger.info("triton is installed but does not import: %s", exc)
        return False
    return True


def kernel_module(name: str) -> ModuleType:
    """Import a kernel module of this package (``contrastive_kernels``, ``topk_kernels``).

    Raises:
        KernelUnavailableError: Triton does not import.
    """
    if not triton_available():
        raise KernelUnavailableError(
            f"the Triton kernels ({name}) need the 'triton' package, which ships with the CUDA "
            f"builds of torch; install one, or {_fallback(name)}"
        )
    return importlib.import_module(f"msclip.cuda.{name}")


def launch_device(device: torch.device) -> contextlib.AbstractContextManager:
    """The context to launch a kernel on ``device`` in: Triton launches on the *current* CUDA
    device whatever the tensors' (a search or a loss on ``cuda:1`` while ``cuda:0`` is current
    fails there), so a CUDA device is made current for the launch; nothing for CPU tensors (the
    interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def interpreted(module: ModuleType) -> bool:
    """Whether a loaded kernel module runs through Triton's CPU interpreter."""
    return bool(getattr(module, "INTERPRETED", False))


def kernels_can_run(device: torch.device | str, module_name: str) -> bool:
    """Whether the kernels of ``module_name`` can take tensors on ``device``.

    CUDA devices need Triton and a visible GPU; the CPU needs the interpreter (set before the
    process imported Triton).
    """
    device = torch.device(device)
    if not triton_available():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return interpreted(kernel_module(module_name))
    return False


def check_device(device: torch.device | str, module_name: str, what: str) -> None:
    """Raise a clear error when the kernels of ``module_name`` cannot run on ``device``.

    Raises:
        KernelUnavailableError: Triton missing, no GPU, or CPU tensors without the interpreter.
    """
    device = torch.device(device)
    if kernels_can_run(device, module_name):
        return
    if not triton_available():
        kernel_module(module_name)  # raises with the install hint
    if device.type == "cuda":
        raise KernelUnavailableError(
            f"{what} on {device}: no CUDA device is visible to torch; run on a GPU or "
            f"{_fallback(module_name)}"
        )
    raise KernelUnavailableError(
        f"{what} got tensors on {device}: the Triton kernels run on CUDA devices, or on the CPU "
        "only under Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported); "
        f"{_fallback(module_name)}"
    )
