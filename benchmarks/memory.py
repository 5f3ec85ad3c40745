"""Peak memory and model-load time of the reference classification (see ``workload.py``).

Prints, for the whole ``python -m msclip.cli.inference --run-classification`` run with default
flags (64 tiles, 10 classes, 50 templates, a Llama3-MS-CLIP-Base-sized release checkpoint given
with ``--ckpt-path``, a cold text cache) in what ``--precision auto`` picks here (fp32 on the
fused kernels, or bf16), then in fp32 and in bf16 explicitly, the peak resident memory as
``/usr/bin/time -v`` reports it ("Maximum resident set size") and the wall time; the same with
``--batch-size 32`` (eight times the activations of the CPU default of 4); the peak of
``python -c "import torch"`` alone (0.50 GB with torch's CUDA build, 0.22 GB with its CPU-only
build) and what stays of it once msclip's CPU programs have released the library pages that ran
once (``msclip.memory.release_library_pages``: ~0.30 GB left with the CUDA build); the model
load time from a warm page cache (``create_model`` in a process that has imported msclip, best
of three); and the floor under the images of any run that keeps the image tower in memory:
torch after that release, the image tower's weights and one batch's peak (``tower_floor``).
Targets (issue 13): peak <= 1.0 GB in fp32, <= 0.7 GB in bf16, load < 2 s.

Run: ``python benchmarks/memory.py [--workdir DIR] [--python PY]`` (the 604 MB checkpoint and
the tiles are written once to ``DIR``, default ``/tmp/msclip-bench``; ``--python`` measures the
runs under another interpreter, e.g. a virtual environment with the CPU-only build of torch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import workload  # this folder's helper (also puts the repository's msclip first on the path)

GB = 1e9


def load_times(ckpt: Path, python: str) -> dict[str, float]:
    """Best-of-three ``create_model`` seconds per precision, in a fresh process (warm cache)."""
    code = f"""
import json, time, torch, msclip
best = {{}}
for precision in ("fp32", "bf16") * 3:
    t0 = time.perf_counter()
    m = msclip.create_model("Llama3-MS-CLIP-Base", {str(ckpt)!r}, precision=precision)
    _ = m.checkpoint_sha256
    dt = time.perf_counter() - t0
    best[precision] = min(best.get(precision, 1e9), dt)
    del m
print(json.dumps(best))
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         env=workload.env(), check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def tower_floor(
    ckpt: Path, python: str, precisions: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Per precision, what one image batch needs whatever the program around it: the image
    tower's weights (bytes) and the peak growth of resident memory while the tower encodes one
    batch of the program's CPU size (its activations and kernel workspace: the weights are read
    in and the C heap trimmed before the kernel's peak-RSS counter is reset, so neither is
    counted)."""
    code = f"""
import json, torch, msclip
from msclip.encode import CPU_BATCH_SIZE
from msclip.memory import trim_heap
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
out = {{}}
for precision in {precisions!r}:
    m = msclip.create_model("Llama3-MS-CLIP-Base", {str(ckpt)!r}, precision=precision)
    weights = sum(t.numel() * t.element_size() for t in m.clip.visual.state_dict().values())
    x = torch.rand(CPU_BATCH_SIZE, len(m.bands), m.image_size, m.image_size)
    peak = 0
    with torch.inference_mode():
        for t in m.clip.visual.state_dict().values():
            t.float().sum()  # every weight page read in before the baseline
        for _ in range(2):  # the first batch also chooses kernels; the larger peak counts
            trim_heap()  # the previous batch's freed memory is not the baseline's
            before = status("VmRSS")
            open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
            m.encode_image(x)
            peak = max(peak, status("VmHWM") - before)
    out[precision] = {{"weights": weights, "batch": peak, "size": CPU_BATCH_SIZE}}
    del m
