"""Zero-shot benchmark evaluation: ``python evaluation.py --help``.

A thin wrapper of :func:`msclip.cli.evaluation.main` (also installed as ``msclip-evaluation``).
"""

import sys

from msclip.cli.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
