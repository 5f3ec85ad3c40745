"""Package layout that pyproject.toml cannot express: two top-level folders ship inside msclip.

- ``templates/`` (prompt template sets, plain text) installs as ``msclip/templates/``;
- ``cuda/`` (optional fused kernels) installs as the subpackage ``msclip.cuda`` (a top-level
  ``cuda`` name would collide with NVIDIA's ``cuda-bindings``, which the CUDA build of torch
  installs).

Everything else (metadata, dependencies, package data) is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["msclip", "msclip.*"]),
        # folders of data files only (no __init__.py): named so that setuptools ships them
        # as data, not as modules it would warn about
        "msclip.eval.classnames",
        "msclip.model_configs",
        "msclip.weights",
        "msclip.cuda",
        "msclip.templates",
    ],
    package_dir={"msclip.cuda": "cuda", "msclip.templates": "templates"},
)
