"""Model factory: named models and checkpoint files -> (model, preprocess, tokenizer).

The API mirrors OpenCLIP's ``create_model_and_transforms``; weights are resolved as described in
:mod:`msclip.pretrained`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from msclip.errors import (
    CheckpointError,
    InputTypeError,
    InvalidArgumentError,
    UnknownBandError,
    UnknownModelError,
    WeightsNotFoundError,
)
from msclip.model import MSCLIP, MSCLIPConfig
from msclip.pretrained import (
    MODELS,
    ModelEntry,
    load_weights,
    read_checkpoint,
    resolve_weights,
)
from msclip.spectral.bands import Band, resolve_bands
from msclip.spectral.stats import get_stats
from msclip.transforms import ImageTransform

__all__ = [
    "create_model",
    "create_model_and_transforms",
    "describes_itself",
    "get_arch_config",
    "get_model_entry",
    "get_tokenizer",
    "list_models",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (registered models)."""
    return list(MODELS)


def _check_name(
    name: Any,
    accepted: str = "a model name (list_models()) or a checkpoint path",
    types: tuple[type, ...] = (str, os.PathLike),
) -> None:
    if not isinstance(name, types):
        raise InputTypeError(f"name must be {accepted}, got {type(name).__name__} {name!r}")


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of a model name (case-insensitive).

    Raises:
        TypeError: ``name`` is not a string.
        UnknownModelError: no registered model has this name.
    """
    _check_name(name, "a model name (list_models())", (str,))
    if name in MODELS:
        return MODELS[name]
    lower = {k.lower(): k for k in MODELS}
    if name.lower() in lower:
        return MODELS[lower[name.lower()]]
    raise UnknownModelError(
        f"unknown model {name!r}{_did_you_mean(name)}; registered models: {', '.join(MODELS)} "
        "(or pass the path of an msclip .safetensors checkpoint)"
    )


def _did_you_mean(name: str) -> str:
    """``" (did you mean 'X'?)"`` for the registered names closest to a mistyped one, else ``""``
    (compared without case, and with ``_`` as ``-``)."""
    import difflib

    def norm(text: str) -> str:
        return text.lower().replace("_", "-")

    names = {norm(k): k for k in MODELS}
    close = difflib.get_close_matches(norm(name), list(names), n=2, cutoff=0.75)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(names[c]) for c in close) + "?)"


def get_arch_config(arch: str) -> dict:
    """OpenCLIP-style architecture config: msclip's ``model_configs/`` first, then OpenCLIP's.

    OpenCLIP's shipped configs are read from its package folder without importing it (the import
    costs seconds; see :mod:`msclip.architecture`); configs registered at run time with
    ``open_clip.add_model_config`` are asked of OpenCLIP itself.
    """
    path = resources.files("msclip") / "model_configs" / f"{arch}.json"
    if path.is_file():
        return json.loads(path.read_text())
    shipped = _open_clip_dir() / "model_configs" / f"{arch}.json" if _open_clip_dir() else None
    if shipped is not None and shipped.is_file():
        cfg = json.loads(shipped.read_text(encoding="utf-8"))
        if "vision_cfg" in cfg and "text_cfg" in cfg:
            return cfg
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise UnknownModelError(f"unknown architecture {arch!r} (neither msclip nor OpenCLIP)")
    return cfg


def _open_clip_dir() -> Path | None:
    from importlib.util import find_spec

    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _is_checkpoint_path(value: Any) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and (
        value.endswith(_CHECKPOINT_SUFFIXES) or os.sep in value or os.path.isfile(value)
    )


def names_checkpoint_file(name: Any) -> bool:
    """Whether :func:`create_model` reads ``name`` as a checkpoint file (an existing file that is
    not a registered model's name), whose weights it then loads whatever ``pretrained`` says."""
    return (
        name is not None
        and str(name) not in MODELS
        and _is_checkpoint_path(name)
        and Path(name).expanduser().is_file()
    )


def _config_for(entry: ModelEntry, bands: Sequence[str | Band] | None) -> MSCLIPConfig:
    return MSCLIPConfig(
        arch=entry.arch,
        arch_cfg=get_arch_config(entry.arch),
        bands=tuple(b.name for b in resolve_bands(bands if bands is not None else entry.bands)),
        stats=get_stats(entry.stats),
        name=entry.name,
        pil_rgb=entry.pil_rgb,
    )


def _config_from_file(path: Any, config: dict) -> MSCLIPConfig:
    """The model config a checkpoint file describes, checked enough that a damaged description is
    reported as such (naming the file) rather than failing later in the model's construction.

    Raises:
        CheckpointError: a field is missing or of the wrong kind, or a band is unknown.
    """
    try:
        cfg = MSCLIPConfig.from_dict(config)
        arch_cfg = cfg.arch_cfg
        if not isinstance(arch_cfg, dict) or not all(
            isinstance(arch_cfg.get(k), dict) for k in ("vision_cfg", "text_cfg")
        ):
            raise ValueError("'arch_cfg' needs the mappings 'vision_cfg' and 'text_cfg'")
        if not isinstance(config.get("bands"), (list, tuple)) or not all(
            isinstance(b, str) for b in cfg.bands
        ):
            raise ValueError(f"'bands' must be a list of band names, not {config.get('bands')!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: its msclip model description is incomplete or damaged "
            f"({type(err).__name__}: {err}); use a good copy of the file, or re-save the "
            "weights with msclip.save_checkpoint"
        ) from err
    try:
        resolve_bands(cfg.bands)
    except UnknownBandError as err:
        raise CheckpointError(
            f"{path}: the model it describes reads bands this version of msclip does not know "
            f"({err}); use a good copy of the file, or the msclip version that wrote it"
        ) from err
    return cfg


def create_model(
    name: str | os.PathLike | None = None,
    pretrained: bool | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    bands: Sequence[str | Band] | None = None,
    cache_dir: str | None = None,
    precision: str = "auto",
    seed: int | None = None,
) -> MSCLIP:
    """Build a model and load its weights.

    With weights, the model is built on the meta device (no memory, no random initialisation)
    and takes the memory-mapped checkpoint tensors as its parameters, converted one at a time to
    the precision's dtype: the weights are never held twice. Without weights it gets its usual
    random initialisation from torch's generator: give ``seed`` (or call ``torch.manual_seed``
    first) for the same weights in every process.

    Args:
        name: a registered model name (:func:`list_models`) or the path of an msclip
            ``.safetensors`` checkpoint (which describes its own architecture and bands).
        pretrained: ``None``/``False``: random weights. ``True``: the model's published weights
            (hub cache or hub). A file path: that checkpoint. Another registered model name
            (e.g. ``"ViT-B-16"`` for a multispectral model): that model's weights, the patch
            kernel extended to this model's bands by the zero-init rule.
        device: where to put the model (default CPU); ``"auto"`` (any case) is a CUDA GPU where
            torch sees one, else the CPU, as the programs' ``--device auto``.
        bands: override the model's bands (architectures without fixed weights, or RGB
            initialisation); statistics must cover them.
        cache_dir: Hugging Face cache directory.
        precision: ``auto`` (bf16 where the device computes it natively, else fp32 on a CPU,
            with the image tower on the fused fp32 path, and fp16 on a GPU), ``fp32``
            (OpenCLIP's arithmetic, bit for bit), ``bf16``, ``fp16`` (GPU only) or ``int8`` (CPU
            image tower with dynamically quantised linear layers, text tower in fp32); see
            :mod:`msclip.hardware`. The choice and its reason are ``model.precision`` and
            ``model.precision_reason``.
        seed: random weights only: seeds torch's generator (as ``torch.manual_seed(seed)``
            would) before they are drawn, and is kept as ``model.init_seed``, which
            :meth:`~msclip.MSCLIP.describe` reports, so that index manifests, run records and
            heads can draw the same weights again.

    Raises:
        TypeError: ``name`` is not a string or path, ``pretrained`` none of the above, or
            ``seed`` not an integer.
        ValueError: ``seed`` given with weights from a file (they are not drawn).
        UnknownModelError: unknown name.
        WeightsNotFoundError: weights missing offline (message says what to fetch).
        CheckpointMismatchError: the checkpoint does not fit the architecture.
        PrecisionError: an unknown precision, fp16 on a CPU or int8 on a GPU.
        DeviceError: a CUDA device without a usable GPU.
    """
    # Called under torch.inference_mode() the weights would be inference tensors, which have no
    # in-place version counter (the model's identity and its packed weights track changes by it)
    # and cannot be trained: the model is built outside it.
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise InputTypeError(
            f"seed must be an integer or None, got {type(seed).__name__} {seed!r}", param="seed"
        )
    if seed is not None and not -(2**63) <= int(seed) < 2**64:
        raise InvalidArgumentError(
            f"seed must lie in [-2**63, 2**64) (torch's generator), got {seed}", param="seed"
        )
    if seed is not None and (
        pretrained not in (None, False)
        or (name is not None and str(name) not in MODELS and _is_checkpoint_path(name))
    ):
        given = (
            name if pretrained in (None, False)
            else f"the published weights of {name}" if pretrained is True
            else pretrained
        )  # fmt: skip
        raise InvalidArgumentError(
            f"seed={seed} draws random weights, but the weights come from {given}: leave seed "
            "out (or pretrained=None for random weights)"
        )
    with torch.inference_mode(False):
        return _create_model(name, pretrained, device, bands, cache_dir, precision, seed)


#: The end of a model's ``precision_reason`` when its image tower runs on the fused fp32 path.
FUSED_FP32_NOTE = "; image tower on the fused fp32 path"


def _create_model(
    name: str | os.PathLike | None,
    pretrained: bool | str | os.PathLike | None,
    device: str | torch.device | None,
    bands: Sequence[str | Band] | None,
    cache_dir: str | None,
    precision: str,
    seed: int | None = None,
) -> MSCLIP:
    from msclip.hardware import choose_precision, device_type, resolve_device

    device = resolve_device(device)  # "auto": the GPU torch sees, else the CPU
    if name is None and pretrained in (None, False, True):
        raise UnknownModelError(
            "give a model name (list_models()) or a checkpoint path"
            + (f"; pretrained={pretrained!r} needs a model name" if pretrained is not None else "")
        )
    if name is not None:
        _check_name(name)
    if pretrained is not None and not isinstance(pretrained, (bool, str, os.PathLike)):
        raise InputTypeError(
            f"pretrained must be True/False, a checkpoint path or a model name, got "
            f"{type(pretrained).__name__} {pretrained!r}",
            param="pretrained",
        )
    choice = choose_precision(precision, device)
    _check_device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice.precision, torch.float32)
    path: str | os.PathLike | None = None
    ckpt = None
    extend = False
    if name is not None and _is_checkpoint_path(name) and str(name) not in MODELS:
        name = os.path.expanduser(name)  # '~/...' as the shell would have it
        if not os.path.isfile(name):
            from msclip.pretrained import missing_checkpoint_message

            raise WeightsNotFoundError(missing_checkpoint_message(name))
        pretrained, name = name, None
    if name is None:
        ckpt = read_checkpoint(pretrained)  # type: ignore[arg-type]
        if ckpt.config is None:
            raise UnknownModelError(
                f"{pretrained} does not describe its architecture (no msclip metadata); "
                "name the model too",
                param="model_name",
            )
        config = _config_from_file(pretrained, ckpt.config)
        if bands is not None:
            config.bands = tuple(b.name for b in resolve_bands(bands))
        extend = bands is not None
        label = config.name or config.arch
    else:
        entry = get_model_entry(str(name))
        config = _config_for(entry, bands)
        label = entry.name
        if pretrained is True or pretrained == "default":
            path = resolve_weights(entry, cache_dir=cache_dir)
            extend = bands is not None
        elif isinstance(pretrained, str) and pretrained in MODELS:
            path = resolve_weights(MODELS[pretrained], cache_dir=cache_dir)
            extend = True
        elif pretrained is not None and pretrained is not False:
            if isinstance(pretrained, str) and entry.open_clip_tag == pretrained:
                path = resolve_weights(entry, cache_dir=cache_dir)
            else:
                if isinstance(pretrained, str) and not _is_checkpoint_path(pretrained):
                    hint = _did_you_mean(pretrained)  # a mistyped model name, not a file
                    if hint:
                        raise WeightsNotFoundError(
                            f"pretrained={pretrained!r} is neither a checkpoint file nor a "
                            f"registered model{hint}",
                            param="pretrained",
                        )
                path = resolve_weights(entry, path=pretrained)
            extend = bands is not None
        if path is not None:
            ckpt = read_checkpoint(path)
            kernel = ckpt.state_dict.get("visual.conv1.weight")
            if ckpt.config is None and kernel is not None and kernel.ndim == 4:
                # an RGB OpenCLIP file for a multispectral model: the zero-init extension (the
                # blue, green and red kernels to B02, B03, B04, zeros elsewhere), as documented
                extend = extend or (kernel.shape[1] == 3 and len(config.bands) != 3)
    if choice.precision == "bf16" and device_type(device) == "cpu":
        choice = _confirm_cpu_bf16(choice, config)
        dtype = torch.bfloat16 if choice.precision == "bf16" else torch.float32
    if ckpt is not None and device_type(device) == "meta":
        from msclip.errors import DeviceError

        raise DeviceError(
            f"device 'meta' holds no values: the weights of {ckpt.path} would be dropped, leaving "
            "a model that computes nothing; use device='cpu' or 'cuda' (or pretrained=None for "
            "the architecture alone on the meta device)",
            param="device",
        )
    if ckpt is not None:
        model = _load(config, ckpt, extend, dtype)
        logger.info("loaded %s weights (%s) from %s", label, ckpt.format, ckpt.path)
    else:
        if seed is not None:
            torch.manual_seed(int(seed))
        model = _build(config, meta=False)
        if dtype != torch.float32:
            # the identity of random weights is that of the float32 initialisation, as a weight
            # file's hash does not depend on the precision it is loaded in
            _ = model.checkpoint_sha256
            model = model.to(dtype)
    model.eval()
    if choice.precision == "int8":
        from msclip.quantize import quantize_image_tower

        quantize_image_tower(model)
    reason = choice.reason
    if choice.fused_fp32 and _fused_fp32(model):
        reason += FUSED_FP32_NOTE
    model.precision_reason = reason
    model.precision_requested = choice.requested
    if device is not None:
        model = model.to(device)
    if seed is not None:
        model.init_seed = int(seed)  # how to draw these weights again (describe())
    # debug: each program states the precision once, in its own words (report_precision, trainer)
    logger.debug("%s runs in %s", label, choice.summary())
    return model


