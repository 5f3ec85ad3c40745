"""Progress bars redraw rarely when written to a log file, as often as tqdm likes on a terminal."""

from __future__ import annotations

import io

import numpy as np

from msclip.progress import LOG_INTERVAL, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_in_logs_redraw_rarely(monkeypatch) -> None:
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log, term = io.StringIO(), _Terminal()
    with progress_bar(total=3, file=log) as a, progress_bar(total=3, file=term) as b:
        assert a.mininterval == LOG_INTERVAL and b.mininterval == 0.1
        for _ in range(3):
            a.update()
            b.update()
    assert "3/3" in log.getvalue()  # the final state is always written
    with progress_bar(total=1, file=log, mininterval=2.0) as c:  # the caller's choice stands
        assert c.mininterval == 2.0
    monkeypatch.setenv("TQDM_MININTERVAL", "5")  # and so does the user's tqdm setting
    with progress_bar(total=1, file=log) as d:
        assert d.mininterval != LOG_INTERVAL
    assert list(progress_bar(np.arange(3), file=log)) == [0, 1, 2]  # an iterable, as tqdm takes
