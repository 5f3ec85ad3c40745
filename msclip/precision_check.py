"""Whether bf16 on this CPU computes what float32 computes, for a model's architecture.

A CPU whose flags show native bf16 may still give wrong bf16 results for some shapes. Measured
on an Intel Xeon with AMX (torch 2.11, oneDNN 3.10.2, 16 threads and 1): the bf16 embeddings of
the 4-block ``msclip-demo`` image tower (width 128, heads of 32, 8-pixel patches, 65 tokens) had
cosine 0.71 to float32, with the weights cast and under ``torch.autocast`` alike, while every
linear, batched product, attention, layer norm and GELU of ViT-B/16's shapes agreed to bf16's
rounding (relative error 1.7e-3); with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` (oneDNN without
its AMX kernels) the same tower gave 0.99999. Measured again on such a Xeon (torch 2.11, 16
threads, ``benchmarks/cpu_bf16.py``): of all the tower's ops only oneDNN's bf16 convolution of the
patch projection was wrong (relative error 1.1-1.2 against bf16's 1.7e-3), so msclip runs that
projection in half precision on a CPU as one matrix product
(:func:`msclip.spectral.patch_embed._patches_as_gemm`). A flag check cannot see such a fault,
so before a model runs in native bf16 on a CPU, :func:`cpu_bf16_agreement` runs a replica of its
towers in float32 and in bf16 on one random image and two random texts (the whole context, and a
13-token prompt with its padding trimmed, as zero-shot runs prompts): the same widths, heads,
patch, bands, image size and context length, through the same code (msclip's fused CPU path
included), with two image blocks (the last on the class token alone, as in inference) and one
text block, seeded random weights, and zero class and position embeddings (a random tower's own
would drown what the input adds). bf16 is used only where the embeddings and every token out of
each tower's transformer agree: cosine at least :data:`MIN_COSINE` (bf16 rounding alone gives
0.999 or more). A kernel that failed only for some weight values would escape a replica of random
weights.

The verdict is kept in msclip's cache (``kernels/``) per CPU kind, torch build, thread count,
``ONEDNN_MAX_CPU_ISA``, fused CPU path on or off (``MSCLIP_FUSED_CPU``) and architecture, so
it is measured once per machine (0.06 s for ``msclip-demo``, 0.45 s for a ViT-B/16 with its text
tower on a 2-core Zen 4).
``MSCLIP_BF16_CHECK=0`` skips it. Emulated bf16 (asked for on a CPU without native bf16, with a
warning) and towers built by OpenCLIP (architectures msclip does not build itself, such as Hugging
Face text towers) are not checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["BF16_CHECK_ENV", "MIN_COSINE", "cpu_bf16_agreement"]

logger = logging.getLogger(__name__)

#: Environment variable of the check: ``1`` (default) or ``0`` (trust the CPU flags).
BF16_CHECK_ENV = "MSCLIP_BF16_CHECK"
#: Least cosine between a replica's bf16 and float32 embeddings for bf16 to be used.
MIN_COSINE = 0.99
# 1: the first version of the replica and its inputs; 2: a short trimmed prompt too; 3: the
# patch projection in bf16 as one matrix product (verdicts of the convolution measured again);
# 4: the text tower's attention on the fused path (two products and a softmax, its mask added)
_VERSION = 4
_IMAGE_BLOCKS = 2
_TEXT_BLOCKS = 1
_TEXT_VOCAB = 1024  # token ids of the replica's text input (the lookup's size is no kernel shape)
_SHORT_PROMPT = 13  # tokens of the replica's short prompt, end-of-text included


def _replica_cfg(arch_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(arch_cfg))
    cfg.pop("multimodal_cfg", None)
    vision = cfg.setdefault("vision_cfg", {})
    vision["layers"] = min(int(vision.get("layers", 12)), _IMAGE_BLOCKS)
    text = cfg.setdefault("text_cfg", {})
    text["layers"] = min(int(text.get("layers", 12)), _TEXT_BLOCKS)
    text["vocab_size"] = min(int(text.get("vocab_size", 49408)), _TEXT_VOCAB)
    return cfg


def _cache_file(arch_cfg: dict[str, Any], bands: int) -> Path:
    from msclip.cache import machine_file

    text = json.dumps(
        {"arch": _replica_cfg(arch_cfg), "bands": bands, "version": _VERSION}, sort_keys=True
    )
    arch = hashlib.sha256(text.encode()).hexdigest()[:12]
    from msclip.architecture import fused_dtypes

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().lower() or "all"
    # MSCLIP_FUSED_CPU=0 runs bf16 on torch's own kernels, which the fused path's verdict never ran
    fused = "fused" if torch.bfloat16 in fused_dtypes() else "plain"
    return machine_file("bf16-check", isa, fused, arch)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least cosine between matching rows (the last dimension) of two outputs; -1 where either
    holds a NaN or an infinity (a kernel that overflows or fails agrees with nothing, and a NaN
    would pass every comparison unseen: ``min(1.0, nan)`` is 1.0)."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    value = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    return value if finite and math.isfinite(value) else -1.0


def _recorder(seen: list[torch.Tensor]) -> Any:
    """A forward hook that appends the module's output to ``seen``."""
    return lambda _module, _inputs, output: seen.append(output)


