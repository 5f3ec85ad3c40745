"""``python -m msclip.index``: the ``msclip-index`` command (see :mod:`msclip.cli.index`)."""

from msclip.cli.common import exit_process
from msclip.cli.index import main

exit_process(main())
