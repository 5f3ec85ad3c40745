"""Data generation for msclip.

:mod:`msclip.data.scenes` makes synthetic Sentinel-2 L2A tiles with land-cover labels and
captions: the shipped sample tiles, the data of the demo model's contrastive pretraining, and
test fixtures. Import it as ``from msclip.data import scenes`` (it is not imported here, so that
``python -m msclip.data.scenes`` runs without the module being loaded twice).
"""

__all__: list[str] = []
