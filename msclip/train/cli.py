"""Command line of contrastive pretraining: ``msclip-train`` / ``python -m msclip.train``.

Examples::

    msclip-train --train-data data/captions.csv --model msclip-tiny --epochs 5
    msclip-train --config run.yaml --batch-size 256 --accum-steps 8
    torchrun --nproc_per_node=2 -m msclip.train --config run.yaml
    msclip-train --config run.yaml --resume latest

Every option of :class:`msclip.train.config.TrainConfig` is a flag; ``--print-config`` shows the
effective configuration as YAML.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _setup_logging() -> int:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"[rank {rank}] " if world > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return rank


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed run, 2 bad options)."""
    from msclip.errors import MSCLIPError
    from msclip.train.config import ConfigError, config_from_args

    rank = _setup_logging()
    try:
        cfg, print_config = config_from_args(argv)
        if print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        cfg.validate()
        from tqdm.contrib.logging import logging_redirect_tqdm

        from msclip.train.trainer import train

        with logging_redirect_tqdm():
            result = train(cfg)
    except ConfigError as err:
        print(f"msclip-train: error: {err}", file=sys.stderr)
        return 2
    except MSCLIPError as err:
        print(f"msclip-train: error: {err}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"trained {result.steps} steps; final loss {result.last_loss:.4f}")
        if result.metrics:
            last = result.metrics[-1]
            keys = [
                k
                for k in ("val_loss", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "zs_top1")
                if k in last
            ]
            print("validation: " + ", ".join(f"{k} {float(last[k]):.4f}" for k in keys))
        print(f"model: {result.final_checkpoint}")
        print(f"logs: {result.output_dir / 'train_log.csv'}, {result.output_dir / 'metrics.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
