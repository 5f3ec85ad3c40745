"""The suite's own set-up (tests/conftest.py): tests see a machine without a GPU."""

from __future__ import annotations

import os

import torch


def test_the_gpu_stays_hidden_after_a_test_undoes_its_own_patches(monkeypatch) -> None:
    """A test that calls ``monkeypatch.undo()`` (to run a program once patched and once not)
    must not uncover a GPU: on a machine with one, ``device="auto"`` would then pick it."""
    monkeypatch.setenv("MSCLIP_SOMETHING", "1")
    monkeypatch.undo()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert torch.cuda.is_available() is False and torch.cuda.device_count() == 0
    assert getattr(torch.cuda.is_available, "__name__", "") == "<lambda>"  # the suite's stand-in