def _confirm_cpu_bf16(choice: Any, config: MSCLIPConfig) -> Any:
    """``choice`` (bf16 on a CPU) where bf16 computes what float32 computes for ``config`` on this
    CPU (:func:`msclip.precision_check.cpu_bf16_agreement`); otherwise fp32 with a warning when
    ``auto`` picked bf16, an error when bf16 was asked for (by name or ``MSCLIP_PRECISION``)."""
    from msclip.errors import PrecisionError, PrecisionWarning
    from msclip.hardware import PRECISION_ENV, PrecisionChoice, cpu_info
    from msclip.precision_check import BF16_CHECK_ENV, MIN_COSINE, cpu_bf16_agreement

    got = cpu_bf16_agreement(config)
    if got is None or min(got.values()) >= MIN_COSINE:
        return choice
    tower = min(got, key=got.__getitem__)
    fact = (
        f"bf16 on this CPU disagrees with float32 for {config.name or config.arch} (least cosine "
        f"{got[tower]:.3f} in the {tower} tower of a replica, where rounding alone gives 0.999 "
        "or more)"
    )
    amx = (
        "; on a CPU with AMX, ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 set before Python starts keeps "
        "bf16 off oneDNN's AMX kernels (they disagreed where its AVX-512 ones agreed on an Intel "
        "Xeon)"
        if "amx_bf16" in cpu_info().flags
        else ""
    )
    if choice.requested == "auto" and not choice.reason.startswith(PRECISION_ENV):
        import warnings

        warnings.warn(
            f"{fact}: using fp32{amx}; {BF16_CHECK_ENV}=0 skips this check",
            PrecisionWarning,
            stacklevel=4,
        )
        return PrecisionChoice("fp32", "auto", f"{fact}; fp32 instead", True)
    raise PrecisionError(
        f"{fact}: its bf16 embeddings would be wrong; use precision 'fp32' (or 'auto', which then "
        f"picks fp32){amx}",
        param="precision",
    )


