"""A training run killed mid-way, in a fresh process.

The child is spawned, not forked: on a machine with a GPU, torch's autograd starts a thread per
device at its first backward pass, after which a forked child that trains stops with "Unable to
handle autograd's threading in combination with fork-based multiprocessing" (seen on an H200
machine, where the parent had trained first). A spawned child imports torch and msclip again
(a few seconds) and takes the parent's environment and thread count, so that its arithmetic is
the parent's.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import torch


def _child(target: Callable[..., Any], threads: int, args: tuple) -> None:
    torch.set_num_threads(threads)
    target(*args)
    os._exit(0)


def exit_code_of(target: Callable[..., Any], *args: Any, timeout: float = 300) -> int | None:
    """Exit status of ``target(*args)`` run in a spawned process (``target`` a module-level
    function, ``args`` picklable); None if it had not ended after ``timeout`` seconds (then
    killed)."""
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child, args=(target, torch.get_num_threads(), args))
    child.start()
    child.join(timeout=timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
        return None
    return child.exitcode
