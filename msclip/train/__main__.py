"""``python -m msclip.train``: see :mod:`msclip.cli.train`."""

from msclip.cli.common import exit_process
from msclip.cli.train import main

exit_process(main())
