"""Progress bars (tqdm) that suit where they are written.

On a terminal a bar is redrawn up to ten times a second (tqdm's default). When the output is not
a terminal (a batch job's log file, ``nohup``, a pipe) every redraw becomes another line of the
log: a ten-hour index build wrote ~30 MB of them. There the bar is redrawn at most every
:data:`LOG_INTERVAL` seconds, and at the end. ``TQDM_MININTERVAL`` (tqdm's own setting) and an
explicit ``mininterval=`` take precedence.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["LOG_INTERVAL", "progress_bar"]

#: Seconds between redraws of a bar written to something other than a terminal.
LOG_INTERVAL = 30.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A ``tqdm.auto.tqdm`` bar (same arguments), redrawn at most every :data:`LOG_INTERVAL`
    seconds when its output is not a terminal."""
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    if (
        "mininterval" not in kwargs
        and "TQDM_MININTERVAL" not in os.environ
        and not _is_terminal(stream)
    ):
        kwargs["mininterval"] = LOG_INTERVAL
    return tqdm(*args, **kwargs)
