"""Start-up of msclip's programs: ``import msclip``, ``--help``, and the time to first output.

Each figure is the median of ``--repeats`` fresh processes (warm page cache):

- ``import msclip``: the time of ``python -c "import msclip"``, and its peak RSS;
- ``--help``: ``msclip-inference --help`` (and whether torch was imported for it);
- first output: seconds from starting ``msclip-inference --run-classification`` on the sample
  tiles with msclip-demo until its first byte on stdout or stderr (the status line, a progress
  bar or the table), and until it ends.

``--repo PATH`` measures another checkout of msclip (e.g. an older commit in a git worktree) by
putting it first on ``PYTHONPATH``, so that before and after are measured on the same machine in
one session::

    git worktree add /tmp/before <commit>
    python benchmarks/startup.py --repo /tmp/before
    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CLASSES = ["sea", "forest", "city", "snow", "farmland"]


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """Seconds to the first output byte, seconds to the end, and the exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - t0
    proc.stdout.read()
    code = proc.wait()
    return first, time.perf_counter() - t0, code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=HERE, help="checkout of msclip to measure")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    env = _env(repo)
    py = sys.executable
    print(f"msclip checkout: {repo}")

    imports, rss = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        subprocess.run([py, "-c", "import msclip"], env=env, cwd=repo, check=True)
        imports.append(time.perf_counter() - t0)
        rss.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(f"import msclip:      {statistics.median(imports):6.2f} s (peak RSS of the children "
          f"so far {max(rss):.0f} MB)")  # fmt: skip

    helps = []
    probe = (
        "import sys\nfrom msclip.cli.inference import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules)\n"
    )
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = subprocess.run([py, "-c", probe], env=env, cwd=repo, capture_output=True, text=True)
        helps.append(time.perf_counter() - t0)
    print(f"--help:             {statistics.median(helps):6.2f} s ({out.stdout.splitlines()[-1]})")

    cmd = [py, "-m", "msclip.cli.inference", "--run-classification", "--model-name",
           "msclip-demo", "--images", str(HERE / "benchmark_datasets" / "examples"),
           "--class-names", *CLASSES, "--save-path", "/tmp/msclip-startup.csv"]  # fmt: skip
    firsts, totals = [], []
    for _ in range(args.repeats):
        first, total, code = _timed(cmd, env, repo)
        if code != 0:
            print(f"classification exited with {code}")
        firsts.append(first)
        totals.append(total)
    print(f"first output:       {statistics.median(firsts):6.2f} s after start "
          f"(whole classification of 16 tiles {statistics.median(totals):.2f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
