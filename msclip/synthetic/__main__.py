"""``python -m msclip.synthetic``: the command line of :mod:`msclip.cli.scenes`."""

from msclip.cli.common import exit_process
from msclip.cli.scenes import main

exit_process(main())