#: Environment variable turning the converted-weights cache off (``0``).
WEIGHT_CACHE_ENV = "MSCLIP_WEIGHT_CACHE"
# 2: the file records a digest of samples of its tensors' bytes (_sample_digest)
_WEIGHT_CACHE_VERSION = 2
#: Converted-weights files kept (the most recently used): each checkpoint of an epoch sweep would
#: otherwise add one (~0.3 GB for Llama3-MS-CLIP in bf16) for good.
WEIGHT_CACHE_KEEP = 4


def _weight_cache_path(ckpt: Any, config: MSCLIPConfig, dtype: torch.dtype) -> Path | None:
    """Where the weights of ``ckpt`` converted to ``dtype`` for ``config`` are kept, or ``None``
    (float32, weights already in ``dtype``, no source file, or the cache turned off)."""
    from msclip.hardware import SWITCH_OFF, SWITCH_VALUES, env_setting
    from msclip.pretrained import file_sha256

    off = env_setting(WEIGHT_CACHE_ENV, "1", SWITCH_VALUES) in SWITCH_OFF
    if dtype == torch.float32 or not ckpt.path or off:
        return None
    if all(v.dtype == dtype or not v.is_floating_point() for v in ckpt.state_dict.values()):
        return None  # a file already in this dtype is mapped as it is: a copy would gain nothing
    import hashlib

    facts = json.dumps(
        [_WEIGHT_CACHE_VERSION, file_sha256(ckpt.path), str(dtype), config.to_dict()],
        sort_keys=True,
    )
    from msclip.cache import cache_root

    root = cache_root()
    name = hashlib.sha256(facts.encode()).hexdigest()[:32]
    return root / "weights" / f"{name}-{str(dtype).split('.')[-1]}.safetensors"


