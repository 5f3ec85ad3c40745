"""``python -m msclip.finetune``: see :mod:`msclip.cli.finetune`."""

from msclip.cli.finetune import main

raise SystemExit(main())
