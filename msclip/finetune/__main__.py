"""``python -m msclip.finetune``: see :mod:`msclip.cli.finetune`."""

from msclip.cli.common import exit_process
from msclip.cli.finetune import main

exit_process(main())