def _measure(config: Any) -> dict[str, float]:
    """Least cosines between the bf16 and float32 outputs of a replica of the towers: of the
    embeddings and of every token out of each tower's transformer (see the module docstring)."""
    from dataclasses import replace

    from msclip.model import MSCLIP

    cfg = _replica_cfg(config.arch_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = MSCLIP(replace(config, arch_cfg=cfg)).eval()
        visual = ref.clip.visual
        with torch.no_grad():
            # random towers' class tokens carry their class and position embeddings, which
            # drown what the input adds; zeroed, the embeddings are made of the input alone
            visual.class_embedding.zero_()
            visual.positional_embedding.zero_()
        images = torch.randn(1, len(config.bands), config.image_size, config.image_size)
        context = int(cfg["text_cfg"].get("context_length", 77))
        vocab = int(cfg["text_cfg"]["vocab_size"])
        tokens = torch.randint(1, vocab - 1, (1, context))
        tokens[:, -1] = vocab - 1  # the end-of-text token pools the text (highest id)
        # a prompt as zero-shot runs them: a few tokens, the padding trimmed (encode_text(...,
        # trim=True)), so the attention's products are as short as a prompt's
        short = torch.zeros_like(tokens)
        short[:, :_SHORT_PROMPT] = torch.randint(1, vocab - 1, (1, _SHORT_PROMPT))
        short[:, _SHORT_PROMPT - 1] = vocab - 1
    low = copy.deepcopy(ref).to(torch.bfloat16)
    runs = [
        ("image", lambda m: m.encode_image(images.to(m.clip.visual.conv1.weight.dtype))),
        ("text", lambda m: m.encode_text(tokens)),
        ("text", lambda m: m.encode_text(short, trim=True)),
    ]
    towers = {"image": lambda m: m.clip.visual.transformer, "text": lambda m: m.clip.transformer}
    out: dict[str, float] = {}
    with torch.inference_mode():
        for name, run in runs:
            cos = _min_cosine(run(ref), run(low))
            # every token out of the tower's transformer (the hook also makes the image tower
            # run its last block on all tokens, not on the class token alone)
            seen: list[torch.Tensor] = []
            hooks = [towers[name](m).register_forward_hook(_recorder(seen)) for m in (ref, low)]
            try:
                run(ref)
                run(low)
            finally:
                for h in hooks:
                    h.remove()
            out[name] = min(out.get(name, 1.0), cos, _min_cosine(seen[0], seen[1]))
    return out


#: Verdicts measured in this process, by cache file: a cache folder that cannot be written does
#: not make every model of the process measure again (0.06-0.45 s each).
_MEASURED: dict[Path, dict[str, float]] = {}


def cpu_bf16_agreement(config: Any) -> dict[str, float] | None:
    """Least cosines (``image``, ``text``) between bf16 and float32 outputs of a replica of the
    towers of ``config`` (an :class:`msclip.model.MSCLIPConfig`) on this CPU (see the module
    docstring), from msclip's cache or measured now; None where not checked
    (``MSCLIP_BF16_CHECK=0``, a CPU without native bf16, or towers msclip does not build)."""
    from msclip.architecture import use_native
    from msclip.hardware import SWITCH_OFF, SWITCH_VALUES, cpu_bf16_native, cpu_info, env_setting

    off = env_setting(BF16_CHECK_ENV, "1", SWITCH_VALUES) in SWITCH_OFF
    if off or not use_native(config.arch_cfg) or not cpu_bf16_native():
        return None  # emulated bf16 (a warned, slow choice) runs no native kernels to check
    from msclip.cache import note_damaged, note_unwritable

    path = _cache_file(config.arch_cfg, len(config.bands))
    if path in _MEASURED:  # measured in this process (its file may not be writable)
        return dict(_MEASURED[path])
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        got = {"image": float(kept["image"]), "text": float(kept["text"])}
        if all(math.isfinite(v) for v in got.values()):
            return got
        # a NaN would compare as agreement: measured again
        note_damaged("bf16 check verdict", path, f"not finite: {got}")
    except FileNotFoundError:
        pass  # not measured yet on this machine
    except (OSError, ValueError, KeyError, TypeError) as err:
        note_damaged("bf16 check verdict", path, err)
    got = _measure(config)
    _MEASURED[path] = dict(got)
    logger.info("bf16 against float32 on this CPU (replica of the towers): cosine %s", got)
    from msclip.io import write_json

    try:
        write_json(path, {**got, "cpu": cpu_info().to_dict(), "threads": torch.get_num_threads()})
    except OSError as err:
        note_unwritable(
            "the bf16 check's verdict", path.parent, err, "every process measures it again"
        )
    return got
