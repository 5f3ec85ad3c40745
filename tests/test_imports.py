"""The package's import graph keeps one direction.

Walks every module of ``msclip`` (imports at any depth, lazy ones included) and fails if

- a module outside ``msclip/cli`` imports ``msclip.cli`` (the library never depends on its
  command-line programs; ``__main__.py`` files are entry points that only call a CLI's ``main``);
- two msclip modules import each other, directly or through others (an import cycle);
- ``msclip/spectral`` imports ``msclip.io`` (the spectral core works on arrays, never on files);
- the library imports ``msclip.train`` (training is an application of the library).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import msclip

PACKAGE = Path(msclip.__file__).parent


def _modules() -> dict[str, Path]:
    """msclip's modules; the top-level ``cuda/`` of a source checkout is ``msclip.cuda``."""
    roots = [(PACKAGE, ("msclip",))]
    kernels = PACKAGE.parent / "cuda"
    if not (PACKAGE / "cuda").is_dir() and kernels.is_dir():
        roots.append((kernels, ("msclip", "cuda")))
    mods = {}
    for root, prefix in roots:
        for f in root.rglob("*.py"):
            parts = [*prefix, *f.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the msclip modules it imports (``from a.b import c`` counts ``a.b.c`` when it is
    a module, else ``a.b``; a package's ``__init__`` is not counted for its submodules)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                names = [f"{module}.{a.name}" for a in node.names] + [module]
            for name in names:
                if name.split(".")[0] != "msclip":
                    continue
                target = _resolve(name, mods)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _is_entry_shim(module: str) -> bool:
    return module.endswith(".__main__")


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert "msclip.cli.inference" in graph and "msclip.spectral.preprocess" in graph
    assert "msclip.cli.common" in graph["msclip.cli.inference"]  # a real edge is found
    assert "msclip.cuda.contrastive" in graph  # the kernels' folder is part of the package


def test_only_cli_imports_cli():
    graph = import_graph()
    offenders = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if t.startswith("msclip.cli") and not m.startswith("msclip.cli") and not _is_entry_shim(m)
    ]
    assert offenders == []


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_spectral_reads_no_files():
    graph = import_graph()
    offenders = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.startswith("msclip.spectral")
        for t in targets
        if t == "msclip.io"
    ]
    assert offenders == []


def test_library_does_not_import_training():
    graph = import_graph()
    offenders = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if not m.startswith(("msclip.train", "msclip.cli")) and not _is_entry_shim(m)
        for t in targets
        if t.startswith("msclip.train")
    ]
    assert offenders == []


def test_cycle_detection_works():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_msclip_loads_no_command_line_training_kernels_or_torch():
    code = (
        "import sys, msclip; "
        "print(sorted(m for m in sys.modules if m.startswith(('msclip.cli', 'msclip.train', "
        "'msclip.cuda', 'torch', 'triton'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_docs_python_examples_import_what_they_use():
    """Every ``from msclip... import ...`` line of the docs' Python examples resolves (a name the
    lazy export tables lack fails here, not in a user's first line)."""
    import importlib
    import re

    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    pattern = re.compile(r"^from (msclip[\w.]*) import ([^\n(]+)$", re.M)
    seen = 0
    for doc in docs:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            for module, names in pattern.findall(block):
                mod = importlib.import_module(module)
                for name in (n.strip() for n in names.split(",")):
                    assert hasattr(mod, name), f"{doc.name}: {module} has no {name}"
                    seen += 1
    assert seen > 5
