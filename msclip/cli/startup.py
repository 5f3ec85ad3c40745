"""Start-up of the command-line programs: torch imported with the cyclic garbage collector paused.

Importing torch creates some 400,000 Python objects. With the collector on, CPython runs a
collection every 700 new container objects and a full one each time the oldest generation has
grown by a quarter, so the import traverses torch's own objects again and again: measured on a
2-core Zen 4 (torch 2.14, Python 3.11), 0.20 s of collections in 395 runs during ``import torch``
alone, and 0.29 s over a whole 64-tile zero-shot run (four full collections, each walking every
object torch made). None of it finds garbage worth having: import-time objects live as long as
the process.

:func:`pause_collector_during_import` makes the first import of a module (torch) run with the
collector paused, then moves every object that exists at that point into the permanent
generation (:func:`gc.freeze`), so later collections walk only what the program makes itself;
the collector runs as usual from there. It hooks the import system once, only for that module,
and removes itself: a program that never imports torch (``msclip-index info``) is not slowed by
importing it. The library never does this on its own (the collector is the application's
setting); :func:`msclip.cli.common.run_cli` does it for msclip's programs, before it parses
their flags, for torch and for OpenCLIP (whose import brings ``transformers``, ``timm`` and
``torchvision``: 0.3 s of collections in its 2.2 s import after torch's, none with the pause).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import sys
from types import ModuleType
from typing import Any

__all__ = ["pause_collector_during_import"]


class _PausedImport(importlib.abc.MetaPathFinder):
    """A finder that answers for one module, once: the spec the other finders give, with its
    loader's ``exec_module`` run with the collector paused and the heap frozen after."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.used = False

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if fullname != self.name or self.used:
            return None
        self.used = True  # one attempt: a failed import is not hooked again
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            self._remove()
            return spec
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            enabled = gc.isenabled()
            gc.disable()
            try:
                run(module)
            finally:
                if enabled:
                    gc.enable()
                gc.freeze()
                with contextlib.suppress(AttributeError):
                    del loader.exec_module  # the loader's own method again
                self._remove()

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):  # a loader that takes no attribute: left as it is
            self._remove()
        return spec

    def _remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def pause_collector_during_import(name: str = "torch") -> bool:
    """Make the first import of ``name`` run with the cyclic garbage collector paused and freeze
    the heap after it (see the module docstring).

    Returns:
        Whether the hook was installed: ``False`` when ``name`` is imported already (or a hook
        for it is waiting).
    """
    if name in sys.modules:
        return False
    if any(isinstance(f, _PausedImport) and f.name == name for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _PausedImport(name))
    return True
