"""Every Triton kernel compiles for a Hopper GPU (sm_90) with Triton's own compiler and ptxas.

No GPU is needed to compile; this catches what the interpreter cannot (shapes that are not
compile-time constants, unsupported types in ``tl.dot``, layouts), with the block sizes the
launchers use for ``D = 512``. The fp32 IEEE gradient (of the CLIP kernel; the SigLIP kernel
forms the same products and is compiled in bf16) is compiled for a Turing GPU (sm_75) instead,
where its shared memory decides the launch's block size. About 30 s of compilation on 2
cores, hence ``slow``; the compiled files go to a temporary Triton cache.
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
    # fp32 IEEE gradients (the same products in both gradient kernels): compiled for sm_75 by
    # test_fp32_gradient_launch_fits_a_turing_gpu
    "clip_grad_tf32": (_LOSS, "_clip_grad", "fp32", {"PRECISION": "tf32", "OUT": 1}),
    "clip_grad_bf16": (_LOSS, "_clip_grad", "bf16", {"PRECISION": "ieee", "OUT": 1}),
    "siglip_stats": (_LOSS, "_siglip_stats", "fp32", {"PRECISION": "ieee"}),
    "siglip_grad_bf16": (_LOSS, "_siglip_grad", "bf16", {"PRECISION": "ieee", "OUT": 1}),
    "topk_fp16": ("topk_kernels", "_topk_scan", "fp16", {"K": 64}),
    "topk_int8": ("topk_kernels", "_topk_scan", "fp16", {"K": 32, "WIDEN": True}),
}


def _signature(fn, pointer) -> dict[str, str]:
    """Triton's signature of a kernel: ``constexpr`` for its compile-time parameters,
    ``pointer(name)`` for the others where that gives a pointer type, ``i32`` elsewhere."""
    return {p.name: "constexpr" if p.is_constexpr else pointer(p.name) or "i32" for p in fn.params}


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
    signature = _signature(
        fn, lambda name: (f"*{dtype}" if name in ("q_ptr", "k_ptr", "x_ptr") else "*fp32")
        if name.endswith("_ptr") else None,
    )  # fmt: skip
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


_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "i8", "int64": "i64"}


class _CompileFor:
    """Stands in for a loss kernel: compiles each launch for one GPU generation and refuses it,
    as Triton's launcher would, when the compiled kernel needs more shared memory than that GPU
    gives a block."""

    def __init__(self, fn, capability: int, shared_limit: int) -> None:
        self.fn, self.capability, self.limit = fn, capability, shared_limit
        self.__name__ = f"{fn.__name__}_sm{capability}"
        self.shared: dict[int, int] = {}

    def __getitem__(self, grid):
        from triton.runtime.errors import OutOfResources

        def launch(*args, **kw):
            values = dict(zip([p.name for p in self.fn.params if not p.is_constexpr], args))
            signature = _signature(
                self.fn, lambda name: "*" + _TYPES[str(values[name].dtype).split(".")[-1]]
                if hasattr(values[name], "dtype") else None,
            )  # fmt: skip
            consts = {k: v for k, v in kw.items() if k != "num_warps"}
            compiled = triton.compile(
                ASTSource(fn=self.fn, signature=signature, constexprs=consts),
                target=GPUTarget("cuda", self.capability, 32),
                options={"num_warps": kw.get("num_warps", 4)},
            )
            self.shared[kw["BLOCK_DO"]] = compiled.metadata.shared
            if compiled.metadata.shared > self.limit:
                raise OutOfResources(compiled.metadata.shared, self.limit, "shared memory")

        return launch


def test_fp32_gradient_launch_fits_a_turing_gpu(monkeypatch) -> None:
    """A Turing GPU (sm_75: T4, RTX 20xx) gives a block 64 KB of shared memory. The fp32 gradient
    kernel at the default output slice needs more there; the launch settles on a slice whose
    compiled kernel fits, instead of failing in the first backward pass."""
    import torch

    ck = importlib.import_module("msclip.cuda.contrastive_kernels")
    if ck.INTERPRETED:
        pytest.skip("kernels decorated for the interpreter do not compile")
    turing = _CompileFor(ck._clip_grad, 75, 64 * 1024)
    monkeypatch.setattr(ck, "_clip_grad", turing)
    monkeypatch.setattr(ck, "_FITTED", {})
    x, y = torch.randn(40, 512), torch.randn(40, 512)
    lse = torch.zeros(40)
    ck.TritonBackend(512).clip_backward(x, y, torch.tensor(1.0), (0, 40), lse, lse, (True, False))
    assert sorted(turing.shared) == [128, 256]
    assert turing.shared[256] > 64 * 1024 >= turing.shared[128]
