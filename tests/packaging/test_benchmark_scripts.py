"""The benchmark scripts of benchmarks/: what they measure is what their tables say."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module of its own name (benchmarks/ is no package)."""
    monkey = pytest.MonkeyPatch()
    monkey.syspath_prepend(str(BENCHMARKS))  # the scripts import their helper, workload.py
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        monkey.undo()
    return module


def test_train_end_to_end_runs_with_the_loader_workers_its_table_names(tmp_path, monkeypatch):
    """The end-to-end table's 'loader workers' column was the --num-workers given to the worker,
    which never reached TrainConfig: its '1 loader worker' row trained with none."""
    bench = _script("train")
    import msclip.train

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        run = Path(cfg.output_dir)
        run.mkdir(parents=True)
        (run / "train_log.csv").write_text("step,samples_per_s\n1,1.0\n2,2.0\n")

    monkeypatch.setattr(msclip.train, "train", fake_train)
    args = argparse.Namespace(model="msclip-tiny", batch=2, epochs=1, cache=0, threads=1,
                              n_images=2, num_workers=1)  # fmt: skip
    assert bench.worker_e2e(args)["samples_per_s"] == 2.0
    assert [cfg.num_workers for cfg in seen] == [1]


def test_heads_demo_refuses_scenes_of_an_earlier_run_of_another_size(tmp_path):
    """A second call with another --n-per-class over the same --out read the first call's
    scenes while printing the new count."""
    bench = _script("heads_demo")
    full, _, _ = bench.make_data(tmp_path, 1)
    assert len(list(full.glob("*/*.tif"))) == 14
    bench.make_data(tmp_path, 1)  # the same size: kept
    with pytest.raises(SystemExit, match=r"holds 1 tiles per class .* not --n-per-class 2"):
        bench.make_data(tmp_path, 2)


def test_heads_demo_runs_again_over_its_own_output_folder(tmp_path, monkeypatch):
    """Every msclip-finetune call resumes: a second call over the same --out stopped at its
    first run ('already holds a run of zero-shot ... pass resume')."""
    bench = _script("heads_demo")
    calls = []
    methods = ["zero-shot", "knn", "knn-unweighted", "logistic", "text-init", "linear",
               "linear-lora", "linear-scratch"]  # fmt: skip
    record = {"metrics": {"top1_accuracy": 0.5}, "ci": {"top1_accuracy": {"low": 0, "high": 1}}}

    def fake_run(argv):
        calls.append(argv)
        return dict.fromkeys(methods, record)

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "make_data", lambda out, n: (out / "a", out / "b", out / "c"))
    assert bench.main(["--out", str(tmp_path)]) == 1  # LoRA not above the frozen head
    assert len(calls) == 8 and all("--resume" in argv for argv in calls)


def test_bf16_is_not_timed_where_this_cpu_emulates_it(monkeypatch, capsys):
    """int8.py timed bf16 on every CPU (an AVX2 one emulates it: minutes a ViT-B-16 batch, its
    figure printed as any other with the warning silenced), encode.py, inference.py and
    memory.py wherever the CPU flags showed bf16, though an ONEDNN_MAX_CPU_ISA cap keeps oneDNN
    off those kernels (7x slower than fp32 on the Zen 5 here)."""
    import msclip.hardware

    workload, int8 = _script("workload"), _script("int8")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "emulated" in workload.bf16_emulated()
    assert int8.speed_precisions() == ["fp32", "int8"]
    assert "bf16 not timed: emulated" in capsys.readouterr().out

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    real = msclip.hardware.cpu_info()
    avx2 = dataclasses.replace(real, capability="AVX2")  # torch's AVX2 kernels: bf16 emulated
    monkeypatch.setattr(msclip.hardware, "cpu_info", lambda: avx2)
    assert not msclip.hardware.cpu_info().native_bf16
    assert workload.bf16_emulated().startswith("emulated on this CPU")
    assert int8.speed_precisions() == ["fp32", "int8"]


def test_encode_model_only_figure_runs_the_images_it_counts():
    """With --tiles not a multiple of 32 the model-only figure ran whole batches of 32 and
    counted --tiles images (--tiles 8: a fourth of the rate, end-to-end ratios of 4.4)."""
    import msclip

    encode = _script("encode")
    model = msclip.create_model("msclip-demo")
    seen = []
    real = model.encode_image

    def counted(x, **kwargs):
        seen.append(len(x))
        return real(x, **kwargs)

    model.encode_image = counted
    assert encode.model_images_per_s(model, 40, 32) > 0
    assert seen == [32, 8]
    with pytest.raises(SystemExit):
        encode.main(["--tiles", "0"])


def test_cpu_bf16_help_is_help(capsys):
    """`cpu_bf16.py --help` ran the whole measurement (it took no options)."""
    with pytest.raises(SystemExit) as done:
        _script("cpu_bf16").main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
