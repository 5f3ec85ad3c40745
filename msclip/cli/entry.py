"""Console-script entry points of the msclip programs (``msclip-inference`` ...).

Each runs its program's ``main`` and leaves through :func:`msclip.cli.common.exit_process`, which
skips the interpreter's teardown of torch's libraries (time and peak memory); ``main`` itself
returns the exit status and is what tests and Python callers use.
"""

from __future__ import annotations

from typing import NoReturn

from msclip.cli.common import exit_process

__all__ = ["evaluation", "finetune", "index", "inference", "scenes", "train"]


def inference() -> NoReturn:
    """``msclip-inference``."""
    from msclip.cli.inference import main

    exit_process(main())


def evaluation() -> NoReturn:
    """``msclip-evaluation``."""
    from msclip.cli.evaluation import main

    exit_process(main())


def train() -> NoReturn:
    """``msclip-train``."""
    from msclip.cli.train import main

    exit_process(main())


def index() -> NoReturn:
    """``msclip-index``."""
    from msclip.cli.index import main

    exit_process(main())


def scenes() -> NoReturn:
    """``msclip-scenes``."""
    from msclip.cli.scenes import main

    exit_process(main())


def finetune() -> NoReturn:
    """``msclip-finetune``."""
    from msclip.cli.finetune import main

    exit_process(main())
