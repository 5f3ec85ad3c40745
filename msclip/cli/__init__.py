"""Command-line programs of msclip.

- :mod:`msclip.cli.inference` (``msclip-inference``, ``python inference.py``): zero-shot
  classification, text/image retrieval and whole-scene maps.
- :mod:`msclip.index.cli` (``msclip-index``, ``python -m msclip.index``): embedding indexes.
"""
