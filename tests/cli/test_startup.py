"""msclip.cli.startup: the first import of torch with the garbage collector paused, then frozen."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter (its own collector and import system) with
    ``tmp_path`` and the repository on the path; it prints one JSON line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def heavy(tmp_path: Path) -> Path:
    """A package that notes whether the collector ran during its import, makes reference cycles
    and imports a submodule of its own (imported with it, inside the pause)."""
    pkg = tmp_path / "heavypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            import gc
            COLLECTOR_ON = gc.isenabled()
            from heavypkg import part
            class Node:
                pass
            NODES = []
            for _ in range(5000):
                n = Node()
                n.self = n
                NODES.append(n)
            """
        )
    )
    (pkg / "part.py").write_text("import gc\nCOLLECTOR_ON = gc.isenabled()\n")
    (tmp_path / "brokenpkg.py").write_text("raise RuntimeError('boom')\n")
    return tmp_path


def test_the_first_import_runs_with_the_collector_paused_then_the_heap_is_frozen(heavy) -> None:
    out = run_python(
        """
        import gc, json, sys
        from msclip.cli.startup import _PausedImport, pause_collector_during_import
        installed = pause_collector_during_import("heavypkg")
        again = pause_collector_during_import("heavypkg")  # one hook per module
        frozen_before = gc.get_freeze_count()
        import heavypkg
        loader = heavypkg.__spec__.loader
        print(json.dumps({
            "installed": installed, "again": again,
            "during": heavypkg.COLLECTOR_ON, "during_sub": heavypkg.part.COLLECTOR_ON,
            "after": gc.isenabled(), "frozen_before": frozen_before,
            "frozen_after": gc.get_freeze_count(),
            "hooks_left": sum(isinstance(f, _PausedImport) for f in sys.meta_path),
            "loader_patched": "exec_module" in vars(loader),
            "already": pause_collector_during_import("heavypkg"),
        }))
        """,
        heavy,
    )
    assert out["installed"] and not out["again"] and not out["already"]
    assert out["during"] is False and out["during_sub"] is False  # paused for the whole import
    assert out["after"] is True  # and running again after it
    # the cycles made included (a site hook of the interpreter may have frozen some before)
    assert out["frozen_after"] - out["frozen_before"] > 5000
    assert out["hooks_left"] == 0 and not out["loader_patched"]  # nothing left behind


def test_a_failed_import_or_a_missing_module_leaves_the_collector_as_it_was(heavy) -> None:
    out = run_python(
        """
        import gc, json, sys
        from msclip.cli.startup import _PausedImport, pause_collector_during_import
        pause_collector_during_import("brokenpkg")
        try:
            import brokenpkg
        except RuntimeError as exc:
            error = str(exc)
        broken_on = gc.isenabled()
        pause_collector_during_import("no_such_module_here")
        try:
            import no_such_module_here
        except ModuleNotFoundError:
            missing = True
        gc.disable()  # a program that had turned the collector off keeps it off
        pause_collector_during_import("heavypkg")
        import heavypkg
        print(json.dumps({
            "error": error, "broken_on": broken_on, "missing": missing,
            "kept_off": not gc.isenabled(), "paused_inside": not heavypkg.COLLECTOR_ON,
            "hooks_left": sum(isinstance(f, _PausedImport) for f in sys.meta_path),
        }))
        """,
        heavy,
    )
    assert out["error"] == "boom" and out["broken_on"] and out["missing"]
    assert out["kept_off"] and out["paused_inside"] and out["hooks_left"] == 0


def test_msclip_programs_import_torch_with_the_collector_paused(tmp_path: Path) -> None:
    """run_cli (every msclip program) installs the hook before it parses the flags: an import
    of torch by a flag's check is covered as one by the program's run."""
    out = run_python(
        """
        import argparse, gc, json, sys
        assert "torch" not in sys.modules
        from msclip.cli.common import run_cli
        seen = {}
        def parse(argv):
            from msclip.cli.startup import _PausedImport
            seen["waiting"] = sorted(f.name for f in sys.meta_path if isinstance(f, _PausedImport))
            import torch  # the first import, as a flag's check may make it
            return argparse.Namespace(verbose=False, quiet=True)
        def run(args):
            seen.update(on=gc.isenabled(), frozen=gc.get_freeze_count())
            return 0
        status = run_cli([], parse, run)
        print(json.dumps({"status": status, **seen}))
        """,
        tmp_path,
    )
    assert out["status"] == 0 and out["on"] is True
    assert out["waiting"] == ["open_clip", "torch"]  # OpenCLIP's import (transformers, timm) too
    assert out["frozen"] > 100_000  # torch's import-time objects, out of later collections


def test_a_loader_that_cannot_be_hooked_imports_as_usual(heavy) -> None:
    """A finder whose loader takes no attribute (``__slots__``): the module is imported without
    the pause, and the hook goes away."""
    out = run_python(
        """
        import gc, importlib.abc, importlib.util, json, sys
        from msclip.cli.startup import _PausedImport, pause_collector_during_import

        class Slotted:  # no __dict__: its methods cannot be replaced on the instance
            __slots__ = ()
            def create_module(self, spec):
                return None
            def exec_module(self, module):
                module.COLLECTOR_ON = gc.isenabled()

        class Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "slotted_mod":
                    return importlib.util.spec_from_loader(name, Slotted())
                return None

        sys.meta_path.append(Finder())
        pause_collector_during_import("slotted_mod")
        import slotted_mod
        print(json.dumps({
            "on": slotted_mod.COLLECTOR_ON, "after": gc.isenabled(),
            "hooks_left": sum(isinstance(f, _PausedImport) for f in sys.meta_path),
        }))
        """,
        heavy,
    )
    assert out == {"on": True, "after": True, "hooks_left": 0}