_SAMPLE_BYTES = 64


def _sample_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of each tensor's name, shape and the first, middle and last 64 bytes of its data,
    as they are in memory (:func:`_file_sample_digest` reads the same of a safetensors file): a
    converted-weights file whose data is not what was written (zeroed blocks of a file whose
    writes a crash lost, another file's bytes) is told from its own record without reading it
    all."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().contiguous()
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)

        def read(start: int, n: int, raw: torch.Tensor = raw) -> bytes:
            return raw[start : start + n].numpy().tobytes()

        _digest_tensor(h, name, t.shape, raw.numel(), read)
    return h.hexdigest()


def _file_sample_digest(path: str | os.PathLike) -> str:
    """:func:`_sample_digest` of the tensors of a safetensors file, read with ``pread`` from its
    header's offsets: the pages stay in the page cache, never in this process (touching its memory
    map would fault in a readahead window per sample: ~40 MB for Llama3-MS-CLIP-Base).

    Raises:
        OSError, ValueError: the file or its header cannot be read.
    """
    import hashlib
    import struct

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        base, fd = 8 + size, f.fileno()
        h = hashlib.sha256()
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = header[name]["data_offsets"]
            _digest_tensor(h, name, torch.Size(header[name]["shape"]), end - begin,
                           lambda start, n, b=begin: os.pread(fd, n, base + b + start))  # fmt: skip
    return h.hexdigest()


