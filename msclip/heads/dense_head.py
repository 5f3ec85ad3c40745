"""Head-only checkpoints of dense decoders, bound to the encoder they read.

A dense head file is a safetensors file (no pickle) holding the decoders' tensors, each under
``<task>.<name>``, and as metadata (``format = "msclip-dense-head"``): the tasks (kind, outputs,
decoder and its options, loss settings, class or output names), the tapped blocks, the padding
mode, the method label that trained it and the encoder facts of
:func:`msclip.heads.checkpoint.encoder_facts` (fingerprint, LoRA adapters or fine-tuned weights
file). It is bound to its encoder exactly as image-level heads are
(:func:`msclip.heads.checkpoint.bind_head`): any other encoder is refused with both fingerprints
named. A UPerNet head of msclip-demo is a few MB where the encoder would add its own weights to
every checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from msclip.errors import CheckpointError
from msclip.heads.checkpoint import (
    DENSE_HEAD_FORMAT,
    check_format_version,
    head_file_contents,
    require_bound,
)

__all__ = [
    "DENSE_HEAD_FORMAT",
    "DenseHeadCheckpoint",
    "head_file_format",
    "read_dense_head",
    "save_dense_head",
]

_VERSION = "1"


@dataclass
class DenseHeadCheckpoint:
    """A dense head read back from its file.

    Attributes:
        tasks: one dict per task (``name``, ``kind`` ``segmentation`` / ``pixel-regression``,
            ``num_outputs``, ``decoder``, ``decoder_kwargs``, ``names``, ``prompt_names``,
            ``ignore_index`` ...).
        layers: tapped block indices.
        pad_mode: padding of inputs that are not a multiple of the patch.
        heads: ``{task name: decoder}`` (eval mode).
        encoder: facts of the encoder it was trained on.
        method: the label of the run that trained it (``upernet-frozen`` ...).
        info: the rest (dataset, test metrics, created ...).
        path: the file.
        bound: the fingerprint of the encoder :func:`~msclip.heads.checkpoint.bind_head` last
            accepted, or ``None``.
    """

    tasks: list[dict[str, Any]]
    layers: list[int]
    pad_mode: str
    heads: nn.ModuleDict
    encoder: dict[str, Any]
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    bound: str | None = field(default=None, repr=False, compare=False)

    def task(self, name: str | None = None) -> dict[str, Any]:
        """A task's entry (the first when ``name`` is omitted).

        Raises:
            CheckpointError: no task of that name.
        """
        if name is None:
            return self.tasks[0]
        for t in self.tasks:
            if t["name"] == name:
                return t
        raise CheckpointError(
            f"head {self.path} has no task {name!r}; its tasks: {[t['name'] for t in self.tasks]}",
            param="task",
        )

    def dense_model(self, model: Any) -> Any:
        """A :class:`~msclip.heads.dense.DenseModel` of ``model`` (the bound encoder) and these
        heads, in eval mode.

        Raises:
            CheckpointMismatchError: ``model`` is not the encoder the heads were trained on (see
                :func:`msclip.heads.checkpoint.bind_head`).
        """
        from msclip.heads.dense import DenseModel, DenseTask

        require_bound(self, model)

        tasks = [
            DenseTask(
                t["name"],
                "segmentation" if t["kind"] == "segmentation" else "regression",
                int(t["num_outputs"]),
                t["decoder"],
                dict(t.get("decoder_kwargs") or {}),
            )
            for t in self.tasks
        ]
        dm = DenseModel(model, self.layers, self.heads, self.pad_mode, tasks)
        return dm.to(model.device).eval()

    def crop_size(self, model: Any = None) -> int | None:
        """The side of the crops the head was trained on (and its validation and test images
        were predicted in windows of): the natural tile size of scene prediction. Read from the
        head's ``crop_size`` entry, else its run's settings; a run that set none trained on the
        model's input size (``model.image_size``, ``None`` without ``model``)."""
        for value in (
            self.info.get("crop_size"),
            (self.info.get("settings") or {}).get("crop_size"),
        ):
            if value is not None:
                return int(value)
        return None if model is None else int(model.image_size)


def save_dense_head(
    path: str | os.PathLike,
    heads: Mapping[str, nn.Module],
    *,
    tasks: Sequence[Mapping[str, Any]],
    layers: Sequence[int],
    pad_mode: str,
    encoder: Mapping[str, Any],
    method: str,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write the decoders of a dense run as a head-only safetensors file (atomically).

    Args:
        path: the ``.safetensors`` file.
        heads: ``{task name: decoder}``.
        tasks: one entry per task (see :class:`DenseHeadCheckpoint`).
        layers: tapped blocks.
        pad_mode: padding mode of the dense model.
        encoder: :func:`msclip.heads.checkpoint.encoder_facts` of the encoder it read.
        method: the run's label.
        info: anything else (JSON-ready).
    """
    from safetensors.torch import save_file

    from msclip._version import __version__
    from msclip.io import atomic_write, jsonable

    sd = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, head in heads.items()
        for k, v in head.state_dict().items()
    }
    meta = {
        "format": DENSE_HEAD_FORMAT,
        "format_version": _VERSION,
        "msclip_version": __version__,
        "tasks": json.dumps(jsonable([dict(t) for t in tasks])),
        "layers": json.dumps([int(i) for i in layers]),
        "pad_mode": pad_mode,
        "encoder": json.dumps(jsonable(dict(encoder))),
        "method": method,
        "info": json.dumps(jsonable(dict(info or {}))),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta), ".safetensors")


def head_file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` entry of a safetensors head file (``None`` when it has none).

    Raises:
        CheckpointError: a missing or unreadable file.
    """
    return head_file_contents(path, tensors=False)[0].get("format")


def read_dense_head(path: str | os.PathLike) -> DenseHeadCheckpoint:
    """Read a dense head file (safetensors: nothing is unpickled) and rebuild its decoders.

    Raises:
        CheckpointError: missing, unreadable or damaged file, or not a dense head file.
    """
    from msclip.errors import DecoderError
    from msclip.heads.decoders import build_decoder

    p = Path(path).expanduser()
    meta, tensors = head_file_contents(p)
    fmt = meta.get("format")
    if fmt != DENSE_HEAD_FORMAT:
        raise CheckpointError(
            f"{p} is not a dense head file (format {fmt!r}, expected {DENSE_HEAD_FORMAT!r}); "
            "dense heads are written by msclip-finetune --task segmentation / pixel-regression",
            param="head",
        )
    check_format_version(meta, p, _VERSION)
    try:
        tasks = json.loads(meta["tasks"])
        layers = [int(i) for i in json.loads(meta["layers"])]
        encoder = json.loads(meta["encoder"])
        width, patch = int(encoder["width"]), int(encoder["patch_size"])
        heads = nn.ModuleDict()
        for t in tasks:
            dec = build_decoder(
                t["decoder"],
                [width] * len(layers),
                int(t["num_outputs"]),
                patch,
                **dict(t.get("decoder_kwargs") or {}),
            )
            prefix = f"{t['name']}."
            dec.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
            heads[t["name"]] = dec.eval()
    except (KeyError, json.JSONDecodeError, RuntimeError, DecoderError, TypeError) as err:
        raise CheckpointError(f"dense head file {p} is damaged: {err}", param="head") from err
    return DenseHeadCheckpoint(
        tasks=tasks,
        layers=layers,
        pad_mode=meta.get("pad_mode", "reflect"),
        heads=heads,
        encoder=encoder,
        method=meta.get("method", ""),
        info=json.loads(meta.get("info", "{}")),
        path=str(p),
    )
