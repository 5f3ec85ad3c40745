"""Low-rank adapters (LoRA) for the image tower of an :class:`msclip.MSCLIP` model.

LoRA (Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) freezes a weight ``W [out, in]`` and learns ``W + (alpha / r) B A`` with
``A [r, in]``, ``B [out, r]``; ``B`` starts at zero, so the adapted model starts as the base
model exactly. The original paper adapts the query and value projections of attention; that is
the default here, optionally with the MLP (``c_fc``, ``c_proj``) too.

Why hand-written rather than peft: OpenCLIP's attention is an ``nn.MultiheadAttention`` whose
query, key and value projections are one fused ``in_proj_weight [3 W, W]``. peft's LoRA wraps
whole ``nn.Linear`` layers (and re-implements ``nn.MultiheadAttention`` as one unit), so it
cannot adapt the q and v thirds of the fused projection alone. Here each adapted weight gets a
``torch.nn.utils.parametrize`` parametrisation that adds ``(alpha / r) B_q A_q`` to the q rows
(``[0, W)``) and ``(alpha / r) B_v A_v`` to the v rows (``[2 W, 3 W)``) and leaves the k rows
untouched; ``nn.MultiheadAttention`` keeps reading ``in_proj_weight`` as before (its fused
inference path included), so nothing else in OpenCLIP changes.

Cost of the weight-space form: autograd computes the gradient of the whole adapted weight
(``in_proj_weight`` and, when targeted, the MLP weights) once per step, the same matrix product
full fine-tuning does for those layers, and reduces it to ``A`` and ``B``; the other layers get
no weight gradient, and the optimiser state is that of the adapters only.

Dropout: the usual LoRA applies dropout to the input of ``A`` per token. A weight-space adapter
has no per-token input, so dropout here drops input features of ``A`` (columns), one mask per
forward call shared by the batch, scaled by ``1 / (1 - p)``; it is active in training mode only.

Adapters save on their own (:func:`save_lora`: a few MB as safetensors with their config and any
metadata such as the encoder fingerprint), load back onto a model of the same architecture
(:func:`load_lora`), merge into the weights (:func:`merge_lora`, the adapted model then costs
nothing extra) or are removed to restore the base model (:func:`remove_lora`).

While adapters are attached, the state dict of the model holds the base weights under
``...attn.parametrizations.in_proj_weight.original`` and the adapters beside them; compute an
encoder fingerprint before attaching adapters, or after merging or removing them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from msclip.errors import AdapterError, HeadConfigError, not_a_file
from msclip.heads.runconfig import LORA_TARGETS

__all__ = [
    "LORA_FORMAT",
    "LORA_TARGETS",
    "LoRAConfig",
    "LoRAWeight",
    "apply_lora",
    "has_lora",
    "load_lora",
    "lora_config",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "read_lora",
    "remove_lora",
    "save_lora",
]

logger = logging.getLogger(__name__)

#: ``format`` entry of the metadata of an adapter file.
LORA_FORMAT = "msclip-lora"
_FORMAT_VERSION = "1"
_ATTN = ("q", "k", "v")


@dataclass(frozen=True)
class LoRAConfig:
    """Settings of the adapters.

    Attributes:
        rank: Rank ``r`` of each adapter.
        alpha: Scaling numerator: the update is ``(alpha / r) B A``.
        dropout: Dropout probability on the input features of ``A`` (training only).
        targets: Subset of :data:`LORA_TARGETS`; ``("q", "v")`` is the LoRA paper's choice,
            add ``"c_fc", "c_proj"`` for the MLP.
        blocks: Indices of the adapted transformer blocks (negative counts from the end);
            all blocks when None.
        seed: Seed of the initialisation of ``A`` (``B`` is zero).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    blocks: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise HeadConfigError(f"LoRA rank must be an integer >= 1; got {self.rank!r}")
        if not (
            isinstance(self.alpha, (int, float))
            and not isinstance(self.alpha, bool)
            and math.isfinite(self.alpha)
            and self.alpha > 0
        ):
            raise HeadConfigError(
                f"LoRA alpha must be a positive number (the update is alpha / rank * B A: 0 "
                f"trains nothing); got {self.alpha!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise HeadConfigError(f"LoRA dropout must lie in [0, 1); got {self.dropout!r}")
        targets = tuple(self.targets)
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets or len(set(targets)) != len(targets):
            raise HeadConfigError(
                f"LoRA targets {list(targets)} are invalid; choose distinct names among "
                f"{list(LORA_TARGETS)} (e.g. ['q', 'v'], plus 'c_fc', 'c_proj' for the MLP)"
            )
        object.__setattr__(self, "targets", targets)
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["blocks"] = None if self.blocks is None else list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoRAConfig:
        """Inverse of :meth:`to_dict`."""
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known}
        if "targets" in kwargs:
            kwargs["targets"] = tuple(kwargs["targets"])
        if kwargs.get("blocks") is not None:
            kwargs["blocks"] = tuple(kwargs["blocks"])
        return cls(**kwargs)