def _digest_tensor(h: Any, name: str, shape: torch.Size, nbytes: int, read: Callable) -> None:
    h.update(f"{name}|{tuple(shape)}|".encode())
    if nbytes == 0:
        return
    mid = max(0, nbytes // 2 - _SAMPLE_BYTES // 2)
    for start in (0, mid, max(0, nbytes - _SAMPLE_BYTES)):
        h.update(read(start, min(_SAMPLE_BYTES, nbytes - start)))


def _load(config: MSCLIPConfig, ckpt: Any, extend: bool, dtype: torch.dtype) -> MSCLIP:
    """The model of ``config`` with the weights of ``ckpt`` in ``dtype``.

    Converting 150M float32 weights to bf16 costs most of a load (and a transient of the largest
    tensors) on every run, for the same result: the converted weights are kept in the cache
    (``$MSCLIP_CACHE_DIR/weights/``, keyed by the source file's sha256, the dtype and the model
    config; ``MSCLIP_WEIGHT_CACHE=0`` turns it off) and memory-mapped the next time, like a
    float32 file, once samples of its data match the digest it records (:func:`_sample_digest`,
    :func:`_file_sample_digest`;
    a file that does not is converted again and replaced). The model's provenance stays the
    source file.
    """
    from msclip.pretrained import Checkpoint, file_sha256, save_checkpoint

    cache = _weight_cache_path(ckpt, config, dtype)
    if cache is not None and cache.is_file():
        try:
            cached = read_checkpoint(cache)
            if cached.metadata.get("sample_sha256") != _file_sample_digest(cache):
                raise ValueError("its data is not what was written: damaged; converted again")
            model = _build(config, meta=True)
            source = Checkpoint(
                cached.state_dict,
                ckpt.format,
                cached.config,
                ckpt.temperature,
                ckpt.path,
                mapped=True,
            )
            load_weights(model, source, dtype=dtype)
            logger.debug("converted weights from the cache %s", cache)
            with contextlib.suppress(OSError):
                os.utime(cache)  # most recently used: kept by the pruning
            return model
        except (CheckpointError, OSError, ValueError) as err:
            logger.warning("ignoring the converted-weights cache %s (%s)", cache, err)
    model = _build(config, meta=True)
    load_weights(model, ckpt, extend_bands=extend, dtype=dtype)
    if cache is not None:
        try:
            record = {
                "source_sha256": file_sha256(ckpt.path),
                "sample_sha256": _sample_digest(model.clip.state_dict()),
            }
            # the cache is of the precision asked for
            save_checkpoint(model, cache, record, warn_precision=False)
        except Exception as err:  # read-only, a full disk (safetensors' own error type too)
            from msclip.cache import note_unwritable

            note_unwritable(
                "the converted weights",
                cache.parent,
                err,
                f"the model is loaded, and every load converts again (or set {WEIGHT_CACHE_ENV}=0)",
            )
        else:
            _prune_weight_cache(cache.parent, keep=cache)
    return model


def _prune_weight_cache(folder: Path, keep: Path) -> None:
    """Remove all but the :data:`WEIGHT_CACHE_KEEP` most recently used converted-weights files
    (never ``keep``, the one just written), and temporary files a crashed writer left
    (:func:`msclip.io.writers.abandoned_temp`; a younger one is another process's write in
    progress)."""
    from msclip.io import TMP_PREFIX
    from msclip.io.writers import abandoned_temp

    files, stale = [], []
    now = time.time()
    try:
        for f in folder.glob("*.safetensors"):
            with contextlib.suppress(OSError):  # removed by another process meanwhile
                mtime = f.stat().st_mtime
                if not f.name.startswith(TMP_PREFIX):
                    files.append((mtime, f))
                elif abandoned_temp(f, now):
                    stale.append(f)
    except OSError:
        return
    files.sort(key=lambda x: x[0], reverse=True)
    old = [f for _, f in files if f != keep][max(WEIGHT_CACHE_KEEP - 1, 0) :]
    for f in old + stale:
        with contextlib.suppress(OSError):  # another process may have removed it first
            f.unlink()
            logger.debug("removed the least recently used converted weights %s", f)


def _build(config: MSCLIPConfig, meta: bool) -> MSCLIP:
    """The model for ``config``; on the meta device (to be loaded with ``assign``) when asked and
    msclip's own CLIP build is used (OpenCLIP's models hold buffers that cannot be rebuilt after
    a meta build, so those get a random initialisation that loading then replaces)."""
    from msclip.model import build_open_clip

    return MSCLIP(config, build_open_clip(config.arch_cfg, meta=meta))


def get_tokenizer(name: str | os.PathLike | MSCLIP) -> Callable[..., torch.Tensor]:
    """The tokenizer of a model (OpenCLIP's CLIP BPE tokenizer for CLIP text towers).

    Args:
        name: a registered model name (:func:`list_models`), the path of an msclip checkpoint,
            or a model.

    Raises:
        TypeError: ``name`` is none of these.
        UnknownModelError: an unknown model name.
    """
    if isinstance(name, MSCLIP):
        arch, arch_cfg = name.config.arch, name.config.arch_cfg
    elif not isinstance(name, (str, os.PathLike)):
        _check_name(name, "a model name (list_models()), a checkpoint path or an MSCLIP model")
    elif _is_checkpoint_path(name) and str(name) not in MODELS:
        config = read_checkpoint(name).config
        if config is None:
            raise UnknownModelError(
                f"{name} does not describe its architecture (no msclip metadata): give the "
                "name of its model (get_tokenizer('ViT-B-16')) or the model itself"
            )
        cfg = _config_from_file(name, config)
        arch, arch_cfg = cfg.arch, cfg.arch_cfg
    else:
        entry = get_model_entry(str(name))
        arch, arch_cfg = entry.arch, get_arch_config(entry.arch)
    text_cfg = arch_cfg.get("text_cfg", {})
    from msclip.architecture import use_native

    if use_native(arch_cfg):
        # plain CLIP text towers use CLIP's BPE tokenizer (equal to OpenCLIP's, without its import)
        from msclip.tokenizer import CLIPTokenizer

        return CLIPTokenizer(context_length=int(text_cfg.get("context_length", 77)))
    import open_clip

    if open_clip.get_model_config(arch) is not None:
        return open_clip.get_tokenizer(arch)
    if "hf_tokenizer_name" in text_cfg:
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77)
        )
    return open_clip.tokenizer.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def create_model_and_transforms(
    name: str | os.PathLike | None = None,
    pretrained: bool | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    bands: Sequence[str | Band] | None = None,
    input_bands: Sequence[str | Band] | None = None,
    layout: str | None = None,
    sensor: str | None = None,
    cache_dir: str | None = None,
    precision: str = "auto",
    seed: int | None = None,
) -> tuple[MSCLIP, ImageTransform, Callable[..., torch.Tensor]]:
    """Build ``(model, preprocess, tokenizer)``.

    ``preprocess`` accepts a file path, a :class:`msclip.io.Raster` from
    :func:`msclip.read_raster`, a PIL image or an array, and returns the model's input tensor.
    ``input_bands``/``layout``/``sensor`` describe inputs that do not describe themselves.
    Other arguments as in :func:`create_model`.
    """
    model = create_model(name, pretrained, device, bands, cache_dir, precision, seed)
    preprocess = model.preprocess(input_bands=input_bands, layout=layout, sensor=sensor)
    return model, preprocess, get_tokenizer(model)


