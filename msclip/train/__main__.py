"""``python -m msclip.train``: see :mod:`msclip.train.cli`."""

from msclip.train.cli import main

raise SystemExit(main())