class LoRAWeight(nn.Module):
    """Parametrisation ``W -> W + (alpha / r) B_s A_s`` on row slices ``s`` of a weight.

    Args:
        shape: ``(out, in)`` of the adapted weight.
        slices: Name -> ``(start, stop)`` rows of each adapted part (``q``, ``v`` ... for a
            fused projection; ``weight`` with all rows for a plain linear layer).
        rank: Rank ``r``.
        scaling: ``alpha / r``.
        dropout: Probability of dropping an input feature of ``A`` (training only).
        generator: Generator of the initialisation of ``A``.
        dtype: Dtype of the adapters (that of the weight).
        device: Device of the adapters.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        slices: Mapping[str, tuple[int, int]],
        rank: int,
        scaling: float,
        dropout: float,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int(shape[0]), int(shape[1])
        self.slices = dict(sorted(slices.items(), key=lambda kv: kv[1][0]))
        self.rank = rank
        self.scaling = scaling
        self.dropout = dropout
        self.param_order: list[str] = []
        for name, (start, stop) in self.slices.items():
            a = torch.empty(rank, self.in_features)
            # nn.Linear's default initialisation (as the LoRA reference code), drawn on the CPU
            # from a seeded generator so that every device gets the same adapters.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.register_parameter(
                f"lora_A_{name}", nn.Parameter(a.to(device=device, dtype=dtype))
            )
            self.register_parameter(
                f"lora_B_{name}",
                nn.Parameter(torch.zeros(stop - start, rank, device=device, dtype=dtype)),
            )

    def delta(self, name: str) -> torch.Tensor:
        """The update ``(alpha / r) B A`` of one part (dropout applied in training mode)."""
        a = getattr(self, f"lora_A_{name}")
        if self.training and self.dropout > 0:
            keep = torch.rand(self.in_features, device=a.device) >= self.dropout
            a = a * keep.to(a.dtype) / (1.0 - self.dropout)
        return (getattr(self, f"lora_B_{name}") @ a) * self.scaling

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        pieces = []
        row = 0
        for name, (start, stop) in self.slices.items():
            if start > row:
                pieces.append(weight[row:start])
            pieces.append(weight[start:stop] + self.delta(name))
            row = stop
        if row < weight.shape[0]:
            pieces.append(weight[row:])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)

    def extra_repr(self) -> str:
        return f"parts={list(self.slices)}, rank={self.rank}, scaling={self.scaling:g}"


# --------------------------------------------------------------------------------------------
# Attaching, merging, removing
# --------------------------------------------------------------------------------------------


def _visual(model: nn.Module) -> nn.Module:
    clip = getattr(model, "clip", model)
    visual = getattr(clip, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise HeadConfigError(
            "LoRA needs an msclip.MSCLIP (or OpenCLIP) model whose image tower is a vision "
            "transformer with transformer.resblocks; got "
            f"{type(model).__name__}"
        )
    return visual


def _block_indices(n_blocks: int, blocks: Sequence[int] | None) -> list[int]:
    if blocks is None:
        return list(range(n_blocks))
    out = []
    for b in blocks:
        i = b + n_blocks if b < 0 else b
        if not 0 <= i < n_blocks:
            raise HeadConfigError(
                f"LoRA block {b} is out of range for an image tower of {n_blocks} blocks "
                f"(valid: 0..{n_blocks - 1} or -1..-{n_blocks})"
            )
        out.append(i)
    return sorted(set(out))


def _sites(block: nn.Module, targets: Sequence[str]) -> list[tuple[nn.Module, str, dict]]:
    """(module, tensor name, row slices) of every weight a block adapts."""
    sites: list[tuple[nn.Module, str, dict]] = []
    attn_parts = [t for t in targets if t in _ATTN]
    if attn_parts:
        attn = block.attn
        w = attn.in_proj_weight
        if not isinstance(attn, nn.MultiheadAttention) or w is None:
            raise HeadConfigError(
                "LoRA on q/k/v needs nn.MultiheadAttention with a fused in_proj_weight; this "
                f"block has {type(attn).__name__}"
            )
        width = w.shape[0] // 3
        rows = {"q": (0, width), "k": (width, 2 * width), "v": (2 * width, 3 * width)}
        sites.append((attn, "in_proj_weight", {p: rows[p] for p in attn_parts}))
    for name in ("c_fc", "c_proj"):
        if name in targets:
            lin = getattr(block.mlp, name)
            sites.append((lin, "weight", {"weight": (0, lin.weight.shape[0])}))
    return sites


def has_lora(model: nn.Module) -> bool:
    """Whether LoRA adapters are attached to the image tower."""
    return getattr(_visual(model), "_msclip_lora", None) is not None


def lora_config(model: nn.Module) -> LoRAConfig | None:
    """The config of the attached adapters, or None."""
    return getattr(_visual(model), "_msclip_lora", None)


def _attached(model: nn.Module) -> list[tuple[str, nn.Module, str, LoRAWeight]]:
    """(block-relative prefix, module, tensor name, parametrisation) of every adapter."""
    visual = _visual(model)
    out = []
    for i, block in enumerate(visual.transformer.resblocks):
        for sub, tensor in (
            ("attn", "in_proj_weight"),
            ("mlp.c_fc", "weight"),
            ("mlp.c_proj", "weight"),
        ):
            module = block.get_submodule(sub)
            if parametrize.is_parametrized(module, tensor):
                for p in module.parametrizations[tensor]:
                    if isinstance(p, LoRAWeight):
                        out.append((f"transformer.resblocks.{i}.{sub}.{tensor}", module, tensor, p))
    return out


def apply_lora(model: nn.Module, config: LoRAConfig | None = None) -> list[nn.Parameter]:
    """Attach LoRA adapters to the image tower (in place).

    Only the adapters are made trainable here; freezing the rest is the job of the fine-tuning
    mode (:func:`msclip.heads.modes.apply_finetune_mode`).

    Args:
        model: An :class:`msclip.MSCLIP` (or its OpenCLIP ``clip`` module).
        config: Adapter settings (:class:`LoRAConfig` defaults when omitted).

    Returns:
        The adapter parameters.

    Raises:
        HeadConfigError: Adapters are already attached, a block index is out of range or the
            tower is not an OpenCLIP vision transformer.
    """
    config = config or LoRAConfig()
    visual = _visual(model)
    if has_lora(model):
        raise HeadConfigError(
            "LoRA adapters are already attached to this model; merge_lora or remove_lora first"
        )
    blocks = visual.transformer.resblocks
    indices = _block_indices(len(blocks), config.blocks)
    _rebase_identity(model)  # earlier in-place changes are counted before the weights move
    generator = torch.Generator().manual_seed(int(config.seed))
    params: list[nn.Parameter] = []
    for i in indices:
        for module, tensor, slices in _sites(blocks[i], config.targets):
            w = getattr(module, tensor)
            lora = LoRAWeight(
                tuple(w.shape),
                slices,
                config.rank,
                config.scaling,
                float(config.dropout),
                generator,
                w.dtype,
                w.device,
            )
            lora.param_order = list(module._parameters)  # restored when detached
            # unsafe=True: the parametrisation keeps the shape and dtype; skipping the check
            # avoids one extra forward of every weight at registration.
            parametrize.register_parametrization(module, tensor, lora, unsafe=True)
            params.extend(lora.parameters())
    visual._msclip_lora = config
    _rebase_identity(model)  # the base weights moved under the parametrisations, unchanged
    logger.info(
        "LoRA rank %d on %s of blocks %s: %d parameters",
        config.rank,
        list(config.targets),
        indices,
        sum(p.numel() for p in params),
    )
    return params


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the attached adapters (empty when none)."""
    return [p for _, _, _, lora in _attached(model) for p in lora.parameters()]


