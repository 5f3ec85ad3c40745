"""Every Triton kernel compiles for a Hopper GPU (sm_90) with Triton's own compiler and ptxas.

No GPU is needed to compile; this catches what the interpreter cannot (shapes that are not
compile-time constants, unsupported types in ``tl.dot``, layouts), with the block sizes the
launchers use for ``D = 512``. About 30 s of compilation on 2 cores, hence ``slow``; the
compiled files go to a temporary Triton cache.
"""

from __future__ import annotations

import importlib

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton_cache")))
        yield


def _loss_blocks() -> dict[str, int]:
    from msclip.cuda.contrastive_kernels import TritonBackend

    b = TritonBackend(512)
    return {"BLOCK_M": b.block_m, "BLOCK_N": b.block_n, "BLOCK_D": b.block_d}


_LOSS = "contrastive_kernels"
CASES = {
    "clip_stats": (_LOSS, "_clip_stats", "fp32", {"PRECISION": "ieee"}),
    "clip_grad": (_LOSS, "_clip_grad", "fp32", {"PRECISION": "ieee", "OUT": 1}),
    "clip_grad_tf32": (_LOSS, "_clip_grad", "fp32", {"PRECISION": "tf32", "OUT": 1}),
    "clip_grad_bf16": (_LOSS, "_clip_grad", "bf16", {"PRECISION": "ieee", "OUT": 1}),
    "siglip_stats": (_LOSS, "_siglip_stats", "fp32", {"PRECISION": "ieee"}),
    "siglip_grad": (_LOSS, "_siglip_grad", "fp32", {"PRECISION": "ieee", "OUT": 1}),
    "topk_fp16": ("topk_kernels", "_topk_scan", "fp16", {"K": 64}),
    "topk_int8": ("topk_kernels", "_topk_scan", "fp16", {"K": 32, "WIDEN": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_compiles_for_sm90(case: str) -> None:
    module_name, kernel, dtype, extra = CASES[case]
    module = importlib.import_module(f"msclip.cuda.{module_name}")
    if module.INTERPRETED:
        pytest.skip("kernels decorated for the interpreter do not compile")
    fn = getattr(module, kernel)
    if module_name == "contrastive_kernels":
        consts = {**_loss_blocks(), "DOT_F32": False, "PRECISION": extra["PRECISION"]}
        if "OUT" in extra:
            consts["BLOCK_DO"] = 256
    else:
        k = extra["K"]
        consts = {"BLOCK_Q": 16, "K": k, "BLOCK_D": 64, "LOG_K": k.bit_length() - 1,
                  "WIDEN": extra.get("WIDEN", False), "DOT_F32": False}  # fmt: skip
    signature = {}
    for p in fn.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            data = p.name in ("q_ptr", "k_ptr", "x_ptr")
            signature[p.name] = f"*{dtype}" if data else "*fp32"
        else:
            signature[p.name] = "i32"
    if kernel == "_topk_scan":
        signature["out_ptr"] = "*i64"
        if extra.get("WIDEN"):
            signature["x_ptr"] = "*i8"
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in consts]
    assert not missing, f"give the test a value for the new constexpr {missing}"
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=consts), target=GPUTarget("cuda", 90, 32)
    )
    assert len(compiled.asm["cubin"]) > 1000
