"""Downstream heads on msclip's spectral encoder: dense decoders (linear, FCN, UPerNet,
SegFormer-MLP), dense losses, streaming whole-scene prediction and zero-shot dense maps.

Import the modules by their full path (``from msclip.heads.decoders import build_decoder``).
"""
