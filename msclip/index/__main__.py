"""``python -m msclip.index``: the ``msclip-index`` command (see :mod:`msclip.cli.index`)."""

import sys

from msclip.cli.index import main

sys.exit(main())