def _detach_all(model: nn.Module, merge: bool) -> int:
    visual = _visual(model)
    sites = _attached(model)
    was_training = [lora.training for *_, lora in sites]
    for _, module, tensor, lora in sites:
        lora.eval()  # no dropout in what is merged
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=merge)
        # torch re-registers the weight last; put it back in place so that the state dict
        # has the base model's key order again.
        params = module._parameters
        order = [k for k in lora.param_order if k in params]
        module._parameters = {**{k: params[k] for k in order}, **params}
    for (*_, lora), t in zip(sites, was_training, strict=True):
        lora.train(t)
    visual._msclip_lora = None
    # removed: the base weights are back as they were; merged: they are other weights
    _rebase_identity(model, weights_changed=merge)
    return len(sites)


def _rebase_identity(model: nn.Module, weights_changed: bool = False) -> None:
    """Keep an :class:`msclip.MSCLIP`'s identity (checkpoint hash, fingerprint) across attaching
    and removing adapters, which change its structure, not its weights (see
    :meth:`msclip.model.MSCLIP.rebase_identity`); other modules carry none."""
    rebase = getattr(model, "rebase_identity", None)
    if rebase is not None:
        rebase(weights_changed=weights_changed)


def merge_lora(model: nn.Module) -> None:
    """Fold the adapters into the weights (``W <- W + (alpha / r) B A``) and detach them.

    The merged model computes what the adapted one did (up to float rounding) with the plain
    OpenCLIP weights; its state dict has the usual keys again.

    Raises:
        HeadConfigError: No adapters are attached.
    """
    if not has_lora(model):
        raise HeadConfigError("no LoRA adapters are attached to this model; nothing to merge")
    with torch.no_grad():
        n = _detach_all(model, merge=True)
    logger.info("merged %d LoRA adapters into the weights", n)


