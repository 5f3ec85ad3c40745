"""The reference workload of msclip's speed and memory figures (shared by the benchmark scripts).

64 generated 224x224 12-band tiles (``msclip.synthetic``, L2A band order, uint16 GeoTIFFs), 10
classes, 50 prompt templates, and a Llama3-MS-CLIP-Base-sized checkpoint: the published weights
cannot be downloaded here, so a random-weights ViT-B/16 10-band model is written in the release's
own format (``msclip.export_release_checkpoint``: three prefixes, 907 entries, ~604 MB) and passed
with ``--ckpt-path``, which loads exactly as the real file does.

Templates: the published 50-template file when the project's reference notes are beside the
repository (``../shared/reference/templates/msclip.txt``, read for measurement only), else 50 of
msclip's own (the ``eo`` set and the first 15 of ``sentinel2``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # measure this repository's msclip, not another installed copy
    sys.path.insert(0, str(REPO))
CLASSES = [
    "annual crop", "forest", "herbaceous vegetation", "highway", "industrial buildings",
    "pasture", "permanent crop", "residential buildings", "river", "sea or lake",
]  # fmt: skip
N_TILES = 64
PUBLISHED_TEMPLATES = REPO.parent / "shared" / "reference" / "templates" / "msclip.txt"


def prepare(root: Path) -> dict[str, Path]:
    """Write (once) the checkpoint, tiles and template file under ``root``; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    ckpt, tiles, templates = root / "Llama3_MS_CLIP_random.pt", root / "tiles", root / "t.txt"
    if not ckpt.is_file():
        import torch

        import msclip

        torch.manual_seed(0)
        model = msclip.create_model("Llama3-MS-CLIP-Base", precision="fp32")
        msclip.export_release_checkpoint(model, ckpt)
        del model
    if not tiles.is_dir() or len(list(tiles.glob("*.tif"))) != N_TILES:
        import msclip.synthetic as synthetic

        shutil.rmtree(tiles, ignore_errors=True)
        synthetic.generate_examples(tiles, n=N_TILES, size=224, seed=0)
        (tiles / "captions.csv").unlink(missing_ok=True)
    if not templates.is_file():
        if PUBLISHED_TEMPLATES.is_file():
            text = PUBLISHED_TEMPLATES.read_text(encoding="utf-8")
        else:
            from msclip.zero_shot import load_templates

            text = "\n".join(load_templates("eo") + load_templates("sentinel2")[:15]) + "\n"
        templates.write_text(text, encoding="utf-8")
    return {"ckpt": ckpt, "tiles": tiles, "templates": templates}


def template_source() -> str:
    return "published msclip.txt" if PUBLISHED_TEMPLATES.is_file() else "msclip's eo + sentinel2"


def classify_argv(paths: dict[str, Path], cache: Path, out: Path, *extra: str) -> list[str]:
    """``python -m msclip.cli.inference --run-classification ...`` with default flags."""
    return [
        sys.executable, "-m", "msclip.cli.inference", "--run-classification",
        "--ckpt-path", str(paths["ckpt"]), "--images", str(paths["tiles"]),
        "--class-names", *CLASSES, "--templates", str(paths["templates"]),
        "--text-cache-dir", str(cache), "--save-path", str(out), "--quiet", *extra,
    ]  # fmt: skip


def on_fused_fp32(reason: str) -> bool:
    """Whether a model's ``precision_reason`` (or a run record's) says its image tower runs on
    the fused fp32 path (``auto``'s fp32)."""
    from msclip.factory import FUSED_FP32_NOTE

    return str(reason).endswith(FUSED_FP32_NOTE)


def bf16_emulated() -> str:
    """Why bf16 is emulated on this CPU in this process ("" where it runs natively): a CPU
    without native bf16 (typically 100x or more slower than fp32: a ViT-B-16 batch takes
    minutes), or one whose oneDNN an ``ONEDNN_MAX_CPU_ISA`` cap keeps off its bf16 kernels
    (several times slower). The benchmarks time no bf16 figure then, and say why."""
    from msclip.hardware import cpu_info, onednn_bf16_cap

    info = cpu_info()
    if not info.native_bf16:
        return f"emulated on this CPU ({info.kind}), typically 100x or more slower than fp32"
    cap = onednn_bf16_cap()
    if cap:
        return (
            f"emulated here: {cap} keeps oneDNN off this CPU's bf16 kernels (several times "
            "slower than fp32)"
        )
    return ""


def env() -> dict[str, str]:
    """The environment of the measured runs: this repository's msclip first on the path."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    e = dict(os.environ, PYTHONPATH=path)
    e.pop("MSCLIP_PRECISION", None)  # auto decides
    # as installed: msclip's modules read from their bytecode cache (an environment that turns
    # the cache off makes every run compile msclip again, ~0.1 s that no installed copy pays)
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def run_measured(argv: list[str]) -> tuple[float, int, str]:
    """Run a command; returns (wall seconds, peak resident memory in bytes, stderr).

    Peak memory is what ``/usr/bin/time -v`` reports as "Maximum resident set size" when it is
    installed, else ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper process running only
    that command (the same kernel figure).
    """
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    t0 = time.perf_counter()
    if timer:
        proc = subprocess.run([timer, "-v", *argv], capture_output=True, text=True, env=env())
        wall = time.perf_counter() - t0
        kb = next(
            int(line.split(":")[1])
            for line in proc.stderr.splitlines()
            if "Maximum resident set size" in line
        )
    else:
        wrapper = (
            "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(r)"
        )
        proc = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True,
                              text=True, env=env())  # fmt: skip
        wall = time.perf_counter() - t0
        kb = int(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{proc.stderr}")
    return wall, kb * 1024, proc.stderr
