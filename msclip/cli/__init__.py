"""Command-line programs of msclip: the only place that parses arguments or prints.

- :mod:`msclip.cli.inference` (``msclip-inference``, ``python inference.py``): zero-shot
  classification, text/image retrieval and whole-scene maps.
- :mod:`msclip.cli.evaluation` (``msclip-evaluation``, ``python evaluation.py``): benchmark
  evaluation with JSON records and merged CSV/Markdown reports.
- :mod:`msclip.cli.index` (``msclip-index``, ``python -m msclip.index``): embedding indexes.
- :mod:`msclip.cli.train` (``msclip-train``, ``python train.py``, ``python -m msclip.train``):
  contrastive pretraining.
- :mod:`msclip.cli.common`: what they share (flags, logging, model loading, output, exit codes).

The library never imports this package.
"""
