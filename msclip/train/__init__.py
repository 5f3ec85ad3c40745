"""Contrastive (continual) pretraining of multispectral CLIP models on image-caption pairs.

One process or many (``torchrun``); CLIP InfoNCE or SigLIP loss over the global batch, feature-
cache gradient accumulation (GradCache), exact resumption, validation by retrieval recall and
zero-shot accuracy, and an msclip ``.safetensors`` at the end. See ``docs/training.md``.

Python use::

    from msclip.train import TrainConfig, train

    result = train(TrainConfig(train_data="captions.csv", model="msclip-tiny", epochs=2))

The library never imports this package; importing it loads only the configuration until
:func:`train` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msclip.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from msclip.train.trainer import TrainResult

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "train"]


def train(cfg: TrainConfig, hooks: Any = ()) -> TrainResult:
    """Run a training process; see :func:`msclip.train.trainer.train`."""
    from msclip.train.trainer import train as _train

    return _train(cfg, hooks)


def __getattr__(name: str) -> Any:
    if name == "TrainResult":
        from msclip.train.trainer import TrainResult

        return TrainResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