print(json.dumps(out))
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         env=workload.env(), check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_after_release(python: str) -> dict[str, int]:
    """Resident bytes of a process that has imported torch and released its libraries' pages, as
    msclip's programs do on a CPU once started (``rss``), and the bytes released."""
    code = """
import json, torch
from msclip.memory import release_library_pages
released = release_library_pages()
rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({"rss": rss, "released": released}))
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         env=workload.env(), check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/msclip-bench"))
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the measured runs (default: this one)")  # fmt: skip
    args = ap.parse_args()
    py = args.python
    paths = workload.prepare(args.workdir)
    from msclip.hardware import choose_precision, cpu_info

    info = cpu_info()
    print(f"machine: {info.kind}; by its flags auto picks {choose_precision('auto').summary()} "
          "(what each run used is read from its record)")  # fmt: skip
    size = paths["ckpt"].stat().st_size / 1e6
    print(f"load average at start: {os.getloadavg()[0]:.2f}; checkpoint {size:.0f} MB; "
          f"templates: {workload.template_source()}")  # fmt: skip
    build = subprocess.run([py, "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    kind = "CPU-only build" if build[1] == "None" else f"CUDA {build[1]} build"
    print(f"measured runs: {py}, torch {build[0]} ({kind})")

    def classify(cache: Path, *extra: str) -> list[str]:
        return [py, *workload.classify_argv(paths, cache, args.workdir / "o.csv", *extra)[1:]]

    # warm the page cache and the checkpoint's hash cache once
    workload.run_measured(classify(args.workdir / "c0", "--precision", "fp32"))
    _, torch_rss, _ = workload.run_measured([py, "-c", "import torch"])
    _, torch_fast, _ = workload.run_measured([py, "-c", "import os, torch; os._exit(0)"])
    print(f"\n`python -c 'import torch'` alone: peak {torch_rss / GB:.3f} GB "
          f"({torch_fast / GB:.3f} GB leaving without the interpreter's teardown, as msclip's "
          "programs do)")  # fmt: skip
    after = torch_after_release(py)
    print(f"resident after `import torch` once a CPU program has released the library pages "
          f"(msclip.memory.release_library_pages): {after['rss'] / GB:.3f} GB "
          f"({after['released'] / GB:.3f} GB released)")  # fmt: skip
    # bf16 is timed only where this CPU computes it natively (emulated, a run takes hours)
    emulated = workload.bf16_emulated()
    if emulated:
        print(f"bf16 not measured: {emulated}")
    floor = tower_floor(paths["ckpt"], py, ("fp32",) if emulated else ("fp32", "bf16"))
    batch = int(floor["fp32"]["size"])
    print("\nfloor of the images of any run that keeps the image tower in memory (torch, "
          f"released, + image-tower weights + one batch of {batch}):")  # fmt: skip
    for precision, part in floor.items():
        total = after["rss"] + part["weights"] + part["batch"]
        target = {"fp32": 1.0, "bf16": 0.7}[precision]
        below = "" if total <= target * GB else f"  (above the {target} GB target)"
        print(f"  {precision}: {after['rss'] / GB:.3f} + {part['weights'] / GB:.3f} + "
              f"{part['batch'] / GB:.3f} = {total / GB:.3f} GB{below}")  # fmt: skip
    rows = []
    runs = [("auto", ()), ("fp32", ()), ("bf16", ()), ("fp32", ("--batch-size", "32")),
            ("bf16", ("--batch-size", "32"))]  # fmt: skip
    for precision, extra in runs:
        if precision == "bf16" and emulated:
            continue
        cache = args.workdir / f"cache-{precision}-{len(extra)}"
        subprocess.run(["rm", "-rf", str(cache)], check=True)  # cold text cache
        flags = () if precision == "auto" else ("--precision", precision)  # auto: no flag
        try:
            wall, rss, _ = workload.run_measured(classify(cache, *flags, *extra))
        except RuntimeError as err:  # e.g. bf16 refused where this CPU's bf16 disagrees
            print(f"{precision} {' '.join(extra)}: the run failed: {str(err)[-300:]}")
            continue
        # what the run used, from its record (auto: the CPU flags, then the bf16 check)
        model = json.loads((args.workdir / "o.csv.json").read_text())["model"]
        ran = model["precision"]
        label = precision
        if precision == "auto":  # auto's fp32 is the fused one
            fused = workload.on_fused_fp32(model.get("precision_reason", ""))
            label = f"auto={ran}{'-fused' if fused else ''}"
        # the targets are for the default batch; a larger one adds its activations on top
        target = None if extra else {"fp32": 1.0, "bf16": 0.7}.get(ran)
        rows.append((label, " ".join(extra) or f"default ({batch})", rss, wall, target))
    print("\nwhole classification run (64 tiles, 10 classes x 50 templates, cold text cache):")
    print(f"{'precision':16s} {'batch':13s} {'peak RSS':>9s} {'wall':>8s}  target")
    for precision, batch, rss, wall, target in rows:
        if target is None:
            goal = "none (the targets are for the default batch)"
        else:
            goal = f"<= {target} GB: {'met' if rss <= target * GB else 'NOT met'}"
        print(f"{precision:16s} {batch:13s} {rss / GB:7.3f} GB {wall:6.1f} s  {goal}")
    times = load_times(paths["ckpt"], py)
    print("\nmodel load from a warm page cache (create_model, best of 3; target < 2 s):")
    for precision, t in times.items():
        print(f"  {precision}: {t:.2f} s")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
