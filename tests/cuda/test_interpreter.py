"""Run the Triton kernel tests through Triton's CPU interpreter, in a subprocess.

``TRITON_INTERPRET=1`` must be set before the process imports Triton (see ``conftest.py``), so
the kernel tests run in a child pytest whose environment sets it; this session's environment is
left alone. Every kernel test must pass: a skipped one would hide a missing run. One child runs
them all (a second child paid its interpreter, torch and Triton start-up again: ~8 s).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from cuda_helpers import INTERPRETER_ENV, PYTHON, REPO, interpreter_takes_numpy, subprocess_env
from msclip.cuda.runtime import triton_available

# the kernel tests of test_triton_kernels.py: 5 of the contrastive loss, 12 of the top-k scan,
# 1 of the launch device
EXPECTED = 18


@pytest.mark.slow  # a child that imports torch and Triton, then interprets the kernels: ~40 s
@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
@pytest.mark.skipif(
    triton_available() and not interpreter_takes_numpy(),
    reason="this Triton's interpreter cannot run with this NumPy (Triton < 3.8, NumPy >= 2.4)",
)
def test_kernels_through_the_interpreter() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         str(REPO / "tests" / "cuda" / "test_triton_kernels.py")],
        cwd=REPO,
        env=subprocess_env(**INTERPRETER_ENV),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # the summary is the last line of the child's stdout (a plugin may warn on stderr after it)
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(rf"\b{EXPECTED} passed\b", summary), summary
    assert "skipped" not in summary and "failed" not in summary, summary
