"""precision="auto": the choice on the two CPU kinds and on GPUs (detection simulated), the warning
for emulated bf16, and the precision in model descriptions, text-cache keys, index manifests and
evaluation records."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import msclip
from msclip import hardware
from msclip.errors import PerformanceWarning, PrecisionError
from msclip.hardware import CPUInfo, choose_precision

ZEN4_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
ZEN4 = CPUInfo("AMD EPYC 9B14", "AVX512", ZEN4_FLAGS, torch.__version__)
ZEN3 = CPUInfo("AMD EPYC 7B13", "AVX2", frozenset({"avx2", "fma"}), torch.__version__)
SAPPHIRE = CPUInfo("Intel Xeon 8480", "AVX512", frozenset({"avx512f", "amx_bf16", "amx_tile"}),
                   torch.__version__)  # fmt: skip
AVX512_NO_BF16 = CPUInfo("Intel Xeon 6248", "AVX512", frozenset({"avx512f", "avx512_vnni"}),
                         torch.__version__)  # fmt: skip


@pytest.fixture
def machine(monkeypatch):
    """Simulate a machine: ``machine(cpu, cuda_bf16=None)``; auto is not overridden."""
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # the machine's own kernels
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware, "_warned", set())

    def set_machine(cpu: CPUInfo, cuda_bf16: bool | None = None) -> None:
        monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
        monkeypatch.setattr(hardware, "cuda_bf16_supported", lambda index=0: bool(cuda_bf16))

    return set_machine


def test_auto_picks_bf16_only_where_the_cpu_computes_it(machine) -> None:
    for cpu, expected in [(ZEN4, "bf16"), (SAPPHIRE, "bf16"), (ZEN3, "fp32"),
                          (AVX512_NO_BF16, "fp32")]:  # fmt: skip
        machine(cpu)
        choice = choose_precision("auto")
        assert choice.precision == expected, cpu
        assert choice.requested == "auto" and choice.reason
    machine(ZEN3)
    assert "AVX2" in choose_precision().reason  # says why
    machine(ZEN4)
    assert "avx512_bf16" in choose_precision(None, "cpu").reason


def test_auto_on_gpus(machine) -> None:
    machine(ZEN3, cuda_bf16=True)
    assert choose_precision("auto", "cuda:1").precision == "bf16"
    machine(ZEN3, cuda_bf16=False)
    assert choose_precision("auto", torch.device("cuda")).precision == "fp16"
    assert choose_precision("fp32", "cuda").precision == "fp32"
    with pytest.raises(PrecisionError, match="int8") as err:
        choose_precision("int8", "cuda")
    # device auto picks the GPU where there is one: the message names the way to int8 too
    assert "device 'cpu' (--device cpu" in str(err.value) and "'fp32'" in str(err.value)


@pytest.fixture
def gpus(monkeypatch):
    """Simulate CUDA devices: ``gpus((8, 0), (7, 5), current=0)`` (compute capabilities)."""
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # the machine's own kernels
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware, "_warned", set())

    def set_gpus(*capabilities: tuple[int, int], current: int = 0) -> None:
        _forget_gpus()
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(capabilities))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_device_capability",
                            lambda i=None: capabilities[current if i is None else i])  # fmt: skip
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda i: SimpleNamespace(major=capabilities[i][0]))  # fmt: skip

    yield set_gpus
    _forget_gpus()


def _forget_gpus() -> None:
    """Drop what detection cached about the (simulated) GPUs."""
    for fn in vars(hardware).values():
        if callable(getattr(fn, "cache_clear", None)) and "cuda" in getattr(fn, "__name__", ""):
            fn.cache_clear()


def test_each_gpu_is_asked_for_itself(gpus) -> None:
    gpus((8, 0), (7, 5))  # an A100 and a T4
    assert choose_precision("auto", "cuda:0").precision == "bf16"
    assert choose_precision("auto", "cuda:1").precision == "fp16"
    assert choose_precision("auto", torch.device("cuda", 1)).precision == "fp16"
    assert choose_precision("auto", "cuda").precision == "bf16"  # the current device
    assert hardware.cuda_bf16_supported(1) is False and hardware.cuda_bf16_supported(0) is True
    gpus((8, 0), (7, 5), current=1)
    assert choose_precision("auto", "cuda").precision == "fp16"
    with pytest.warns(PerformanceWarning, match="compute capability"):
        assert choose_precision("bf16", "cuda:1").precision == "bf16"
    gpus((7, 0))  # V100
    assert choose_precision("auto", "cuda").precision == "fp16"
    gpus()  # no usable GPU
    assert hardware.cuda_bf16_supported() is False


def test_each_rocm_gpu_is_asked_for_itself(gpus, monkeypatch) -> None:
    """On ROCm torch tells bf16 support of the current device only: each device is made current
    to be asked (an MI250 beside an older card)."""
    import contextlib

    gpus((9, 0), (9, 0))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    state = {"current": 0}

    @contextlib.contextmanager
    def device(index):
        before, state["current"] = state["current"], index
        try:
            yield
        finally:
            state["current"] = before

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["current"] == 0)
    assert hardware.cuda_bf16_supported(0) is True
    assert hardware.cuda_bf16_supported(1) is False
    assert choose_precision("auto", "cuda:1").precision == "fp16"
    assert choose_precision("auto", "cuda:0").precision == "bf16"
    assert state["current"] == 0 and hardware.cuda_bf16_supported(5) is False  # no such device


def test_int8_only_on_the_cpu(machine) -> None:
    machine(ZEN3)
    assert choose_precision("int8", "cpu").precision == "int8"
    for device in ("mps", "xpu:0", torch.device("mps")):
        with pytest.raises(PrecisionError, match=r"int8.*'(mps|xpu)'") as err:
            choose_precision("int8", device)
        assert err.value.param == "precision" and "'cpu'" in str(err.value)
    assert choose_precision("auto", "mps").precision == "fp32"  # other requests unchanged


def test_explicit_bf16_on_a_cpu_without_it_runs_and_warns_once(machine) -> None:
    machine(ZEN3)
    with pytest.warns(PerformanceWarning, match="emulated") as record:
        assert choose_precision("bf16").precision == "bf16"
    assert "AVX2" in str(record[0].message) and "auto" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_precision("bf16")  # once per process
    machine(ZEN4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_precision("bf16").precision == "bf16"  # native: no warning


def test_a_onednn_isa_cap_below_bf16_makes_auto_take_fp32(machine, monkeypatch) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off the bf16 kernels the CPU flags show (bf16 then
    ran 4x slower than fp32 on a Zen 5): auto takes fp32 and says why; an explicit bf16 warns
    once, naming the variable; caps that keep the bf16 kernels change nothing."""
    machine(SAPPHIRE)
    for value in ("AVX512_CORE_BF16", "avx512_core_amx", "ALL", "AVX10_1_512"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", value)
        assert choose_precision("auto").precision == "bf16", value
        assert hardware.cpu_bf16_native()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    choice = choose_precision("auto")
    assert choice.precision == "fp32" and choice.fused_fp32
    assert "ONEDNN_MAX_CPU_ISA=avx2" in choice.reason and not hardware.cpu_bf16_native()
    with pytest.warns(PerformanceWarning, match="ONEDNN_MAX_CPU_ISA=avx2.*emulated") as record:
        assert choose_precision("bf16").precision == "bf16"
    assert "unset ONEDNN_MAX_CPU_ISA" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_precision("bf16")  # once per process
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # the older name
    assert choose_precision("auto").precision == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # read first, as oneDNN does
    assert choose_precision("auto").precision == "bf16"
    machine(ZEN3)  # no native bf16 to keep off: the reason is the CPU's
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "AVX2 kernels" in choose_precision("auto").reason


def test_never_fp16_on_a_cpu_and_unknown_names_fail(machine) -> None:
    machine(ZEN4)
    with pytest.raises(PrecisionError, match="fp16") as err:
        choose_precision("fp16")
    assert err.value.param == "precision"
    with pytest.raises(PrecisionError, match="fp8"):
        choose_precision("fp8")


def test_environment_replaces_what_auto_picks(machine, monkeypatch) -> None:
    machine(ZEN4)
    monkeypatch.setenv(hardware.PRECISION_ENV, "fp32")
    choice = choose_precision("auto")
    assert choice.precision == "fp32" and hardware.PRECISION_ENV in choice.reason
    assert choose_precision("bf16").precision == "bf16"  # explicit requests are kept


def test_a_bad_environment_value_is_named_with_its_fix(machine, monkeypatch) -> None:
    machine(ZEN3)
    for value, why in [("bf61", "unknown precision"), ("fp16", "not supported on a CPU")]:
        monkeypatch.setenv(hardware.PRECISION_ENV, value)
        with pytest.raises(PrecisionError, match=why) as err:
            choose_precision("auto")
        message = str(err.value)
        assert f"{hardware.PRECISION_ENV}='{value}'" in message and "unset" in message
        assert getattr(err.value, "param", None) is None  # not the --precision flag's fault
    monkeypatch.setenv(hardware.PRECISION_ENV, "int8")
    with pytest.raises(PrecisionError, match=hardware.PRECISION_ENV):
        choose_precision("auto", "cuda")
    monkeypatch.setenv(hardware.PRECISION_ENV, "bf16")
    with pytest.warns(PerformanceWarning, match="emulated") as record:
        assert choose_precision("auto").precision == "bf16"
    assert f"unset {hardware.PRECISION_ENV}" in str(record[0].message)  # auto is what was asked
    assert record[0].filename == __file__  # points at the caller


def test_real_detection_is_consistent() -> None:
    info = hardware.cpu_info()
    assert info is hardware.cpu_info()  # cached
    assert info.capability and len(info.key()) == 16
    native = info.native_bf16
    assert native == (info.capability.startswith(("AVX512", "AMX"))
                      and bool({"avx512_bf16", "amx_bf16"} & info.flags))  # fmt: skip


GRAVITON = "processor\t: 0\nFeatures\t: fp asimd aes atomics cpuid asimdrdm lrcpc asimddp{}\n"


def test_arm_cpu_kinds_are_told_apart(monkeypatch) -> None:
    """Arm names no model in /proc/cpuinfo: its features tell Graviton 2 from 3 (kernel caches)."""
    import io

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(hardware.platform, "processor", lambda: "aarch64")
    infos = []
    for extra in ("", " sve i8mm bf16 svebf16"):  # Graviton 2, Graviton 3
        text = GRAVITON.format(extra)
        monkeypatch.setattr(hardware, "open", lambda *a, t=text, **k: io.StringIO(t), raising=False)
        hardware.cpu_info.cache_clear()
        infos.append(hardware.cpu_info())
    hardware.cpu_info.cache_clear()
    g2, g3 = infos
    assert g2.key() != g3.key()
    assert {"sve", "bf16", "i8mm"} <= g3.flags and "sve" not in g2.flags
    assert "sve" in g3.kind and not g3.native_bf16  # bf16 stays fp32's on Arm (auto picks fp32)


X86_CPUINFO = (
    "processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
    "model name\t: {name}\nflags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n\n"
    "processor\t: 1\nvendor_id\t: other\ncpu family\t: 1\nmodel\t\t: 1\nflags\t\t: fpu\n"
)


@pytest.mark.parametrize(
    ("vendor", "family", "model", "core"),
    [
        ("AuthenticAMD", 25, 1, "Zen 3"),  # Milan
        ("AuthenticAMD", 25, 17, "Zen 4"),  # Genoa
        ("AuthenticAMD", 25, 160, "Zen 4"),  # Bergamo
        ("AuthenticAMD", 26, 2, "Zen 5"),  # Turin
        ("AuthenticAMD", 23, 49, "Zen 2"),  # Rome
        ("GenuineIntel", 6, 143, ""),  # Sapphire Rapids: numbers only
    ],
)
def test_x86_cpu_kinds_are_told_apart_by_family_and_model(monkeypatch, vendor, family, model, core):
    """VMs name AMD server CPUs of every generation "AMD EPYC" with the same AVX-512 flags: the
    family and model tell a Zen 4 from a Zen 5 (twice the int8 throughput) in reports and caches."""
    import io

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    text = X86_CPUINFO.format(vendor=vendor, family=family, model=model, name="AMD EPYC")
    monkeypatch.setattr(hardware, "open", lambda *a, **k: io.StringIO(text), raising=False)
    hardware.cpu_info.cache_clear()
    try:
        info = hardware.cpu_info()
    finally:
        hardware.cpu_info.cache_clear()
    # the first processor's facts, not the last one's
    assert (info.vendor, info.family, info.model_number) == (vendor, family, model)
    assert info.core == core and info.to_dict()["core"] == core
    numbers = f"(family {family}, model {model})"
    assert info.kind.startswith(f"AMD EPYC, {core} {numbers}" if core else f"AMD EPYC {numbers}")
    assert "avx512_bf16" in info.kind and info.native_bf16
    other = hardware.CPUInfo(info.model, info.capability, info.flags, info.torch_version,
                             vendor, family, model + 1)  # fmt: skip
    assert other.key() != info.key()  # kernel choices are measured per family and model


def test_amd_core_generations_at_the_edges_of_their_model_ranges() -> None:
    # models of no known part are not named
    models = (0x0F, 0x10, 0x1F, 0x20, 0x5F, 0x60, 0x7F, 0x80, 0xA0, 0xB0)
    assert [hardware.amd_core(25, m) for m in models] == [
        "Zen 3", "Zen 4", "Zen 4", "Zen 3", "Zen 3", "Zen 4", "Zen 4", "", "Zen 4", ""
    ]  # fmt: skip
    assert [hardware.amd_core(23, m) for m in (0x01, 0x2F, 0x30, 0x71)] == [
        "Zen/Zen+", "Zen/Zen+", "Zen 2", "Zen 2"
    ]  # fmt: skip
    assert hardware.amd_core(26, 0x7F) == "Zen 5" and hardware.amd_core(26, 0x80) == ""
    assert hardware.amd_core(21, 2) == ""  # Bulldozer-era family: not named
    info = hardware.CPUInfo("Intel Xeon", "AVX512", frozenset(), "2", "GenuineIntel", 25, 17)
    assert info.core == ""  # the numbers are AMD's only for AMD


def test_the_chosen_precision_is_in_descriptions_cache_keys_and_manifests(machine, tmp_path):
    from msclip.index.build import build_index
    from msclip.index.store import IndexStore
    from msclip.text_cache import TextEmbeddingCache

    models = {}
    for cpu in (ZEN4, ZEN3):
        machine(cpu)
        torch.manual_seed(0)
        models[cpu.capability] = msclip.create_model("msclip-tiny", precision="auto")
    fast, slow = models["AVX512"], models["AVX2"]
    assert fast.precision == "bf16" and fast.dtype == torch.bfloat16
    assert slow.precision == "fp32" and slow.dtype == torch.float32
    d_fast, d_slow = fast.describe(), slow.describe()
    assert d_fast["precision"] == "bf16" and "natively" in d_fast["precision_reason"]
    assert d_slow["precision"] == "fp32" and "no native bf16" in d_slow["precision_reason"]
    assert d_fast["fingerprint"] != d_slow["fingerprint"]  # bf16 embeddings are other numbers
    assert fast.fingerprint(precision=False) == slow.fingerprint(precision=False)
    cache_fast = TextEmbeddingCache.for_model(fast, tmp_path / "text")
    cache_slow = TextEmbeddingCache.for_model(slow, tmp_path / "text")
    assert cache_fast.dir != cache_slow.dir
    # the index manifest records it, and a rerun on the other machine kind is refused
    tif = tmp_path / "t.tif"
    msclip.write_geotiff(tif, np.random.default_rng(0).integers(1, 5000, (10, 32, 32), "uint16"))
    build_index(tmp_path / "i.index", fast, fast.preprocess(), [str(tif)])
    model_entry = IndexStore.open(tmp_path / "i.index").model_info
    assert model_entry["precision"] == "bf16" and model_entry["precision_reason"]
    from msclip.errors import IndexMismatchError

    with pytest.raises(IndexMismatchError, match="precision"):
        build_index(tmp_path / "i.index", slow, slow.preprocess(), [str(tif)])
    # the same precision asked for explicitly (another reason) is the same model
    machine(ZEN3)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # emulated bf16 on the simulated Zen 3: its warning is
        warnings.simplefilter("ignore", PerformanceWarning)  # tested on its own above
        again = msclip.create_model("msclip-tiny", precision="bf16")
    assert again.precision_reason != fast.precision_reason
    report = build_index(tmp_path / "i.index", again, again.preprocess(), [str(tif)])
    assert report.skipped_done == 1


def test_cli_prints_the_precision_and_records_carry_it(machine, tmp_path, capsys) -> None:
    from support import mini_benchmark as mb

    from msclip.cli.evaluation import main

    machine(ZEN4)
    root = tmp_path / "data"
    mb.meterml(root)
    argv = ["--model-name", "msclip-tiny", "--no-pretrained", "--datasets", "METERML_MS",
            "--dataset-dir", str(root), "--save-path", str(tmp_path / "res"), "--templates",
            "short", "--no-text-cache", "--batch-size", "4"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "precision: bf16 on cpu (auto: the CPU computes bf16 natively" in err
    rec_path = next(Path(tmp_path / "res").rglob("msclip-tiny-random__*.json"))  # auto: no suffix
    rec = json.loads(rec_path.read_text())
    assert rec["model"]["precision"] == "bf16"
    assert "natively" in rec["model"]["precision_reason"]


def test_training_starts_from_float32_weights_whatever_auto_picks(machine, tmp_path) -> None:
    from msclip.train.config import TrainConfig
    from msclip.train.trainer import build_model

    machine(ZEN4)  # auto would give bf16 weights here
    assert msclip.create_model("msclip-tiny").dtype == torch.bfloat16
    model = build_model(TrainConfig(model="msclip-tiny", init="random"))
    assert model.dtype == torch.float32 and model.precision == "fp32"


def test_auto_fp32_runs_the_image_tower_on_the_fused_kernels(machine, monkeypatch) -> None:
    """``auto`` on a CPU without native bf16: fp32 with the image tower (blocks and patch
    projection) on the fused kernels, embeddings within float32 rounding of OpenCLIP's
    arithmetic, which an explicit fp32 (or ``MSCLIP_PRECISION=fp32``) keeps; the text tower is
    untouched, so text caches stay valid."""
    from msclip import architecture

    machine(ZEN3)
    assert choose_precision("auto").fused_fp32 and "fused" in choose_precision("auto").summary()
    assert not choose_precision("fp32").fused_fp32
    machine(ZEN4)
    assert not choose_precision("auto").fused_fp32  # bf16 there
    machine(ZEN3)
    monkeypatch.setenv(hardware.PRECISION_ENV, "fp32")
    assert not choose_precision("auto").fused_fp32
    monkeypatch.delenv(hardware.PRECISION_ENV)

    def build(precision):
        torch.manual_seed(0)
        return msclip.create_model("msclip-tiny", precision=precision)

    def flags(module):
        return {m.fused_fp32 for m in module.modules() if hasattr(m, "fused_fp32")}

    auto, exact = build("auto"), build("fp32")
    assert auto.precision == exact.precision == "fp32"
    assert auto.fingerprint() == exact.fingerprint()  # the same model, the same text cache
    assert flags(exact.clip) == {False} and "fused" not in exact.precision_reason
    assert flags(auto.clip.transformer) == {False}  # the text tower
    if not architecture._fused_mlp_works(torch.float32):
        assert flags(auto.clip.visual) == {False}
        pytest.skip("no fused oneDNN kernel in this torch build or on this CPU")
    assert flags(auto.clip.visual) == {True} and "fused fp32" in auto.precision_reason
    x = torch.randn(3, len(auto.bands), 32, 32)
    tokens = msclip.get_tokenizer(auto)(["a forest", "a lake"])
    with torch.inference_mode():
        a, b = auto.encode_image(x), exact.encode_image(x)
        assert torch.equal(auto.encode_text(tokens), exact.encode_text(tokens))
    assert not torch.equal(a, b)  # the fused kernels ran
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the same arithmetic without inference mode
        assert torch.equal(auto.encode_image(x), a)
    grad = auto.encode_image(x)  # with gradients: OpenCLIP's arithmetic
    assert torch.allclose(grad, b, atol=1e-6) and grad.requires_grad
    monkeypatch.setenv(architecture.FUSED_ENV, "0")  # the fused path switched off
    off = build("auto")
    assert flags(off.clip) == {False} and "fused" not in off.precision_reason
    monkeypatch.delenv(architecture.FUSED_ENV)
    monkeypatch.setenv(architecture.IMPL_ENV, "open_clip")  # OpenCLIP's blocks: no fused path
    assert "fused" not in build("auto").precision_reason


@pytest.fixture
def fp32_fused_tiny(monkeypatch):
    """A tiny model whose image tower takes the fused float32 path, its OpenCLIP-arithmetic
    twin, an input, and the product choice reset (restored after the test)."""
    from msclip import architecture

    if not architecture._fused_mlp_works(torch.float32):
        pytest.skip("no fused oneDNN kernel in this torch build or on this CPU")
    monkeypatch.setattr(architecture, "_FP32_GEMM", None)

    def build():
        torch.manual_seed(0)
        return msclip.create_model("msclip-tiny", precision="fp32")

    fused, plain = build(), build()
    architecture.use_fused_fp32(fused.clip.visual)
    return fused, plain, torch.randn(3, len(fused.bands), 32, 32)


def _packed_weights(model) -> int:
    from msclip import architecture

    ids = {id(p) for p in model.clip.visual.parameters()}
    return sum(key in ids for key in architecture._PACKED)


@pytest.mark.parametrize("kernel", ["torch", "onednn"])
def test_fused_fp32_products_on_either_kernel_agree_with_openclip_arithmetic(
    fp32_fused_tiny, monkeypatch, kernel
) -> None:
    """``MSCLIP_FP32_GEMM`` fixes the kernel of the fused path's float32 products: either gives
    OpenCLIP's embeddings to float32 rounding; only oneDNN's keeps packed copies of weights."""
    from msclip import architecture

    fused, plain, x = fp32_fused_tiny
    monkeypatch.setenv(architecture.FP32_GEMM_ENV, kernel)
    with torch.inference_mode():
        a, b = fused.encode_image(x), plain.encode_image(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert (_packed_weights(fused) > 0) == (kernel == "onednn")
    assert architecture._FP32_GEMM is None  # fixed by the setting: nothing measured


@pytest.mark.parametrize("faster", ["torch", "onednn"])
def test_fused_fp32_product_kernel_is_measured_once_and_the_faster_kept(
    fp32_fused_tiny, monkeypatch, faster
) -> None:
    """By default the first float32 product is timed on both kernels and the faster one runs
    every product of the process; a torch choice leaves no packed copy behind."""
    from msclip import architecture

    fused, plain, x = fp32_fused_tiny
    monkeypatch.delenv(architecture.FP32_GEMM_ENV, raising=False)
    calls = {"torch": 0, "onednn": 0}
    real_linear, real_op = F.linear, torch.ops.mkldnn._linear_pointwise
    clock = [0.0]

    def slow(name):  # the slower kernel's calls advance the measured clock by 1 s
        calls[name] += 1
        if name != faster:
            clock[0] += 1.0

    def linear(*args, **kwargs):
        slow("torch")
        return real_linear(*args, **kwargs)

    def onednn(*args, **kwargs):
        slow("onednn")
        return real_op(*args, **kwargs)

    monkeypatch.setattr(architecture.F, "linear", linear)
    monkeypatch.setattr(architecture.torch.ops.mkldnn, "_linear_pointwise", onednn)
    monkeypatch.setattr(architecture.time, "perf_counter", lambda: clock[0])
    with torch.inference_mode():
        a = fused.encode_image(x)
        assert faster == architecture._FP32_GEMM
        assert min(calls.values()) >= 4  # both measured: one untimed round, three timed
        first = dict(calls)
        b = fused.encode_image(x)
    assert faster == architecture._FP32_GEMM  # kept, not measured again
    slower = "onednn" if faster == "torch" else "torch"
    # the slower kernel did not run again in the blocks (the patch projection is F.linear)
    assert calls[slower] - first[slower] == (1 if slower == "torch" else 0)
    assert calls[faster] >= first[faster] + 4 * len(fused.clip.visual.transformer.resblocks)
    with torch.inference_mode():
        ref = plain.encode_image(x)
    assert torch.equal(a, b) and torch.allclose(a, ref, atol=1e-5, rtol=1e-4)
    assert (_packed_weights(fused) > 0) == (faster == "onednn")


def test_the_measured_product_kernel_is_kept_for_the_next_process(fp32_fused_tiny, monkeypatch):
    """The two kernels round differently: a second process on the machine takes the first one's
    choice from msclip's cache (not a new measurement, which may pick the other in another
    period), so a repeated run gives the same embeddings bit for bit; a damaged or unwritable
    cache only means a new measurement."""
    from msclip import architecture
    from msclip.cache import cache_root

    fused, _, x = fp32_fused_tiny
    monkeypatch.delenv(architecture.FP32_GEMM_ENV, raising=False)
    measured: list[str] = []
    real = architecture._measure_fp32_gemm

    def measure(*args):
        measured.append(real(*args))
        return measured[-1]

    monkeypatch.setattr(architecture, "_measure_fp32_gemm", measure)
    with torch.inference_mode():
        first = fused.encode_image(x)
    files = list((cache_root() / "kernels").glob("fp32-gemm-*.json"))
    assert len(files) == 1  # the first product's size: one measurement per process
    kept = files[0]
    facts = json.loads(kept.read_text())
    assert kept == architecture._fp32_gemm_file(*facts["shape"][1:])
    assert kept.name.endswith(f"-{facts['shape'][1]}x{facts['shape'][2]}.json")
    assert len(measured) == 1 and facts["kernel"] == measured[0] == architecture._FP32_GEMM
    assert facts["cpu"]["key"] in kept.name and set(facts) >= {"onednn_ms", "torch_ms", "shape"}
    other = "torch" if measured[0] == "onednn" else "onednn"
    kept.write_text(json.dumps({**facts, "kernel": other}))  # as if another process chose it
    monkeypatch.setattr(architecture, "_FP32_GEMM", None)  # a new process
    with torch.inference_mode():
        fused.encode_image(x)
    assert len(measured) == 1 and other == architecture._FP32_GEMM
    kept.write_text(json.dumps({**facts, "kernel": measured[0]}))
    monkeypatch.setattr(architecture, "_FP32_GEMM", None)
    with torch.inference_mode():
        assert torch.equal(fused.encode_image(x), first)
    for damaged in ("{not json", json.dumps(["onednn"]), json.dumps({"kernel": "cuda"})):
        kept.write_text(damaged)
        monkeypatch.setattr(architecture, "_FP32_GEMM", None)
        with torch.inference_mode():
            fused.encode_image(x)
        assert architecture._FP32_GEMM in ("onednn", "torch")
    assert len(measured) == 4
    kept.unlink()
    kept.parent.chmod(0o500)  # unwritable: measured, used, not kept
    try:
        monkeypatch.setattr(architecture, "_FP32_GEMM", None)
        with torch.inference_mode():
            fused.encode_image(x)
        assert len(measured) == 5 and (os.geteuid() == 0 or not kept.exists())
    finally:
        kept.parent.chmod(0o700)


def test_weights_cast_to_fp16_on_a_cpu_warn_once() -> None:
    """create_model refuses fp16 on a CPU; a user's .half() gets it, and one warning with the
    fix on the first encoding (not on the cast: .half().to('cuda') is a GPU model)."""
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny").eval().half()
    images = torch.zeros(2, len(model.bands), 32, 32)
    tokens = msclip.get_tokenizer(model)(["a river"])
    with pytest.warns(PerformanceWarning, match=r"fp16 on a CPU .* precision='auto', 'bf16'"):
        model.encode_image(images.half())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        model.encode_text(tokens)  # said once per model
        msclip.create_model("msclip-tiny").eval().encode_image(images)  # fp32: nothing


def test_weights_cast_to_bf16_on_a_cpu_that_emulates_it_warn_once(machine) -> None:
    """create_model warns for an explicit bf16 on a CPU without native bf16; a user's
    .to(torch.bfloat16) (or a bf16 model moved from a GPU) gets the same warning, pointing at
    the caller, on the first encoding, once per process; none where bf16 is native."""
    machine(ZEN3)
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32").eval().to(torch.bfloat16)
    images = torch.zeros(2, len(model.bands), 32, 32)
    tokens = msclip.get_tokenizer(model)(["a river"])
    with pytest.warns(PerformanceWarning, match=r"bf16 on a CPU without native bf16") as record:
        model.encode_image(images)
    assert "precision='auto' or 'fp32'" in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        model.encode_text(tokens)  # once per process
        msclip.create_model("msclip-tiny", precision="bf16")  # already said
    machine(ZEN4)  # native: nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        model.encode_image(images)
