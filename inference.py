"""Zero-shot classification, retrieval and scene maps: ``python inference.py --help``.

A thin wrapper of :func:`msclip.cli.inference.main` (also installed as ``msclip-inference``).
"""

from msclip.cli.common import exit_process
from msclip.cli.inference import main

if __name__ == "__main__":
    exit_process(main())
