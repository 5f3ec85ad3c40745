"""What the image-level and the dense runners of ``msclip-finetune`` share.

The results of a run (:class:`MethodResult`, :class:`RunResult`), the model it runs on (loading
in the run's precision: :func:`run_precision`; its row label and the facts records and protocol
cards carry), the files a trained encoder leaves next to its head (:func:`save_encoder_files`),
the check that a run never overwrites another (:func:`check_outputs`) and the protocol card
(:func:`write_protocol`). The runners themselves are :mod:`msclip.heads.finetune` (image-level
tasks) and :mod:`msclip.heads.dense_finetune` (dense tasks); neither imports the other's module
for these pieces.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msclip.errors import ConfigError
from msclip.heads.data import TaskData
from msclip.heads.runconfig import FinetuneRunConfig

__all__ = [
    "RUNTIME_OPTIONS",
    "MethodResult",
    "RunResult",
    "SameRun",
    "autocast_to",
    "check_outputs",
    "default_label",
    "encoder_hparams",
    "head_file_info",
    "load_run_model",
    "model_facts",
    "refuse_other_run",
    "run_precision",
    "run_settings",
    "save_encoder_files",
    "settings_changes",
    "tower_autocast",
    "write_protocol",
]


@dataclass
class MethodResult:
    """What one method produced.

    Attributes:
        label: the method's label (``knn``, ``linear-lora`` ...).
        result: the test metrics, intervals and scores (:class:`~msclip.heads.ProbeResult`).
        main_metric: the task's main metric.
        record: the metric record written to the results folder.
        files: files written for this method (head, adapters, history ...).
        seconds: wall time of the method.
    """

    label: str
    result: Any
    main_metric: str
    record: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RunResult:
    """Everything a run produced.

    Attributes:
        data: the labelled data and its splits.
        methods: one result per method label, in run order.
        protocol: the protocol card (also written as ``protocol.yaml``).
        output_dir: the run folder.
        save_path: the results folder (records, summary.csv, report.md).
        unreadable: images that could not be read (skipped and counted).
    """

    data: TaskData
    methods: list[MethodResult]
    protocol: dict[str, Any]
    output_dir: Path
    save_path: Path
    unreadable: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """One row per method: main metric with its interval, train / test sizes, seconds."""
        rows = []
        for m in self.methods:
            ci = m.result.ci.get(m.main_metric)
            value = m.result.metrics.get(m.main_metric, m.record["metrics"].get(m.main_metric))
            rows.append({
                "method": m.label, "metric": m.main_metric, "value": value,
                "ci_low": ci.low if ci is not None else None,
                "ci_high": ci.high if ci is not None else None,
                "n_train": m.result.n_train, "n_test": m.result.n_test,
                "seconds": round(m.seconds, 2),
            })  # fmt: skip
        return rows


def default_label(cfg: FinetuneRunConfig, model: Any) -> str:
    if cfg.model_label:
        return cfg.model_label
    name = cfg.model_name
    stem = Path(name).stem if _model_name_is_file(name) else name
    if cfg.ckpt_path:
        ckpt = Path(cfg.ckpt_path).stem
        label = f"{stem}@{ckpt}" if stem else ckpt
    elif stem != name or cfg.pretrained:
        label = str(stem or model.config.name)
    else:
        label = f"{name}-random"
    return f"{label}-bf16" if cfg.precision == "bf16" else label


def _model_name_is_file(name: str | None) -> bool:
    """``--model-name`` names a checkpoint file (an msclip ``.safetensors``, or any file that
    :func:`msclip.create_model` reads as one), whose weights are loaded."""
    from msclip.factory import names_checkpoint_file

    return bool(name) and (str(name).endswith(".safetensors") or names_checkpoint_file(name))


def run_precision(cfg: FinetuneRunConfig) -> str:
    """The precision the encoder is loaded in: ``auto`` lets the machine choose (bf16 where it is
    native, :mod:`msclip.hardware`) only where the encoder is frozen and image-level features are
    extracted once; a run that trains the tower or a dense decoder over its maps loads float32
    (training precision is not the machine's choice: results must not depend on the CPU kind).
    A tower that trains keeps float32 weights under ``bf16`` too, which it computes in by
    autocast (:func:`tower_autocast`), as ``msclip-train`` does."""
    if cfg.encoder_mode != "frozen" and cfg.precision in ("auto", "bf16"):
        return "fp32"
    if cfg.precision != "auto":
        return cfg.precision
    return "fp32" if cfg.dense else "auto"


def tower_autocast(cfg: FinetuneRunConfig, device: Any) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of a run whose image tower trains (``None``: none) and why.

    Weights that train stay float32; ``bf16`` (asked for, or ``auto`` on a GPU with native bf16,
    :func:`msclip.hardware.training_precision`, the rule of ``msclip-train``) computes the tower
    in bf16 by autocast over them. Training the bf16 weights themselves lost every update below
    bf16's resolution (on msclip-demo, 3 epochs of full fine-tuning: the update half the size of
    float32's, cosine 0.57 to it). A frozen encoder, and ``fp32`` or ``fp16``, get none."""
    from msclip.hardware import training_precision

    if cfg.encoder_mode == "frozen" or cfg.precision not in ("auto", "bf16"):
        return None, ""
    precision, reason = training_precision(cfg.precision, device)
    return (torch.bfloat16 if precision == "bf16" else None), reason


def autocast_to(device_type: str, dtype: torch.dtype | None) -> Any:
    """The context a tower computes in: ``torch.autocast`` to ``dtype`` on ``device_type``
    (:func:`tower_autocast`'s choice), or nothing where ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def load_run_model(cfg: FinetuneRunConfig, on_model: Callable[[Any], None] | None = None) -> Any:
    """The run's model, in the run's precision (:func:`run_precision`); ``on_model`` is called
    with it once loaded (``msclip-finetune`` prints its precision line there)."""
    from msclip.factory import create_model
    from msclip.hardware import resolve_device

    device = resolve_device("auto" if cfg.device is None else cfg.device)
    torch.manual_seed(cfg.seed)
    precision = run_precision(cfg)
    if cfg.ckpt_path is not None:
        if cfg.model_name is None:
            model = create_model(cfg.ckpt_path, device=device, precision=precision)
        else:
            model = create_model(cfg.model_name, cfg.ckpt_path, device=device, precision=precision)
    else:
        # random weights keep their seed: the heads record how to draw them again
        drawn = not cfg.pretrained and not _model_name_is_file(cfg.model_name)
        model = create_model(
            cfg.model_name, True if cfg.pretrained else None, device=device,
            precision=precision, seed=int(cfg.seed) if drawn else None,
        )  # fmt: skip
    if cfg.precision == "auto" and precision != "auto":
        # what the run's records and status line say: auto was asked for, the rule chose
        model.precision_requested = "auto"
        model.precision_reason = (
            "a dense decoder trains on the encoder's maps: fp32 whatever the machine"
            if cfg.dense and cfg.encoder_mode == "frozen"
            else f"the image tower trains (encoder mode {cfg.encoder_mode}): fp32 weights, and "
            "bf16 autocast over them only on a GPU with native bf16, as msclip-train trains"
        )
    dtype, why = tower_autocast(cfg, device)
    if dtype is not None:
        model.precision_requested = cfg.precision
        model.precision_reason = (
            f"{why}; the image tower trains (encoder mode {cfg.encoder_mode}): bf16 autocast over "
            "float32 weights, as msclip-train trains"
        )
        if torch.device(device).type == "cpu":
            from msclip.hardware import cpu_bf16_native, cpu_info, warn_emulated_bf16

            if not cpu_bf16_native():
                warn_emulated_bf16(
                    f"precision bf16 on a CPU without native bf16 ({cpu_info().kind}): the image "
                    "tower's matrix products are emulated there under autocast, typically 100x "
                    "or more slower than fp32; use --precision fp32 (or auto)"
                )
    from msclip.memory import release_library_pages

    release_library_pages(device)  # on the CPU: library code that ran once (msclip.memory)
    if on_model is not None:
        on_model(model)
    return model


def model_facts(cfg: FinetuneRunConfig, model: Any, label: str) -> dict[str, Any]:
    """The model entry of records and the protocol card."""
    info = model.describe()
    weights = "file" if (cfg.ckpt_path or _model_name_is_file(cfg.model_name)) else (
        "published" if cfg.pretrained else "random")  # fmt: skip
    return {
        "label": label, "name": cfg.model_name or model.config.name,
        "registry_name": model.config.name, "arch": info["arch"],
        "checkpoint_path": str(Path(cfg.ckpt_path).resolve()) if cfg.ckpt_path
        else info["checkpoint_path"],
        "checkpoint_sha256": info["checkpoint_sha256"], "fingerprint": info["fingerprint"],
        "weights": weights, "pretrained": bool(cfg.pretrained), "bands": info["bands"],
        "taps": list(model.taps), "image_size": model.image_size, "embed_dim": info["embed_dim"],
        "precision": info["precision"], "precision_reason": info["precision_reason"],
        "device": str(model.device),
    }  # fmt: skip


RUNTIME_OPTIONS = ("workers", "progress", "resume", "save_path", "output_dir", "cache_dir",
                    "feature_cache", "text_cache", "encode_batch_size", "save_every", "device",
                    "model_label", "method", "n_resamples", "confidence")  # fmt: skip


#: Options of dense runs that image-level runs leave out of their settings and run keys: they do
#: nothing there, and leaving them out keeps the keys of image-level runs started before the
#: options existed (such runs resume and are skipped as before).
DENSE_ONLY_SETTINGS = ("eval_mode",)


def setting_facts(cfg: FinetuneRunConfig) -> dict[str, Any]:
    """The options that define a run: every option but the runtime ones (and, for an
    image-level run, :data:`DENSE_ONLY_SETTINGS`)."""
    return {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in RUNTIME_OPTIONS and (cfg.dense or k not in DENSE_ONLY_SETTINGS)
    }


def run_settings(cfg: FinetuneRunConfig) -> dict[str, Any]:
    """The settings that define a run (:func:`setting_facts`), JSON-ready: kept in training
    checkpoints and heads so a mismatch can be named."""
    return json.loads(json.dumps(setting_facts(cfg), sort_keys=True, default=str))


def settings_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``option old -> new`` for every setting that differs."""
    return [
        f"{k} {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]


def refuse_other_run(
    path: Path,
    stored_key: str | None,
    stored_settings: Mapping[str, Any] | None,
    run_key: str,
    settings: Mapping[str, Any] | None,
    same_run: SameRun | None = None,
) -> None:
    """Refuse to resume from ``path`` (a training checkpoint, or a finished head) when it was
    written by a run of other settings, data or model (``stored_key`` is not ``run_key``),
    naming the settings that differ (:func:`settings_changes`). ``same_run``: the test that
    accepts a key written with other values of options its method does not use only.

    Raises:
        CheckpointError: the keys differ.
    """
    from msclip.errors import CheckpointError

    if stored_key == run_key:
        return
    if same_run is not None and same_run(stored_key, stored_settings):
        return
    if stored_settings and settings:
        idle = same_run.idle if same_run is not None else frozenset()
        changes = [
            c for c in settings_changes(stored_settings, settings) if c.split()[0] not in idle
        ]
        what = (
            f"other settings ({', '.join(changes)})"
            if changes
            else "the same settings but other data or another model"
        )
    else:
        what = "other settings, data or model"
    raise CheckpointError(
        f"{path} belongs to a run with {what}; resume it with the same options, or start a "
        "new run in another output_dir",
        param="resume",
    )


class SameRun:
    """Whether a stored run key is that of this run for one method, up to the options the
    method does not use (``idle``): the key recomputed by ``key_with`` with the stored values
    of those options must be the stored key.

    A run's key covers every option, so without this, options of other methods kept a folder
    from growing: a ridge run stores ``epochs`` (its default, which ridge ignores, and which
    it could not be given), and adding ``linear --epochs 5`` with ``resume`` was refused.
    """

    def __init__(self, idle: frozenset[str], key_with: Callable[[dict[str, Any]], str]) -> None:
        self.idle = idle
        self.key_with = key_with

    def __call__(self, stored_key: str | None, stored: Mapping[str, Any] | None) -> bool:
        if not stored_key or not stored:
            return False
        old = {k: stored[k] for k in self.idle if k in stored}
        try:
            return bool(old) and self.key_with(old) == stored_key
        except (TypeError, ValueError):  # a stored value the options no longer take
            return False


def head_file_info(path: Path) -> dict[str, Any]:
    """The ``info`` metadata of a head file, read without its tensors (a kNN head holds its
    whole memory bank).

    Raises:
        CheckpointError: an unreadable file.
    """
    from safetensors import SafetensorError, safe_open

    from msclip.errors import CheckpointError

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"cannot read head file {path} (damaged or cut short?): {err}; remove its folder "
            f"({path.parent}) to run that method again",
            param="resume",
        ) from err
    return info if isinstance(info, dict) else {}


def save_encoder_files(
    cfg: FinetuneRunConfig,
    model: Any,
    folder: Path,
    label: str,
    base_fingerprint: str,
    base_name: str,
) -> dict[str, Any]:
    """Write what a head needs of a trained encoder and return the head's encoder facts.

    ``frozen``: nothing (the facts of the encoder as it is); ``lora``: the adapters on their
    own (and the merged weights when ``merge_lora``); ``last-n`` / ``full`` / ``scratch``: the
    fine-tuned weights as ``encoder.safetensors``.
    """
    from msclip.heads.checkpoint import encoder_facts
    from msclip.pretrained import file_sha256, save_checkpoint

    mode = cfg.encoder_mode
    if mode == "frozen":
        return encoder_facts(model, "frozen")
    if mode == "lora":
        from msclip.heads.lora import merge_lora, save_lora

        path = folder / "adapters.safetensors"
        save_lora(model, path, {"base_fingerprint": base_fingerprint, "base_name": base_name})
        facts = encoder_facts(model, "lora")
        facts["fingerprint"] = base_fingerprint
        facts["adapters"] = {"file": path.name, "sha256": file_sha256(path)}
        if cfg.merge_lora:
            merge_lora(model)
            merged = folder / "merged.safetensors"
            save_checkpoint(model, merged, {"msclip_finetune": label})
            model.checkpoint_sha256 = file_sha256(merged)
            model.checkpoint_path = str(merged)
            facts["merged_fingerprint"] = model.fingerprint(precision=False)
            facts["merged_file"] = merged.name
        return facts
    path = folder / "encoder.safetensors"
    save_checkpoint(model, path, {"msclip_finetune": label})
    model.checkpoint_sha256 = file_sha256(path)
    model.checkpoint_path = str(path)
    return encoder_facts(model, mode, encoder_file=str(path), base_fingerprint=base_fingerprint)


def check_outputs(cfg: FinetuneRunConfig, labels: Sequence[str]) -> None:
    from msclip.io import check_output

    if cfg.cache_dir and cfg.feature_cache:  # before anything is created
        check_output(cfg.cache_dir, kind="dir", param="cache_dir")
    out = check_output(cfg.output_dir, kind="dir", param="output_dir")
    check_output(cfg.save_path, kind="dir", param="save_path")
    if cfg.resume:
        return
    for label in labels:
        folder = out / label
        held = sorted(f.name for f in folder.iterdir()) if folder.is_dir() else []
        if held:
            raise ConfigError(
                f"{out} already holds a run of {label} ({folder}: {', '.join(held[:4])}); pass "
                "resume to continue or complete it, or choose another output_dir",
                param="resume",
            )
    card = out / "protocol.yaml"
    if card.is_file():
        raise ConfigError(
            f"{out} already holds the protocol card of another run ({card}); choose another "
            "output_dir, or pass resume to add these methods to that run",
            param="resume",
        )


def write_protocol(path: Path, protocol: dict[str, Any]) -> Path:
    """Write the protocol card; the methods an earlier card of the same folder describes (a
    resumed run adding methods, or running some of them again) are kept beside this run's,
    with their features and in the card's ``method`` setting."""
    import yaml

    from msclip.io import jsonable, write_text

    if path.is_file() and isinstance(protocol.get("methods"), dict):
        try:
            before = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            before = None
        if isinstance(before, dict) and isinstance(before.get("methods"), dict):
            kept = {k: v for k, v in before["methods"].items() if k not in protocol["methods"]}
            if kept:
                protocol = {**protocol, "methods": {**kept, **protocol["methods"]}}
                protocol = _keep_earlier(protocol, before)

    return write_text(path, yaml.safe_dump(jsonable(protocol), sort_keys=False, width=100))


def _keep_earlier(protocol: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """``protocol`` with the feature specs and ``method`` setting of the methods an earlier card
    describes and this run did not run (a resume of some of them): the card keeps their results,
    and without this said neither how their features were made nor that they were run."""
    features, earlier = protocol.get("features"), before.get("features")
    if isinstance(features, dict) and isinstance(earlier, dict):
        kept = {k: v for k, v in earlier.items() if k not in features}
        protocol = {**protocol, "features": {**kept, **features}}
    config, old = protocol.get("config"), before.get("config")
    if isinstance(config, dict) and isinstance(old, dict):
        now, then = config.get("method"), old.get("method")
        if isinstance(now, list) and isinstance(then, list):
            methods = [*then, *(m for m in now if m not in then)]
            protocol = {**protocol, "config": {**config, "method": methods}}
    return protocol


def encoder_hparams(cfg: FinetuneRunConfig) -> dict[str, Any]:
    """The settings of the image tower's training that a protocol card and a head file record
    (empty for a frozen tower): learning rate, layer decay, weight decay, and the mode's own
    (LoRA rank, alpha, dropout and targets; ``last_n``)."""
    mode = cfg.encoder_mode
    if mode == "frozen":
        return {}
    hp: dict[str, Any] = {
        "encoder_lr": cfg.encoder_lr,
        "layer_decay": cfg.layer_decay,
        "encoder_weight_decay": cfg.encoder_weight_decay,
    }
    if mode == "lora":
        hp.update(
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            lora_targets=list(cfg.lora_targets),
        )
    if mode == "last-n":
        hp["last_n"] = cfg.last_n
    return hp
