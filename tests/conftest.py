"""Shared fixtures: no network, small threads, tiny models and rasters built in code."""

from __future__ import annotations

import os
import sys

# Helpers shared by several test folders live in tests/support (``from support import ...``).
sys.path.insert(0, os.path.dirname(__file__))

# No test may reach the network: the hub code must take the offline path.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MSCLIP_CACHE_DIR", os.path.join(os.getcwd(), ".pytest_cache", "msclip"))
# precision="auto" picks bf16 or fp32 by CPU kind; the tests want the same numbers everywhere
# (tests of the choice itself unset this).
os.environ["MSCLIP_PRECISION"] = "fp32"
# where the fused float32 path runs, its products on oneDNN's packed-weight kernel, not on the
# kernel a timing picks (the packing tests need it; tests of the choice unset this)
os.environ["MSCLIP_FP32_GEMM"] = "onednn"

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own msclip cache directory."""
    monkeypatch.setenv("MSCLIP_CACHE_DIR", str(tmp_path_factory.mktemp("msclip_cache")))


#: What the process was started with, for the tests marked ``gpu``.
_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")
_CUDA_IS_AVAILABLE, _CUDA_DEVICE_COUNT = torch.cuda.is_available, torch.cuda.device_count


@pytest.fixture(scope="session", autouse=True)
def _cpu_machine():
    """The suite tests msclip as on a machine without a GPU, where CI runs it, so that a machine
    with one gives the same results: ``device="auto"`` (the programs' default) would otherwise
    pick the GPU, and torchrun processes would ask for one GPU each. Hidden for the whole
    session, so that module- and session-scoped fixtures (which are set up before any function
    fixture of their first test) see no GPU either; only tests marked ``gpu`` see it
    (:func:`_gpu_for_gpu_tests`). Its own patcher, not a test's ``monkeypatch``, whose
    ``undo()`` in a test would show the GPU again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")  # subprocesses too
        patch.setattr(torch.cuda, "is_available", lambda: False)
        patch.setattr(torch.cuda, "device_count", lambda: 0)
        yield


@pytest.fixture
def cuda_as_started() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` as the process was started with (``None``: unset)."""
    return _CUDA_VISIBLE_DEVICES


@pytest.fixture(autouse=True)
def _gpu_for_gpu_tests(request, _cpu_machine):
    """A test marked ``gpu`` sees the CUDA device as the process found it (nothing here may
    initialise CUDA while it is hidden, or that test would find none)."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        if _CUDA_VISIBLE_DEVICES is None:
            patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            patch.setenv("CUDA_VISIBLE_DEVICES", _CUDA_VISIBLE_DEVICES)
        patch.setattr(torch.cuda, "is_available", _CUDA_IS_AVAILABLE)
        patch.setattr(torch.cuda, "device_count", _CUDA_DEVICE_COUNT)
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def make_geotiff(tmp_path):
    """Write a small GeoTIFF and return its path."""
    from affine import Affine
    from rasterio.crs import CRS

    import msclip

    def _make(
        name: str = "tile.tif",
        count: int = 12,
        size: tuple[int, int] = (40, 48),
        dtype: str = "uint16",
        descriptions: list[str] | None = None,
        nodata: float | None = None,
        seed: int = 0,
        georef: bool = True,
    ):
        r = np.random.default_rng(seed)
        data = r.integers(1, 6000, size=(count, *size)).astype(dtype)
        path = tmp_path / name
        msclip.write_geotiff(
            path,
            data,
            crs=CRS.from_epsg(32632) if georef else None,
            transform=Affine(10, 0, 500000, 0, -10, 5000000) if georef else None,
            bands=descriptions,
            nodata=nodata,
        )
        return path, data

    return _make


def pytest_collection_modifyitems(config, items) -> None:
    """Test files that hold ``slow`` tests run first, the other files by their number of tests.

    pytest-xdist hands whole files to its two workers in collection order (``--dist loadfile
    --no-loadscope-reorder``, the project's addopts). Its own reordering (by number of tests
    alone) left the three ~45 s files, each of a few tests, to the end of the suite, where one
    worker ran them while the other had nothing left: ~50 s of the suite's wall time. Within a
    file the order is unchanged.
    """
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def cost(name: str) -> tuple[bool, int]:
        tests = files[name]
        return (not any(t.get_closest_marker("slow") for t in tests), -len(tests))

    items[:] = [item for name in sorted(files, key=cost) for item in files[name]]