def remove_lora(model: nn.Module) -> None:
    """Detach the adapters and restore the base weights unchanged.

    Raises:
        HeadConfigError: No adapters are attached.
    """
    if not has_lora(model):
        raise HeadConfigError("no LoRA adapters are attached to this model; nothing to remove")
    _detach_all(model, merge=False)


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors, keyed ``transformer.resblocks.{i}.attn.in_proj_weight.lora_A_q``
    (relative to the image tower), on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for prefix, _, _, lora in _attached(model):
        for name, p in lora.named_parameters():
            out[f"{prefix}.{name}"] = p.detach().cpu().contiguous()
    return out


def save_lora(
    model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write the adapters alone to a safetensors file (atomically).

    The file's metadata holds ``format`` (``msclip-lora``), ``format_version``, ``config`` (the
    :class:`LoRAConfig` as JSON), ``width`` and ``n_blocks`` of the image tower, plus
    ``metadata`` (strings, e.g. the fingerprint of the encoder the adapters were trained on).

    Raises:
        HeadConfigError: No adapters are attached.
    """
    from safetensors.torch import save_file

    from msclip.io import atomic_write

    config = lora_config(model)
    if config is None:
        raise HeadConfigError("no LoRA adapters are attached to this model; nothing to save")
    visual = _visual(model)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "format": LORA_FORMAT,
            "format_version": _FORMAT_VERSION,
            "config": json.dumps(config.to_dict()),
            "width": str(_width(visual)),
            "n_blocks": str(len(visual.transformer.resblocks)),
        }
    )
    tensors = lora_state_dict(model)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), suffix=".safetensors")


def _width(visual: nn.Module) -> int:
    return int(visual.transformer.resblocks[0].attn.embed_dim)


def read_lora(path: str | os.PathLike) -> tuple[LoRAConfig, dict[str, torch.Tensor], dict]:
    """Read an adapter file: ``(config, tensors, metadata)``.

    Raises:
        AdapterError: Missing or unreadable file, or not an msclip LoRA file.
    """
    from safetensors import SafetensorError, safe_open

    p = os.fspath(path)
    why = not_a_file(p, "a LoRA adapter file (.safetensors)")
    if why == "not found":
        raise AdapterError(f"LoRA adapter file not found: {p}")
    if why is not None:  # a folder or a device (/dev/null): said as it is
        raise AdapterError(f"LoRA adapter file {p} {why}")
    try:
        with safe_open(p, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"cannot read LoRA adapter file {p}: {err}") from err
    if meta.get("format") != LORA_FORMAT:
        raise AdapterError(
            f"{p} is not an msclip LoRA adapter file (metadata format = "
            f"{meta.get('format')!r}, expected {LORA_FORMAT!r}); write one with save_lora"
        )
    try:
        config = LoRAConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError, HeadConfigError) as err:
        raise AdapterError(f"{p} has no valid LoRA config in its metadata: {err}") from err
    return config, tensors, meta


def load_lora(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Attach the adapters of a file written by :func:`save_lora` to ``model`` and load them.

    Args:
        model: A model of the architecture the adapters were trained on, without adapters.
        path: The safetensors file.

    Returns:
        The file's metadata (strings).

    Raises:
        AdapterError: Unreadable file, or adapters that do not fit the model (width, block
            count, tensor names or shapes; the message names them).
    """
    config, tensors, meta = read_lora(path)
    visual = _visual(model)
    width, n_blocks = _width(visual), len(visual.transformer.resblocks)
    if meta.get("width") != str(width) or meta.get("n_blocks") != str(n_blocks):
        raise AdapterError(
            f"{os.fspath(path)} holds adapters for an image tower of width {meta.get('width')} "
            f"and {meta.get('n_blocks')} blocks; this model has width {width} and {n_blocks} "
            "blocks: load them onto the architecture they were trained on"
        )
    if has_lora(model):
        raise AdapterError("the model already has LoRA adapters; merge_lora or remove_lora first")
    apply_lora(model, config)
    own = {
        f"{prefix}.{name}": p
        for prefix, _, _, lora in _attached(model)
        for name, p in lora.named_parameters()
    }
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        remove_lora(model)
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:4]}" if missing else "",
                f"unexpected {unexpected[:4]}" if unexpected else "",
                ", ".join(
                    f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in shapes[:4]
                ),
            )
            if part
        )
        raise AdapterError(f"LoRA adapters in {os.fspath(path)} do not fit the model: {detail}")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(tensors[k].to(dtype=p.dtype, device=p.device))
    return {k: v for k, v in meta.items()}
