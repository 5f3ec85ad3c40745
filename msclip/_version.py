"""The version of msclip (read by the build from here; re-exported as ``msclip.__version__``)."""

__version__ = "0.1.0"
