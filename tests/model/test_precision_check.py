"""The bf16 check of a CPU (msclip.precision_check): a replica of the towers in bf16 against
float32, which ``create_model`` consults before it runs a model in bf16 on a CPU; a CPU whose
bf16 kernels give wrong embeddings gets fp32 from ``auto`` and an error for an explicit bf16."""

from __future__ import annotations

import json

import pytest
import torch
from support.faults import wrong_half_precision_conv2d
from test_precision import SAPPHIRE, ZEN3, ZEN4, machine  # noqa: F401  (the fixture)

import msclip
from msclip import architecture, precision_check
from msclip.errors import PrecisionError, PrecisionWarning
from msclip.factory import _config_for, get_model_entry


def _config(name: str = "msclip-tiny"):
    return _config_for(get_model_entry(name), None)


@pytest.fixture
def counted(monkeypatch):
    """Replace the measurement by fixed cosines, counting the calls."""
    calls = []

    def set_cosines(image: float, text: float = 0.99995) -> list:
        def fake(config):
            calls.append(config.name)
            return {"image": image, "text": text}

        monkeypatch.setattr(precision_check, "_measure", fake)
        return calls

    return set_cosines


def test_the_replica_agrees_on_this_cpu_and_catches_a_wrong_kernel(monkeypatch) -> None:
    shapes = []
    recorder = precision_check._recorder

    def recording(seen):
        hook = recorder(seen)
        return lambda m, i, o: (shapes.append(tuple(o.shape)), hook(m, i, o))[1]

    monkeypatch.setattr(precision_check, "_recorder", recording)
    got = precision_check._measure(_config("msclip-demo"))
    assert min(got.values()) > 0.999  # rounding alone
    # every token compared: the image's 65, the text's whole context (32) and a trimmed prompt
    assert shapes == [(1, 65, 128)] * 2 + [(1, 32, 64)] * 2 + [(1, 13, 64)] * 2
    original = architecture._fused_linear

    def wrong(x, weight, bias, pack):  # a bf16 product kernel that mixes up its outputs
        out = original(x, weight, bias, pack)
        return out + 0.5 * out.roll(1, dims=-1) if out.dtype == torch.bfloat16 else out

    monkeypatch.setattr(architecture, "_fused_linear", wrong)
    bad = precision_check._measure(_config("msclip-demo"))
    assert bad["image"] < precision_check.MIN_COSINE


def test_a_bf16_kernel_that_gives_nan_disagrees(monkeypatch) -> None:
    """NaN compares false with everything, so a least cosine taken with ``min`` dropped it: a
    bf16 product kernel returning NaN passed the check with cosine 1.0."""
    original = architecture._fused_linear

    def overflowing(x, weight, bias, pack):
        out = original(x, weight, bias, pack)
        return out * float("nan") if out.dtype == torch.bfloat16 else out

    monkeypatch.setattr(architecture, "_fused_linear", overflowing)
    bad = precision_check._measure(_config("msclip-demo"))
    assert bad["image"] < precision_check.MIN_COSINE and bad["text"] < precision_check.MIN_COSINE


def test_auto_takes_fp32_where_bf16_disagrees_and_says_why(machine, counted) -> None:  # noqa: F811
    machine(SAPPHIRE)
    counted(0.71)
    with pytest.warns(PrecisionWarning, match=r"disagrees with float32.*0\.710.*image tower"):
        model = msclip.create_model("msclip-tiny", precision="auto")
    assert model.dtype == torch.float32 and model.precision == "fp32"
    assert "disagrees with float32" in model.precision_reason
    # an explicit bf16 (or MSCLIP_PRECISION=bf16) would compute wrong embeddings: refused, with
    # the fix, and the AMX hint on a CPU with AMX
    with pytest.raises(PrecisionError, match=r"use precision 'fp32'.*ONEDNN_MAX_CPU_ISA"):
        msclip.create_model("msclip-tiny", precision="bf16")


def test_the_environment_bf16_is_refused_too(machine, counted, monkeypatch) -> None:  # noqa: F811
    machine(ZEN4)
    counted(0.5)
    monkeypatch.setenv("MSCLIP_PRECISION", "bf16")
    with pytest.raises(PrecisionError, match="disagrees") as err:
        msclip.create_model("msclip-tiny", precision="auto")
    assert "ONEDNN_MAX_CPU_ISA" not in str(err.value)  # no AMX on this CPU


