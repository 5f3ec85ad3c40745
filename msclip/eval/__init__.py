"""Evaluation utilities of msclip: benchmark metrics shared by zero-shot inference,
benchmark evaluation and training validation.

The metrics live in :mod:`msclip.eval.metrics`; this package module deliberately imports
nothing so that importing :mod:`msclip.eval` stays cheap.
"""
