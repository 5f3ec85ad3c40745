"""The training loop of contrastive (continual) pretraining.

:func:`train` runs one process of a run (alone, or as one of the processes torchrun starts):
it checks the configuration and data before any work, builds the model (random, an RGB OpenCLIP
checkpoint extended to the bands by zero-init, or an msclip checkpoint), trains with the loss of
:mod:`msclip.train.loss` over global batches (:mod:`msclip.train.distributed`,
:mod:`msclip.train.step`), validates (:mod:`msclip.train.evaluate`), writes checkpoints that
continue the run exactly (:mod:`msclip.train.checkpoint`), and finally writes the model as an
msclip ``.safetensors`` that :func:`msclip.create_model` loads.

Exact resumption rests on three facts: every random choice of the data comes from seeds of
``(seed, epoch, index)`` (:mod:`msclip.train.data`), data loaders draw from their own generator
rather than the global one, and the checkpoint holds the optimiser, scheduler and global random
states with the position in the epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msclip.encode import WarningTally
from msclip.errors import CheckpointError, TrainingDivergedError
from msclip.hardware import cores_per_process, training_precision
from msclip.model import MSCLIP
from msclip.train.checkpoint import (
    checkpoint_path,
    find_latest,
    get_rng_state,
    load_train_checkpoint,
    prune_checkpoints,
    remove_unfinished,
    save_train_checkpoint,
    set_rng_state,
)
from msclip.train.config import ConfigError, TrainConfig
from msclip.train.data import (
    Augment,
    BadSampleError,
    ClassFolderDataset,
    EpochBatchSampler,
    PairCollator,
    PairDataset,
    PairTable,
    TooManyBadSamplesError,
    cut_captions,
    image_key,
    load_pairs,
    split_pairs,
)
from msclip.train.distributed import (
    DistContext,
    all_reduce_gradients,
    gather_counts,
    init_distributed,
)
from msclip.train.evaluate import (
    as_row,
    batch_loss,
    encode_pairs,
    retrieval_metrics,
    zero_shot_metrics,
)
from msclip.train.loss import ContrastiveLoss, clamp_logit_scale
from msclip.train.optim import (
    WarmupCosineRestarts,
    build_optimizer,
    param_groups,
    select_trainable,
)
from msclip.train.step import contrastive_step
from msclip.wording import plural

__all__ = ["TrainResult", "TrainState", "Trainer", "build_model", "train"]

logger = logging.getLogger(__name__)

#: Options that may differ between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "output_dir",
        "progress",
        "num_workers",
        "log_every",
        "save_every",
        "keep_checkpoints",
        "threads",
        "device",
        "dist_backend",
        "val_every",
        "val_batch_size",
        "zeroshot_data",
        "zeroshot_templates",
        "zeroshot_max_per_class",
        "cache_images",
        "epochs",
        "max_steps",
        "loss_impl",
        # the chunks of the feature cache: the same contrastive batch and gradient, up to float
        # rounding (as a resume with another number of processes), in another device's memory
        "accum_steps",
    }
)

#: Tables a resume compares by content (digest), not by the path given.
_TABLES = ("train_data", "val_data")

#: The file in ``output_dir`` that the first process of a live run holds locked.
LOCK_NAME = ".train.lock"


def _lock_output(out: Path) -> Any:
    """Hold ``out`` for this run (an exclusive ``flock`` on its lock file, released when the
    file is closed, also when the Trainer holding it is dropped, or when the process ends): a
    second run started into the same folder (a job launched twice, or resumed while the first
    still runs) would otherwise interleave its checkpoints, logs and final model with the
    first's, and both would report success."""
    from msclip.errors import OutputPathError
    from msclip.io.writers import lock_exclusive

    lock = out / LOCK_NAME
    for _ in range(10):
        try:
            out.mkdir(parents=True, exist_ok=True)
            fh = open(lock, "a+b")  # noqa: SIM115 - held open for the run
        except FileNotFoundError:  # the folder removed at this moment by a refused run
            continue
        except OSError as err:
            raise OutputPathError(
                f"cannot write to output_dir {str(out)!r} ({err.strerror}); choose a folder you "
                "can write to",
                param="output_dir",
            ) from err
        held = lock_exclusive(fh)
        if held is False:
            raise ConfigError(
                f"another training run is writing to output_dir {str(out)!r} (it holds "
                f"{lock}); wait for it to finish, or choose another output_dir",
                param="output_dir",
            )
        if held is None:  # no locks here (some network mounts, not POSIX)
            logger.info("cannot lock %s: a second run into it would not be noticed", out)
            return fh
        # a run that made the folder and was refused removes its lock file: a lock taken on the
        # removed file holds nothing, and a third run would lock a new file of that name
        try:
            if os.path.samestat(os.fstat(fh.fileno()), os.stat(lock)):
                return fh
        except FileNotFoundError:
            pass
        fh.close()
    raise OutputPathError(
        f"cannot hold output_dir {str(out)!r}: its lock file {lock} was removed again and again "
        "(other runs starting into it?); choose another output_dir",
        param="output_dir",
    )


