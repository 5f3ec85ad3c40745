"""Fixtures of the msclip.cuda tests.

The Triton kernels run on a GPU when one is visible, else through Triton's CPU interpreter.
The interpreter is chosen when a kernel is decorated, and Triton's own library functions are
decorated when ``triton`` is first imported, which ``import msclip`` already does (through
torchvision and torch's compiler stack): ``TRITON_INTERPRET=1`` cannot be switched on inside
this test session. ``test_interpreter.py`` therefore runs the kernel test modules in a
subprocess whose environment sets it from the start, so nothing leaks into other tests.

The device fixtures are per test: the suite hides the GPU from everything but the tests marked
``gpu`` (tests/conftest.py), so a module fixture would never find it.
"""

from __future__ import annotations

import pytest
from cuda_helpers import kernel_device


@pytest.fixture
def loss_device() -> str:
    """Where the loss kernels run (skips the test where they cannot)."""
    dev = kernel_device("contrastive_kernels")
    if dev is None:
        pytest.skip("Triton kernels run on a GPU or under TRITON_INTERPRET=1 (test_interpreter.py)")
    return dev


@pytest.fixture
def topk_device() -> str:
    """Where the top-k kernel runs (skips the test where it cannot)."""
    dev = kernel_device("topk_kernels")
    if dev is None:
        pytest.skip("Triton kernels run on a GPU or under TRITON_INTERPRET=1 (test_interpreter.py)")
    return dev
