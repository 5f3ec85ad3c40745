"""benchmarks/gpu_checks.sh (the checks CI cannot run: it has no GPU), with a stand-in Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_checks.sh"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="a bash script for Linux")


def _run(tmp_path: Path, *args: str, fail: str = "") -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    # prints what it was asked to run; exits 3 when that names the step told to fail
    fake.write_text(
        f'#!/bin/sh\necho "ran: $*"\ncase "$*" in *"{fail or "@never@"}"*) exit 3;; esac\nexit 0\n'
    )
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake))
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_the_named_steps_run_in_order_each_with_its_log(tmp_path: Path) -> None:
    done = _run(tmp_path, "gpu_tests", "encode", "search")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["encode.txt", "gpu_tests.txt", "search.txt"]
    assert "-m pytest -q -m gpu -n 0" in (out / "gpu_tests.txt").read_text()
    assert "benchmarks/encode.py --quick --gpu-only" in (out / "encode.txt").read_text()
    assert "benchmarks/kernels.py --skip-cpu" in (out / "search.txt").read_text()
    assert done.stdout.index("== gpu_tests") < done.stdout.index("== encode")
    assert done.stdout.index("== encode") < done.stdout.index("== search")


def test_a_failed_step_fails_the_run_and_the_others_still_run(tmp_path: Path) -> None:
    done = _run(tmp_path, "gpu_tests", "encode", fail="-m gpu")
    assert done.returncode == 3
    assert "== gpu_tests: exit 3" in done.stdout and "== encode: exit 0" in done.stdout


def test_an_unknown_step_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "encode", "benchmark")
    assert done.returncode == 2
    assert (
        "unknown step 'benchmark' (machine, gpu_tests, encode, cpu, cpu_readers, search, suite)"
        in done.stderr
    )


def test_the_cpu_readers_step_runs_the_cpu_figures_with_reading_workers(tmp_path: Path) -> None:
    done = _run(tmp_path, "cpu_readers")
    assert done.returncode == 0, done.stderr
    ran = (tmp_path / "out" / "cpu_readers.txt").read_text().splitlines()
    cores = len(os.sched_getaffinity(0))
    threads = cores - 2 if cores > 4 else cores
    assert ran == [
        f"ran: benchmarks/encode.py --quick --cpu-only --workers 2 --threads {threads} --tiles 256"
    ]
    done = _run(tmp_path, "cpu")
    assert (tmp_path / "out" / "cpu.txt").read_text().splitlines() == [
        "ran: benchmarks/encode.py --quick --cpu-only"
    ]


def test_the_suite_step_runs_on_all_but_four_cores(tmp_path: Path) -> None:
    done = _run(tmp_path, "suite")
    assert done.returncode == 0, done.stderr
    ran = (tmp_path / "out" / "suite.txt").read_text()
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    assert f"-m pytest -q -p no:cacheprovider -n {cores - 4 if cores > 8 else 2} tests" in ran
