"""``python -m msclip.synthetic``: the command line of :mod:`msclip.cli.scenes`."""

from msclip.cli.scenes import main

raise SystemExit(main())