def _fused_fp32(model: MSCLIP) -> bool:
    """Put ``model``'s image tower on the fused fp32 CPU path (``auto`` on a CPU without native
    bf16); whether it took effect (msclip's own tower, kernels that pass their self-test, the
    path not switched off)."""
    from msclip.architecture import _fused_mlp_works, fused_dtypes, use_fused_fp32

    if torch.float32 not in fused_dtypes(fp32=True) or not _fused_mlp_works(torch.float32):
        return False
    return use_fused_fp32(model.clip.visual)


def _check_device(device: Any) -> None:
    """Refuse a device that torch does not know or this machine cannot use (a CUDA device
    without a usable GPU, ``mps`` off a Mac), before the model is built."""
    from msclip.errors import DeviceError
    from msclip.hardware import device_type

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            f"unknown device {str(device)!r}; use 'cpu', 'cuda' or 'cuda:<n>'", param="device"
        ) from err
    if dev.type not in ("cpu", "cuda", "meta"):
        try:
            torch.empty(0, device=dev)
        # what torch raises for a backend it was built without (RuntimeError for mps,
        # AssertionError for xpu, NotImplementedError for xla, ImportError for hpu)
        except (RuntimeError, AssertionError, NotImplementedError, ImportError) as err:
            # the first sentence: torch's dispatcher errors go on to list every backend it has
            reason = str(err).strip().split("\n")[0].split(". ")[0] or type(err).__name__
            raise DeviceError(
                f"device {str(device)!r} asked for, but torch cannot use it here ({reason}); "
                "use device='cpu' (or 'cuda' on a machine with a GPU)",
                param="device",
            ) from err
    if device_type(device) != "cuda":
        return
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(device)!r} asked for, but torch sees no usable CUDA GPU (no driver or "
            "device, or a CPU-only torch build); use device='cpu' (or leave it out)",
            param="device",
        )
    index = dev.index
    if index is not None and index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {str(device)!r} asked for, but torch sees {torch.cuda.device_count()} "
            "CUDA device(s)",
            param="device",
        )


