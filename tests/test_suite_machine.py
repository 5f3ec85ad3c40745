"""The suite's own set-up (tests/conftest.py): tests see a machine without a GPU."""

from __future__ import annotations

import os

import pytest
import torch


def test_the_gpu_stays_hidden_after_a_test_undoes_its_own_patches(monkeypatch) -> None:
    """A test that calls ``monkeypatch.undo()`` (to run a program once patched and once not)
    must not uncover a GPU: on a machine with one, ``device="auto"`` would then pick it."""
    monkeypatch.setenv("MSCLIP_SOMETHING", "1")
    monkeypatch.undo()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert torch.cuda.is_available() is False and torch.cuda.device_count() == 0
    assert getattr(torch.cuda.is_available, "__name__", "") == "<lambda>"  # the suite's stand-in


@pytest.fixture(scope="module")
def seen_by_a_module_fixture() -> tuple:
    """Set up before any function fixture of its first test (a run of a program shared by the
    tests of a file, say)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env, torch.cuda.is_available, torch.cuda.device_count()


def test_module_fixtures_see_no_gpu_either(seen_by_a_module_fixture) -> None:
    """A module fixture that ran an evaluation on a GPU machine once saw the GPU (its device
    "auto" picked it) while its tests compared with the CPU."""
    env, is_available, count = seen_by_a_module_fixture
    assert env == "" and count == 0
    assert getattr(is_available, "__name__", "") == "<lambda>"


@pytest.mark.gpu
def test_tests_marked_gpu_see_the_device_as_the_process_found_it(cuda_as_started) -> None:
    """Runs on any machine: the functions are torch's own and the variable as at the start."""
    assert torch.cuda.is_available.__module__ == "torch.cuda"
    assert torch.cuda.device_count.__module__ == "torch.cuda"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == cuda_as_started


@pytest.fixture
def seen_by_a_test_fixture() -> str:
    return torch.cuda.is_available.__module__


@pytest.mark.gpu
def test_fixtures_of_tests_marked_gpu_see_it_too(seen_by_a_test_fixture) -> None:
    """Per-test fixtures (the kernels' devices, tests/cuda/conftest.py) are set up after the GPU
    is shown again; a module fixture is not (test_module_fixtures_see_no_gpu_either)."""
    assert seen_by_a_test_fixture == "torch.cuda"