@dataclass
class TrainState:
    """Position of the run.

    Attributes:
        step: optimiser steps done.
        epoch: current epoch (0-based).
        step_in_epoch: steps done in the current epoch.
        epoch_bad: unreadable samples met in the current epoch, over all processes.
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_bad: int = 0

    def to_dict(self) -> dict[str, int]:
        """Plain dict for checkpoints."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_bad": self.epoch_bad,
        }


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        output_dir: the run folder.
        final_checkpoint: the msclip ``.safetensors`` (written by the first process).
        steps: optimiser steps done.
        last_loss: training loss of the last step.
        metrics: validation rows (as in ``metrics.csv``).
    """

    output_dir: Path
    final_checkpoint: Path
    steps: int
    last_loss: float
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _is_file(value: str) -> bool:
    return os.path.isfile(value)


def build_model(cfg: TrainConfig) -> MSCLIP:
    """The model a run starts from (see ``--init``)."""
    from msclip.factory import create_model, get_model_entry

    # Training keeps float32 weights whatever the hardware (bf16 is autocast, see --precision);
    # create_model's own default would give bf16 weights on a CPU with native bf16.
    fp32 = "fp32"
    if cfg.init == "random":
        model = create_model(cfg.model, None, bands=cfg.bands, precision=fp32)
    elif cfg.init == "pretrained":
        model = create_model(cfg.model, True, bands=cfg.bands, precision=fp32)
    elif _is_file(cfg.init) and cfg.model is None:
        model = create_model(cfg.init, bands=cfg.bands, precision=fp32)
    else:
        entry = get_model_entry(str(cfg.model))
        bands = cfg.bands if cfg.bands is not None else entry.bands
        source: str | Path = (
            Path(cfg.init) if _is_file(cfg.init) else get_model_entry(cfg.init).name
        )
        # Giving the bands explicitly makes the loader extend an RGB patch kernel by zero-init.
        model = create_model(entry.name, source, bands=bands, precision=fp32)
    # The weights are about to change: forget the provenance of the initial file.
    model.checkpoint_path = None
    model.checkpoint_sha256 = None
    return model


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    from msclip.io import write_text

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _read_csv(path: Path, max_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if int(float(r.get("step", 0) or 0)) <= max_step]


class Trainer:
    """One process of a training run (use :func:`train`).

    Args:
        cfg: validated configuration.
        ctx: process context.
        hooks: called with the trainer after every optimiser step (tests, custom logging).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext,
        hooks: Sequence[Callable[[Trainer], None]] = (),
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.hooks = list(hooks)
        self.state = TrainState()
        from msclip.io import check_output

        # before any work: a file in the way or an unwritable place is named with its option
        self.out = check_output(cfg.output_dir, kind="dir", param="output_dir")
        self.last_loss = math.nan
        self.train_rows: list[dict[str, Any]] = []
        self.metric_rows: list[dict[str, Any]] = []
        self._logged_bad = 0
        self._warned: set[tuple[str, str]] = set()  # of training batches: once per run
        self._val_warnings = WarningTally()  # of validation data: once per run
        self._window: list[float] = []
        self._window_samples = 0
        self._window_time = 0.0  # seconds of data loading and steps (not validation, saving)
        self._last_val_step = -1
        self.grad_norm = math.nan
        self._lock: Any = None
        created = not self.out.exists()
        try:
            if ctx.is_main:
                self._lock = _lock_output(self.out)
                remove_unfinished(self.out)  # no other run writes here now
            self._setup()
        except BaseException:
            # a run refused before any work leaves no folder; only the run holding the folder
            # removes it (one refused as a second run launched at the same moment must not take
            # the lock file of the first), and while it still holds it
            if created and self._lock is not None:
                (self.out / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.out.rmdir()
            self.close()
            raise

    def close(self) -> None:
        """Release the run's hold on its output folder (:func:`train` calls it at the end)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- setup: everything that can fail does so before the first step ------------------------
    def _setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        if ctx.device.type == "cpu":
            torch.set_num_threads(cfg.threads or cores_per_process(ctx.local_world_size))
        if cfg.batch_size % ctx.world_size:
            raise ConfigError(
                f"batch_size {cfg.batch_size} (the global batch) is not divisible by the "
                f"{ctx.world_size} processes; choose a multiple of {ctx.world_size}"
            )
        self.local_batch = cfg.batch_size // ctx.world_size
        if cfg.accum_steps > self.local_batch:
            raise ConfigError(
                f"accum_steps {cfg.accum_steps} exceeds the per-process batch "
                f"{self.local_batch} (= batch_size / processes); lower accum_steps",
                param="accum_steps",
            )
        resume_path = self._resume_path()

        # data tables
        table = load_pairs(cfg.train_data, cfg.image_column, cfg.caption_columns, cfg.data_root)
        if cfg.val_data is not None:
            train_t = table
            val_t = load_pairs(cfg.val_data, cfg.image_column, cfg.caption_columns, cfg.data_root)
            self._check_bad(0, val_t, "validation table")
            if len(val_t) < 2:  # one pair retrieves itself: recall 1 and a loss of 0, always
                raise BadSampleError(
                    f"{val_t.source}: {len(val_t)} usable pair; validation needs at least 2 "
                    "(retrieval among one pair always succeeds); give a larger val_data table",
                    param="val_data",
                )
            self._check_overlap(train_t, val_t)
        else:
            self._check_bad(0, table, "training table")  # before a split of too few pairs
            train_t, val_t = split_pairs(table, cfg.val_fraction, cfg.seed)
        self.train_table, self.val_table = train_t, val_t
        # what the run's data is, by content (a resume compares it, not the path strings)
        self.data_digest = {
            "train_data": table.digest,
            "val_data": val_t.digest if cfg.val_data is not None else None,
        }
        # which rows were left out up front (a file missing, empty ...): they decide the pairs,
        # and so the data order and the validation split; a resume checks that they are the same
        self.bad_rows: dict[str, list[int] | None] = {
            "train_data": [r for r, _, _ in table.bad],
            "val_data": [r for r, _, _ in val_t.bad] if cfg.val_data is not None else None,
        }
        self._bad_reasons = {
            "train_data": {r: f"{reason} {where}".strip() for r, where, reason in table.bad},
            "val_data": {r: f"{reason} {where}".strip() for r, where, reason in val_t.bad},
        }
        self._check_bad(0, train_t, "training table")
        repeated = len(train_t) - len({image_key(p) for p in train_t.paths})
        if repeated:
            logger.warning(
                "%s: %d of the %d training pairs repeat the image of another pair (a table of "
                "one row per caption?); two pairs of one image in a batch are each other's "
                "negatives: give each image one row with its captions in caption columns "
                "(caption, caption_2, ...) or a list column, one of which is drawn per epoch",
                train_t.source,
                repeated,
                len(train_t),
            )
        self.steps_per_epoch = len(train_t) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training set has {len(train_t)} usable pairs, fewer than batch_size "
                f"{cfg.batch_size}; lower batch_size or add data",
                param="batch_size",
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

        # model, loss, optimiser
        from msclip.factory import get_tokenizer

        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg)
        self.tokenizer = get_tokenizer(self.model)
        if ctx.is_main:
            self._check_caption_lengths(table, "train_data")
            if cfg.val_data is not None:
                self._check_caption_lengths(val_t, "val_data")
        if cfg.grad_checkpointing:
            self.model.clip.set_grad_checkpointing(True)
        self.trainable = select_trainable(
            self.model,
            cfg.trainable,
            cfg.trainable_patterns,
            cfg.frozen_patterns,
            cfg.train_logit_scale,
        )
        self.loss_fn = ContrastiveLoss(cfg.loss, cfg.init_logit_bias, cfg.loss_impl)
        if cfg.loss_impl != "plain":
            from msclip.cuda.contrastive import check_loss_impl

            check_loss_impl(cfg.loss_impl, ctx.device)
        if self.loss_fn.logit_bias is not None:
            self.loss_fn.logit_bias.requires_grad_(cfg.train_logit_scale)
        with torch.no_grad():
            if cfg.init_logit_scale is not None:
                self.model.clip.logit_scale.fill_(cfg.init_logit_scale)
            elif cfg.loss == "siglip" and cfg.init == "random":
                self.model.clip.logit_scale.fill_(math.log(10.0))
        self._check_initial_logit_scale()
        clamp_logit_scale(self.model.clip.logit_scale, cfg.max_logit_scale)
        self.model.to(ctx.device).train()
        self.loss_fn.to(ctx.device)
        self.groups = param_groups(self.model, self.loss_fn, cfg)
        self.params = [p for g in self.groups for p in g["params"]]
        self.shared = [
            p
            for p in (self.model.clip.logit_scale, self.loss_fn.logit_bias)
            if p is not None and p.requires_grad
        ]
        self.optimizer = build_optimizer(self.groups, cfg)
        self.scheduler = WarmupCosineRestarts(
            self.optimizer,
            self.total_steps,
            cfg.warmup_steps,
            cfg.schedule,
            cfg.min_lr_ratio,
            cfg.restart_steps,
            cfg.restart_mult,
        )
        precision, reason = training_precision(cfg.precision, ctx.device)
        self.precision_reason = reason
        how = "bf16 autocast, fp32 weights" if precision == "bf16" else "fp32 weights"
        logger.info("precision: %s on %s (%s; %s)", precision, ctx.device, reason, how)
        self.precision = precision
        if precision == "bf16":
            if ctx.device.type == "cpu":
                from msclip.hardware import cpu_bf16_native, cpu_info

                if cpu_bf16_native():
                    logger.warning(
                        "bf16 autocast on CPU is slow for attention; fp32 is usually faster there"
                    )
                else:  # every matrix product of the step emulated, not only attention's
                    logger.warning(
                        "bf16 autocast on a CPU without native bf16 (%s): its matrix products are "
                        "emulated there, typically 100x or more slower than fp32; use "
                        "--precision fp32 (or auto, which picks fp32 on a CPU)", cpu_info().kind,
                    )  # fmt: skip
            self.autocast: Callable[[], contextlib.AbstractContextManager] = lambda: torch.autocast(
                ctx.device.type, dtype=torch.bfloat16
            )
        else:
            self.autocast = contextlib.nullcontext

        # datasets
        preprocess = self.model.preprocess(input_bands=cfg.input_bands, sensor=cfg.sensor)
        augment = (
            Augment(tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.hflip, cfg.vflip)
            if cfg.augment
            else None
        )
        self.train_set = PairDataset(
            train_t, preprocess, cfg.seed, augment, draw_captions=True, cache=cfg.cache_images
        )
        self.val_set = PairDataset(val_t, preprocess, cfg.seed, None, cache=cfg.cache_images)
        self.zeroshot_set = None
        self.templates: list[str] = []
        if cfg.zeroshot_data is not None:
            from msclip.zero_shot import load_templates

            self.templates = load_templates(cfg.zeroshot_templates)
            self.zeroshot_set = ClassFolderDataset(
                cfg.zeroshot_data, preprocess, cfg.zeroshot_max_per_class
            )
        self.collate = PairCollator(
            self.tokenizer,
            len(self.model.bands),
            self.model.image_size,
            self.model.context_length,
            train_t.paths,
        )

        if resume_path is not None:
            self._load(resume_path)
            self._check_steps_left(resume_path)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            import yaml

            from msclip.io import write_text

            text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
            write_text(self.out / "config.yaml", text)
        n_trainable = sum(p.numel() for p in self.params)
        logger.info(
            "%s (%s/epoch, %s), %s; %s; %s in %s",
            plural(len(train_t), "training pair"),
            plural(self.steps_per_epoch, "step"),
            plural(self.total_steps, "step"),
            plural(len(val_t), "validation pair"),
            plural(ctx.world_size, "process", "processes"),
            plural(n_trainable, "trainable parameter"),
            plural(len(self.params), "tensor"),
        )

    def _check_initial_logit_scale(self) -> None:
        """Refuse initial weights whose ``logit_scale`` is NaN (the clamp keeps NaN, and every
        loss, gradient and then weight of the run was NaN, with no error), and say when one
        above the bound is clamped (a checkpoint trained without the clamp, or edited: 1e6 and
        infinity were clamped without a word)."""
        cfg = self.cfg
        scale = self.model.clip.logit_scale.detach()
        if bool(torch.isnan(scale).any()):
            raise ConfigError(
                f"the initial weights ({cfg.init}) hold a logit_scale of NaN, so every loss would "
                "be NaN: the checkpoint is damaged; start the temperature afresh with "
                f"init_logit_scale (e.g. {math.log(1 / 0.07):.4f}, CLIP's start), or use other "
                "weights",
                param="init_logit_scale",
            )
        bound = math.log(cfg.max_logit_scale)
        high = float(scale.max())
        if high > bound + 1e-5:  # a float32 ln(100) lies just above the float64 bound
            logger.warning(
                "the initial weights' logit_scale %.6g lies above log(max_logit_scale) = %.4f: "
                "clamped to it, as after every step (set init_logit_scale to start elsewhere)",
                high, bound,
            )  # fmt: skip

    def _resume_path(self) -> Path | None:
        cfg = self.cfg
        existing = find_latest(self.out)
        if cfg.resume is None:
            if existing is not None:
                raise ConfigError(
                    f"output_dir {str(self.out)!r} already holds checkpoints of a run "
                    f"({existing.name}); continue it with resume='latest', or choose another "
                    "output_dir",
                    param="resume",
                )
            return None
        if cfg.resume == "latest":
            if existing is None:
                logger.info("no checkpoint in %s: starting a new run", self.out)
            return existing
        return Path(cfg.resume)

    @staticmethod
    def _check_overlap(train_t: PairTable, val_t: PairTable) -> None:
        """Name the held-out images that the training table holds too: their recall and loss
        measure what was learnt by heart, not how the model does on new images."""
        trained = {image_key(p) for p in train_t.paths}
        shared = [p for p in dict.fromkeys(image_key(p) for p in val_t.paths) if p in trained]
        if shared:
            n_val = len({image_key(p) for p in val_t.paths})
            logger.warning(
                "%d of the %d images of val_data %s are also in train_data %s (%s%s): the "
                "validation metrics of images trained on do not measure generalisation; leave "
                "them out of one of the tables",
                len(shared),
                n_val,
                val_t.source,
                train_t.source,
                ", ".join(shared[:3]),
                f" and {len(shared) - 3} more" if len(shared) > 3 else "",
            )

    def _check_caption_lengths(self, table: PairTable, option: str) -> None:
        """Name the captions of ``table`` that the text tower's context cuts: the words after
        the cut are never trained on (nor validated), which a table of long descriptions would
        not notice otherwise. Shown under ``--quiet`` too, as the cut texts of the other
        programs are."""
        from msclip.errors import shown_when_quiet
        from msclip.train.data import row_label

        cut, checked = cut_captions(table, self.tokenizer)
        if not cut:
            return
        n_captions = sum(len(c) for c in table.captions)
        of = plural(n_captions, "caption")
        if checked < n_captions:  # a sample spread over a large table
            of = f"{plural(checked, 'caption')} checked (spread over its {n_captions})"
        shown = "; ".join(
            f"{row_label(r)} {c if len(c) <= 60 else c[:57] + '...'!r}" for r, c in cut[:3]
        )
        more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
        shown_when_quiet.warning(
            "%s %s: %d of its %s %s longer than the text tower's %d tokens and %s cut there "
            "(the words after the cut are never trained on): %s%s; shorten %s, or split %s into "
            "several captions (caption_2, caption_3 ... columns or a list column)",
            option,
            table.source,
            len(cut),
            of,
            "is" if len(cut) == 1 else "are",
            self.model.context_length,
            "is" if len(cut) == 1 else "are",
            shown,
            more,
            "it" if len(cut) == 1 else "them",
            "it" if len(cut) == 1 else "them",
        )

    def _check_steps_left(self, path: Path) -> None:
        """A resumed run that is past its (new) end is refused: finishing it would write the
        checkpoint's weights as a final model of fewer steps than they were trained for."""
        step, end = self.state.step, self.total_steps
        if step > end:
            given = (
                f"max_steps {self.cfg.max_steps}"
                if self.cfg.max_steps
                else f"{plural(self.cfg.epochs, 'epoch')} of {plural(self.steps_per_epoch, 'step')}"
            )
            raise ConfigError(
                f"{path} is at step {step}, past the {plural(end, 'step')} this run is given "
                f"({given}); "
                "give more steps to train it further, or use the run's last checkpoint as it is",
                param="max_steps" if self.cfg.max_steps else "epochs",
            )
        if step == end:
            logger.info("%s is at step %d of %d: nothing is left to train", path, step, end)

    def _check_bad(self, runtime_bad: int, table: PairTable, what: str) -> None:
        n_bad = len(table.bad) + runtime_bad
        if n_bad > self.cfg.max_bad_fraction * table.n_rows:
            from msclip.train.data import row_label

            examples = "; ".join(f"{row_label(r)}: {reason} {p}" for r, p, reason in table.bad[:3])
            raise TooManyBadSamplesError(
                f"{what} {table.source}: {n_bad} of {table.n_rows} samples are bad "
                f"({n_bad / max(1, table.n_rows):.1%} > max_bad_fraction "
                f"{self.cfg.max_bad_fraction:.1%}): {len(table.bad)} found up front"
                f"{' (' + examples + ')' if examples else ''}, {runtime_bad} unreadable in this "
                "epoch (see the log). Fix the table or the files, or raise max_bad_fraction"
                + (
                    "; every row is bad: are the paths relative to another folder (data_root)?"
                    if n_bad >= table.n_rows > 0
                    else "."
                ),
                param="max_bad_fraction",
            )

    # -- checkpoints ---------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.clip.state_dict().items()},
            "msclip_config": _json(self.model.config.to_dict()),
            "loss": {k: v.detach().cpu() for k, v in self.loss_fn.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": get_rng_state(),
            "state": self.state.to_dict(),
            # the losses of the log row in progress: a resumed run logs the same averages
            "log_window": [float(v) for v in self._window],
            "last_loss": float(self.last_loss),
            "world_size": self.ctx.world_size,
            "train_config": self.cfg.to_json(),
            "data_digest": dict(self.data_digest),
            "bad_rows": dict(self.bad_rows),
            # what --precision auto resolved to (the config says "auto"): a resume compares it
            "precision": self.precision,
            "precision_reason": self.precision_reason,
        }

    def _rank_rng_states(self) -> list[dict[str, Any]] | None:
        """Every process's random states, in rank order (a collective: every process calls it;
        ``None`` for one process). Each process draws from its own generators (its GPU's CUDA
        generator above all), so a resumed run restores each process's own."""
        if not self.ctx.distributed:
            return None
        import torch.distributed as dist

        states: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(states, get_rng_state())
        return states

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (first process); return its path. Every
        process calls it (the processes' random states are gathered)."""
        path = None
        ranks = self._rank_rng_states()
        if self.ctx.is_main:
            payload = self._payload()
            if ranks is not None:
                payload["rng_ranks"] = ranks
            path = save_train_checkpoint(checkpoint_path(self.out, self.state.step), payload)
            prune_checkpoints(self.out, self.cfg.keep_checkpoints)
            logger.info("checkpoint %s", path)
        return path

    def _load(self, path: Path) -> None:
        import json

        data = load_train_checkpoint(path)
        old = json.loads(data["train_config"])
        new = self.cfg.to_dict()
        digests = data.get("data_digest")
        # Tables are the same data when their content is: a relaunch from another folder, an
        # absolute path or a moved table resumes, an edited or reordered table does not.
        # Checkpoints written before digests were recorded compare the paths as given.
        by_content = set(_TABLES) if isinstance(digests, dict) else set()
        differ = sorted(
            k
            for k in new
            if k not in RESUMABLE_CHANGES
            and old.get(k) != new[k]
            and (k not in by_content or old.get(k) is None or new[k] is None)
        )
        if differ:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in differ)
            note = (
                " (this checkpoint predates table digests, so its tables are compared by the path "
                "as given: resume from the run's folder with the run's spelling of the path)"
                if not by_content and any(k in _TABLES for k in differ)
                else ""
            )
            if "batch_size" in differ:  # the contrastive batch; memory is accum_steps' concern
                note += (
                    " (to fit another device's memory, keep batch_size and raise accum_steps, "
                    "which may change on resume)"
                )
            raise ConfigError(
                f"cannot resume {path}: options that change the result differ from the run's "
                f"({detail}){note}; resume with the run's values (its config.yaml) or start a "
                "new run",
                param=differ[0],
            )
        for k in sorted(by_content):
            if new[k] is not None and digests.get(k) != self.data_digest[k]:
                raise ConfigError(
                    f"cannot resume {path}: the content of {k} {new[k]!r} changed since the run "
                    f"was written (its rows, image paths and captions in order, differ from those "
                    f"of {old.get(k)!r} then); the data order and the resumed weights would not be "
                    "the run's: restore the run's table or start a new run",
                    param=k,
                )
            if old.get(k) != new[k]:
                logger.info("%s %r is the run's table %r (same content)", k, new[k], old.get(k))
        self._check_bad_rows(path, data.get("bad_rows"))
        self._check_precision(path, data.get("precision"), data.get("precision_reason"))
        try:
            self.model.clip.load_state_dict(data["model"])
            self.loss_fn.load_state_dict(data["loss"])
            self.optimizer.load_state_dict(data["optimizer"])
            self.scheduler.load_state_dict(data["scheduler"])
            # --epochs / --max-steps may change on resume (training extended): keep the new end,
            # and set the groups' rates of the next step from it (the optimiser state holds the
            # rate the old schedule gave, e.g. 0 at the end of a finished cosine).
            self.scheduler.total_steps = self.total_steps
            rates = self.scheduler.get_lr()
            for group, lr in zip(self.optimizer.param_groups, rates):
                group["lr"] = lr
            self.scheduler._last_lr = list(rates)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path} does not fit this run: {err}") from err
        self.state = TrainState(**data["state"])
        self._window = [float(v) for v in data.get("log_window", [])]
        self.last_loss = float(data.get("last_loss", math.nan))
        ranks = data.get("rng_ranks")
        if ranks is not None and len(ranks) == self.ctx.world_size:
            set_rng_state(ranks[self.ctx.rank])  # this process's own generators
        else:
            if ranks is not None:
                logger.info(
                    "the checkpoint was written by %d processes, this run has %d: every process "
                    "starts from the first process's random states",
                    len(ranks),
                    self.ctx.world_size,
                )
            elif self.ctx.distributed:
                logger.info(
                    "the checkpoint holds one process's random states: every process starts "
                    "from them"
                )
            set_rng_state(data["rng"])
        self.train_rows = _read_csv(self.out / "train_log.csv", self.state.step)
        self.metric_rows = _read_csv(self.out / "metrics.csv", self.state.step)
        if self.metric_rows and int(float(self.metric_rows[-1]["step"])) == self.state.step:
            self._last_val_step = self.state.step  # validated at this step before it stopped
        logger.info(
            "resumed %s at step %d (epoch %d, step %d of it)",
            path,
            self.state.step,
            self.state.epoch,
            self.state.step_in_epoch,
        )

    def _check_precision(self, path: Path, built: Any, why: Any) -> None:
        """Say when a resumed run computes in another precision than the run did: the options
        are the same (``--precision auto``), but auto resolved otherwise here (another device, or
        :data:`msclip.hardware.PRECISION_ENV` set or unset), so the rest of the run's steps are
        not those the run would have taken."""
        if not built or built == self.precision:
            return
        from msclip.hardware import PRECISION_ENV

        logger.warning(
            "resuming %s, which trained in %s (%s), in %s (%s): the remaining steps are not "
            "those of the run's precision; set %s=%s (or resume on the run's kind of device) to "
            "keep it",
            path, built, why or "as recorded", self.precision, self.precision_reason,
            PRECISION_ENV, built,
        )  # fmt: skip

    def _check_bad_rows(self, path: Path, recorded: Any) -> None:
        """Refuse a resume whose tables now leave out other rows than the run's did (an image
        file deleted, moved or restored since): the pairs, their order and the validation split
        would silently differ from the run's. Checkpoints written before the record pass."""
        from msclip.train.data import row_label

        if not isinstance(recorded, dict):
            return
        for k in _TABLES:
            was, now = recorded.get(k), self.bad_rows[k]
            if was is None or now is None or sorted(was) == sorted(now):
                continue
            newly = sorted(set(now) - set(was))
            again = sorted(set(was) - set(now))
            parts = [
                f"{row_label(r)} is now left out ({self._bad_reasons[k][r]})" for r in newly[:5]
            ]
            parts += [f"{row_label(r)} is usable again" for r in again[:5]]
            more = len(newly) + len(again) - len(parts)
            raise ConfigError(
                f"cannot resume {path}: {k} {getattr(self.cfg, k)!r} leaves out other rows than "
                f"the run did ({'; '.join(parts)}{f'; and {more} more' if more > 0 else ''}); "
                "the pairs, their order and the validation split would not be the run's: "
                "restore the image files as they were when the run started, or start a new run",
                param=k,
            )

    # -- training ------------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        cfg, st = self.cfg, self.state
        sampler = EpochBatchSampler(
            len(self.train_set),
            cfg.batch_size,
            self.ctx.rank,
            self.ctx.world_size,
            cfg.seed,
            st.epoch,
            st.step_in_epoch,
        )
        # A loader of its own generator: creating an iterator must not draw from the global
        # generator, or a resumed run would diverge.
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=cfg.num_workers,
            pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed + st.epoch),
        )

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimiser step on this process's part of a global batch; returns the loss."""
        cfg, ctx = self.cfg, self.ctx
        for category, text in batch.get("warnings", ()):
            if (category, text) not in self._warned:  # once per run, not per image or worker
                self._warned.add((category, text))
                warnings.warn(text, _warning_class(category), stacklevel=1)
        for index, path, reason in batch["bad"]:
            self._logged_bad += 1
            if self._logged_bad <= 20:
                logger.warning("training sample %d skipped (%s): %s", index, path, reason)
        counts = gather_counts([batch["images"].shape[0], len(batch["bad"])], ctx)
        sizes = [c[0] for c in counts]
        self.state.epoch_bad += sum(c[1] for c in counts)
        self._check_bad(self.state.epoch_bad, self.train_table, "training table")
        self.optimizer.zero_grad(set_to_none=True)
        loss = math.nan
        if sum(sizes) >= 2:
            out = contrastive_step(
                self.model,
                self.loss_fn,
                batch["images"].to(ctx.device, non_blocking=True),
                batch["tokens"].to(ctx.device, non_blocking=True),
                ctx,
                sizes,
                cfg.accum_steps,
                self.autocast(),
                cfg.trim_text,
            )
            all_reduce_gradients(self.params, self.shared, ctx)
            if cfg.grad_clip_norm is not None:
                self.grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip_norm)
                )
            else:  # an infinite bound measures the norm and scales by exactly 1
                self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, math.inf))
            loss = float(out.loss)
            self._refuse_divergence(loss)
            self.optimizer.step()
            clamp_logit_scale(self.model.clip.logit_scale, cfg.max_logit_scale)
        else:
            logger.warning("step %d skipped: fewer than two readable samples", self.state.step)
        self.scheduler.step()
        self.state.step += 1
        self.state.step_in_epoch += 1
        self._window_samples += sum(sizes)
        return loss

    def _refuse_divergence(self, loss: float) -> None:
        """Stop before an optimiser step with a loss or gradient that is not finite: the step
        would make every weight NaN, and the run went on to its end writing NaN checkpoints,
        which pruned the last good ones (the gradient norm is the same in every process)."""
        if math.isfinite(loss) and math.isfinite(self.grad_norm):
            return
        cfg, step = self.cfg, self.state.step
        saved = find_latest(self.out)
        start = f" (from the run's last checkpoint as init: {saved})" if saved else ""
        raise TrainingDivergedError(
            f"step {step + 1}: the loss is {loss:g} and the gradient norm {self.grad_norm:g}: "
            f"training diverged, and the step was not taken; start a new run{start} with a lower "
            f"lr (now {cfg.lr:g}) or more warmup_steps, a grad_clip_norm, or precision fp32"
        )

    def _lr(self) -> float:
        return self.cfg.lr * self.scheduler.factor(max(0, self.state.step - 1))

    def _log_step(self, loss: float, bar: Any) -> None:
        self.last_loss = loss
        if math.isfinite(loss):
            self._window.append(loss)
        sps = self._window_samples / max(1e-9, self._window_time)
        if bar is not None:
            bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{self._lr():.2e}", sps=f"{sps:.1f}", refresh=False
            )
            bar.update(1)
        st = self.state
        if st.step % self.cfg.log_every and st.step != self.total_steps:
            return
        row = {
            "step": st.step,
            "epoch": st.epoch + st.step_in_epoch / self.steps_per_epoch,
            "loss": sum(self._window) / len(self._window) if self._window else math.nan,
            "lr": self._lr(),
            "logit_scale": float(self.model.clip.logit_scale.detach().exp()),
            "grad_norm": self.grad_norm,
            "samples_per_s": sps,
            "bad_in_epoch": st.epoch_bad,
        }
        self.train_rows.append(as_row(row))
        logger.info(
            "step %d/%d loss %.4f lr %.3g %.1f samples/s",
            st.step,
            self.total_steps,
            row["loss"],
            row["lr"],
            sps,
        )
        if self.ctx.is_main:
            _write_csv(self.out / "train_log.csv", self.train_rows)
        self._window, self._window_samples, self._window_time = [], 0, 0.0

    def _train_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        remaining = min(self.steps_per_epoch - st.step_in_epoch, self.total_steps - st.step)
        if remaining <= 0:
            return
        bar = None
        if cfg.progress and self.ctx.is_main:
            from msclip.progress import progress_bar

            n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
            bar = progress_bar(
                total=self.steps_per_epoch,
                initial=st.step_in_epoch,
                dynamic_ncols=True,
                desc=f"epoch {st.epoch + 1}/{n_epochs}",
                leave=False,
            )
        try:
            start = time.perf_counter()
            for batch in self._loader():
                loss = self.train_step(batch)
                self._window_time += time.perf_counter() - start
                self._log_step(loss, bar)
                if cfg.save_every and st.step % cfg.save_every == 0:
                    self.save()
                for hook in self.hooks:
                    hook(self)
                if st.step >= self.total_steps:
                    break
                start = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Held-out loss and retrieval recall (and zero-shot accuracy); appended to
        ``metrics.csv``."""
        cfg, ctx = self.cfg, self.ctx
        self.model.eval()
        t0 = time.perf_counter()
        try:
            img, txt, idx, n_bad = encode_pairs(
                self.model,
                self.val_set,
                self.tokenizer,
                ctx,
                cfg.val_batch_size,
                cfg.num_workers,
                self.autocast(),
                cfg.trim_text,
                self._val_warnings,
            )
            captions = [self.val_table.captions[i][0] for i in idx.tolist()]
            row: dict[str, Any] = {
                "step": self.state.step,
                "epoch": self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch,
            }
            row["val_loss"] = batch_loss(
                img, txt, self.loss_fn, self.model.clip.logit_scale, cfg.batch_size, cfg.seed
            )
            if img.shape[0] >= 1:
                files = [image_key(self.val_table.paths[i]) for i in idx.tolist()]
                row.update(retrieval_metrics(img, txt, captions, images=files))
            row["val_bad"] = n_bad
            if self.zeroshot_set is not None:
                row.update(
                    zero_shot_metrics(
                        self.model,
                        self.zeroshot_set,
                        self.tokenizer,
                        self.templates,
                        ctx,
                        cfg.val_batch_size,
                        cfg.num_workers,
                        self.autocast(),
                        self._val_warnings,
                    )
                )
        finally:
            self.model.train()
        row["val_seconds"] = time.perf_counter() - t0
        row = as_row(row)
        self.metric_rows = [r for r in self.metric_rows if int(float(r["step"])) != row["step"]]
        self.metric_rows.append(row)
        self._last_val_step = self.state.step
        if ctx.is_main:
            _write_csv(self.out / "metrics.csv", self.metric_rows)
        shown = {k: v for k, v in row.items() if k.startswith(("val_loss", "i2t", "t2i", "zs_"))}
        logger.info("validation at step %d: %s", self.state.step, shown)
        return row

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the end, validating and checkpointing on the way."""
        cfg, st = self.cfg, self.state
        while st.step < self.total_steps or st.step_in_epoch == self.steps_per_epoch:
            self._train_epoch()
            if st.step_in_epoch < self.steps_per_epoch:
                break  # max_steps reached inside the epoch
            finished = st.epoch
            st.epoch += 1
            st.step_in_epoch = 0
            st.epoch_bad = 0
            if cfg.val_every and (finished + 1) % cfg.val_every == 0:
                self.validate()
            if not cfg.save_every and st.step < self.total_steps:
                self.save()
        if self._last_val_step != st.step:
            self.validate()
        self.save()
        final = self.out / "final.safetensors"
        if self.ctx.is_main:
            from msclip.pretrained import save_checkpoint

            save_checkpoint(
                self.model,
                final,
                metadata={"msclip_train_config": cfg.to_json(), "msclip_train_step": str(st.step)},
            )
            logger.info("final model %s", final)
        self.ctx.barrier()
        return TrainResult(self.out, final, st.step, self.last_loss, list(self.metric_rows))


def _warning_class(name: str) -> type[Warning]:
    """The warning class a data item's warning was raised with (its name crossed from a
    DataLoader worker), or ``UserWarning`` for one of another library."""
    import builtins

    import msclip.errors

    found = getattr(msclip.errors, name, None) or getattr(builtins, name, None)
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def train(cfg: TrainConfig, hooks: Sequence[Callable[[Trainer], None]] = ()) -> TrainResult:
    """Run (this process's part of) a training run.

    Args:
        cfg: the configuration (validated here first).
        hooks: called with the :class:`Trainer` after every optimiser step.

    Raises:
        ConfigError: a bad option (before any work).
        TooManyBadSamplesError: too many missing/unreadable images or empty captions.
    """
    cfg.validate()
    threads = torch.get_num_threads()
    ctx = init_distributed(cfg.dist_backend, cfg.device)
    try:
        trainer = Trainer(cfg, ctx, hooks)
        try:
            return trainer.run()
        finally:
            trainer.close()
    finally:
        ctx.close()
        torch.set_num_threads(threads)  # the run's setting does not outlive it