def describes_itself(path: str | os.PathLike) -> bool:
    """Whether a checkpoint file holds msclip metadata naming its architecture and bands (an msclip
    ``.safetensors``, or a training checkpoint of msclip-train), so that no model name is needed
    to load it."""
    p = Path(path)
    return _safetensors_config(p) is not None or _training_checkpoint_config(p) is not None


def _training_checkpoint_config(path: Path) -> dict | None:
    """The msclip config an msclip training checkpoint (``.pt``) carries, read safely
    (``weights_only``, memory-mapped: no tensor is copied)."""
    from msclip.pretrained import checkpoint_format

    if path.suffix not in (".pt", ".pth", ".ckpt") or checkpoint_format(path) == "safetensors":
        return None
    if _names_no_msclip_config(path):
        return None
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError):
        return None  # create_model reports the unreadable file
    cfg = obj.get("msclip_config") if isinstance(obj, dict) else None
    return _parsed_config(cfg) if isinstance(cfg, str) else None


def _names_no_msclip_config(path: Path) -> bool:
    """Whether a torch zip checkpoint certainly holds no msclip config: its pickle (the archive's
    ``data.pkl``, a few kB beside the tensors) does not contain the key's bytes, which a pickled
    dict key always does. Read in ~1 ms, where unpickling the record of a release's ~400 tensors
    took ~25 ms; ``False`` (unpickle to know) for any other file or an unreadable archive."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                return False
            return b"msclip_config" not in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, RuntimeError):
        return False


def _parsed_config(text: str) -> dict:
    """A file's msclip config; ``{}`` when it is damaged, so that the file still counts as
    describing itself and loading it reports the damage (:func:`create_model`)."""
    try:
        cfg = json.loads(text)
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _safetensors_config(path: Path) -> dict | None:
    """The msclip config in a safetensors file's metadata (header only, no tensors read); the
    format is told from the file's first bytes, as when it is loaded."""
    from msclip.pretrained import _is_safetensors

    if not _is_safetensors(str(path)):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError):
        return None  # create_model reports the unreadable file
    return _parsed_config(meta["msclip_config"]) if "msclip_config" in meta else None
