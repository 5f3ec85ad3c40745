"""Training checkpoint files: the hint after an unreadable one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from msclip.errors import CheckpointError
from msclip.train.checkpoint import (
    checkpoint_path,
    find_latest,
    load_train_checkpoint,
    save_train_checkpoint,
)


def test_unreadable_checkpoint_hints_the_newest_step_that_reads(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        save_train_checkpoint(checkpoint_path(tmp_path, step), {"w": torch.ones(64), "step": step})
    # A copy without -t gives the oldest checkpoint the newest file time; the step still orders.
    early = checkpoint_path(tmp_path, 2)
    later = os.stat(checkpoint_path(tmp_path, 8)).st_mtime + 100
    os.utime(early, (later, later))
    for step in (6, 8):  # the two newest cut short (a full disk, a killed copy)
        path = checkpoint_path(tmp_path, step)
        path.write_bytes(path.read_bytes()[:100])
    latest = find_latest(tmp_path)
    assert latest == checkpoint_path(tmp_path, 8)
    with pytest.raises(CheckpointError, match="cannot read training checkpoint") as info:
        load_train_checkpoint(latest)
    assert f"resume={checkpoint_path(tmp_path, 4)})" in str(info.value)
    assert load_train_checkpoint(checkpoint_path(tmp_path, 4))["step"] == 4
