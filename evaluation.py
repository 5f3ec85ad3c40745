"""Zero-shot benchmark evaluation: ``python evaluation.py --help``.

A thin wrapper of :func:`msclip.cli.evaluation.main` (also installed as ``msclip-evaluation``).
"""

from msclip.cli.common import exit_process
from msclip.cli.evaluation import main

if __name__ == "__main__":
    exit_process(main())
