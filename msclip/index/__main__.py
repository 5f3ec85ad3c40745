"""``python -m msclip.index``: the ``msclip-index`` command (see :mod:`msclip.index.cli`)."""

import sys

from msclip.index.cli import main

sys.exit(main())
