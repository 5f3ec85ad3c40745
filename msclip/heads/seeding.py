"""torch's random state seeded for a head's work and restored for the caller (:func:`seeded`).

A leaf module (it imports only torch), so that every head module can use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, cuda: bool = False) -> Iterator[None]:
    """torch's random state seeded with ``seed`` inside, the caller's restored afterwards.

    The CPU generator always; with ``cuda`` also those of every CUDA device (for work that runs
    there: dropout of a tower being fine-tuned), which initialises CUDA when there is one.
    Without ``cuda`` no CUDA generator is touched (``torch.manual_seed`` would reseed them, or
    queue a reseed for when CUDA starts, and ``fork_rng(devices=[])`` would not restore them).
    """
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(int(seed))
        if devices:
            torch.cuda.manual_seed_all(int(seed))
        yield
