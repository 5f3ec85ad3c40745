"""Contrastive pretraining from a source checkout: ``python train.py --config run.yaml``.

A thin wrapper of :mod:`msclip.cli.train` (installed as ``msclip-train``); works under
``torchrun --nproc_per_node=N train.py ...`` as well.
"""

from msclip.cli.common import exit_process
from msclip.cli.train import main

if __name__ == "__main__":
    exit_process(main())