def test_agreeing_bf16_is_kept_and_the_verdict_is_measured_once(machine, counted, monkeypatch):  # noqa: F811
    machine(ZEN4)
    calls = counted(0.9999)
    for _ in range(2):
        model = msclip.create_model("msclip-tiny", precision="auto")
        assert model.dtype == torch.bfloat16
    assert calls == ["msclip-tiny"]  # the second model read the verdict from the cache
    files = list((msclip.cache.cache_root() / "kernels").glob("bf16-check-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["image"] == 0.9999
    # another architecture is measured for itself; fp32 never
    msclip.create_model("msclip-demo", pretrained=False, precision="auto")
    msclip.create_model("msclip-tiny", precision="fp32")
    assert calls == ["msclip-tiny", "msclip-demo"]
    # MSCLIP_BF16_CHECK=0 trusts the flags
    for f in files:
        f.unlink()
    monkeypatch.setenv(precision_check.BF16_CHECK_ENV, "0")
    assert msclip.create_model("msclip-tiny", precision="bf16").dtype == torch.bfloat16
    assert calls == ["msclip-tiny", "msclip-demo"]


def test_a_damaged_verdict_file_is_measured_again(machine, counted) -> None:  # noqa: F811
    machine(ZEN4)
    calls = counted(0.9999)
    path = precision_check._cache_file(_config().arch_cfg, len(_config().bands))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert msclip.create_model("msclip-tiny", precision="auto").dtype == torch.bfloat16
    assert calls == ["msclip-tiny"] and json.loads(path.read_text())["text"] == 0.99995


def test_a_verdict_file_holding_nan_is_measured_again(machine, counted) -> None:  # noqa: F811
    machine(ZEN4)
    calls = counted(0.5)
    path = precision_check._cache_file(_config().arch_cfg, len(_config().bands))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"image": 0.9999, "text": NaN}')  # json reads NaN; min() skipped it
    with pytest.warns(PrecisionWarning, match="disagrees"):
        assert msclip.create_model("msclip-tiny", precision="auto").dtype == torch.float32
    assert calls == ["msclip-tiny"]


def test_emulated_bf16_is_not_checked(machine, counted) -> None:  # noqa: F811
    """A CPU without native bf16 runs no native kernels to check (and the replica would take
    minutes there): an explicit bf16 is warned about as slow, not measured."""
    machine(ZEN3)
    calls = counted(0.5)
    with pytest.warns(msclip.errors.PerformanceWarning, match="emulated"):
        model = msclip.create_model("msclip-tiny", precision="bf16")
    assert model.dtype == torch.bfloat16 and calls == []


def test_a_wrong_bf16_convolution_no_longer_reaches_the_towers(monkeypatch) -> None:
    """On an Intel Xeon with AMX, oneDNN's bf16 convolution was the one wrong op of the image
    tower (``benchmarks/cpu_bf16.py``): the replica gave cosine -0.14 and ``auto`` fell back to
    fp32. msclip runs the bf16 patch projection as a matrix product, so such a convolution no
    longer reaches the embeddings: the replica agrees, and the trained demo model's bf16
    embeddings equal its float32 ones to bf16's rounding."""
    import torch.nn.functional as F

    wrong_half_precision_conv2d(monkeypatch)
    got = precision_check._measure(_config("msclip-demo"))
    assert min(got.values()) > 0.999
    x = torch.randn(3, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv(precision_check.BF16_CHECK_ENV, "0")
    models = [msclip.create_model("msclip-demo", pretrained=True, precision=p)
              for p in ("fp32", "bf16")]  # fmt: skip
    with torch.inference_mode():
        a, b = (m.encode_image(x.to(m.dtype)).float() for m in models)
    assert F.cosine_similarity(a, b).min() > 0.999


def test_without_a_home_folder_the_caches_last_for_the_process(machine, counted, monkeypatch):  # noqa: F811
    """HOME unset and a user id without a password entry (a container run under an arbitrary
    id): pathlib cannot expand '~', and create_model failed with 'Could not determine home
    directory.' on a CPU with native bf16; now the caches live in a private temporary folder,
    with one warning naming MSCLIP_CACHE_DIR."""
    import pwd

    from msclip import cache

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    machine(ZEN4)
    calls = counted(0.9999)
    cache._process_root.cache_clear()
    try:
        with pytest.warns(msclip.errors.MSCLIPWarning, match="no home folder.*MSCLIP_CACHE_DIR"):
            assert msclip.create_model("msclip-tiny", precision="auto").dtype == torch.bfloat16
        root = cache.cache_root()
        assert root.is_dir() and (root.stat().st_mode & 0o077) == 0  # this user's alone
        assert list((root / "kernels").glob("bf16-check-*.json"))
        msclip.create_model("msclip-tiny", precision="auto")  # the verdict is read, no warning
        assert calls == ["msclip-tiny"]
    finally:
        import shutil

        shutil.rmtree(cache._process_root("~/.cache/msclip"), ignore_errors=True)
        cache._process_root.cache_clear()


def test_the_verdict_is_kept_per_fused_cpu_setting(machine, counted, monkeypatch) -> None:  # noqa: F811
    """The replica runs the code the model will run, and MSCLIP_FUSED_CPU=0 takes bf16 off the
    fused path (torch's own linear and attention kernels): a verdict measured on the fused path
    was read for the unfused one, whose kernels it never ran."""
    machine(ZEN4)
    calls = counted(0.9999)
    msclip.create_model("msclip-tiny", precision="auto")
    monkeypatch.setenv(architecture.FUSED_ENV, "0")
    msclip.create_model("msclip-tiny", precision="auto")
    assert calls == ["msclip-tiny", "msclip-tiny"]
    monkeypatch.setenv(architecture.FUSED_ENV, "all")  # bf16 on the fused path, as by default
    msclip.create_model("msclip-tiny", precision="auto")
    assert calls == ["msclip-tiny", "msclip-tiny"]
