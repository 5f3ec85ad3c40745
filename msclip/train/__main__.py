"""``python -m msclip.train``: see :mod:`msclip.cli.train`."""

from msclip.cli.train import main

raise SystemExit(main())
