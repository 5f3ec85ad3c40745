"""benchmarks/index_search.py run twice over one ``--workdir``: the second run keeps the written
set and measures the int8 copy and the kernel choice afresh."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "index_search.py"


def _run(workdir: Path) -> str:
    args = [sys.executable, str(SCRIPT), "--datasets", "clustered", "--sizes", "3000",
            "--queries", "3", "--threads", "1", "--workdir", str(workdir)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_second_run_over_the_same_workdir_reuses_the_set_and_rebuilds_the_search_cache(tmp_path):
    first = _run(tmp_path)
    assert "sources of an earlier run kept" not in first
    store = tmp_path / "clustered-3000"
    embeddings = (store / "embeddings.f32").read_bytes()
    (store / "search_cache" / "stale").write_text("a file of an earlier run")
    second = _run(tmp_path)  # raised DuplicateSourceError before
    assert re.search(r"N=3,000 D=512: write [\d.]+ s \(3 sources of an earlier run kept\)", second)
    assert (store / "embeddings.f32").read_bytes() == embeddings  # nothing appended
    assert not (store / "search_cache" / "stale").exists()  # the cache was measured afresh
    for out in (first, second):
        assert "recall@10=1.0000" in out and "1 query:" in out
