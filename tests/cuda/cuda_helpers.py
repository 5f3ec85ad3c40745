"""Helpers shared by the msclip.cuda tests (imported, not collected)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
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


def interpreter_takes_numpy() -> bool:
    """Whether this Triton's interpreter runs with this NumPy: Triton 3.6's turns scalar kernel
    arguments (1-element arrays) into loop bounds with ``int()``, which NumPy 2.4 refuses ("only
    0-dimensional arrays can be converted"; every kernel failed with NumPy 2.5), Triton 3.8's
    runs them (3.7 untried: taken as 3.6)."""
    import triton

    def major_minor(version: str) -> tuple[int, int]:
        return tuple(int(p) for p in re.findall(r"\d+", version)[:2])  # type: ignore[return-value]

    return major_minor(triton.__version__) >= (3, 8) or major_minor(np.__version__) < (2, 4)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a child test process: this checkout first on the path, one thread."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **extra,
    )


def loss_and_grads(fn, x, y, t, b) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``fn(x, y, t, b)`` and the gradients of every input that has one (``b`` may be None),
    as copies on the CPU; earlier gradients are cleared first."""
    for v in (x, y, t, b):
        if v is not None:
            v.grad = None
    loss = fn(x, y, t, b)
    loss.backward()
    grads = {"image": x.grad, "text": y.grad, "logit_scale": t.grad}
    if b is not None:
        grads["logit_bias"] = b.grad
    return loss.detach().cpu(), {k: v.cpu().clone() for k, v in grads.items() if v is not None}


def assert_matches(loss, grads, ref_loss, ref_grads, tol: float = 1e-5) -> None:
    """Loss and every gradient equal to ``tol`` relative to the reference's largest entry."""
    assert set(grads) == set(ref_grads)
    assert abs(float(loss) - float(ref_loss)) <= tol * max(1.0, abs(float(ref_loss)))
    for name, g in grads.items():
        ref = ref_grads[name]
        err = float((g.double() - ref.double()).abs().max())
        assert err <= tol * float(ref.abs().max()) + 1e-12, f"{name}: error {err:.3g}"


def uncertifiable_search_set() -> tuple[np.ndarray, np.ndarray]:
    """``(rows [400, 24], queries [6, 24])`` float32 for the device search's exact fallbacks:
    unit rows with exact duplicates (tied scores), and 300 near-copies of row 3, closer than any
    rounding bound, so that for the last query (row 3) neither the first candidate list (32) nor
    the longer one (256) can be certified and it is rescanned exactly."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((400, 24)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[50:90] = emb[:40]
    emb[100:] = emb[3] + 1e-7 * rng.standard_normal((300, 24)).astype(np.float32)
    queries = np.concatenate([rng.standard_normal((5, 24)), emb[[3]]]).astype(np.float32)
    return emb, queries
