"""An installed msclip finds its template sets and its optional kernels package, from a source
checkout (editable install) and from a wheel."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import msclip
from msclip.zero_shot import list_template_sets, templates_dir

REPO = Path(msclip.__file__).resolve().parents[1]


def test_source_checkout_reads_the_top_level_templates():
    assert (REPO / "templates" / "eo.txt").is_file()
    assert templates_dir() == REPO / "templates"
    assert {"eo", "short", "sentinel2"} <= set(list_template_sets())
    assert not (REPO / "msclip" / "templates").exists()  # one home: the top-level folder


@pytest.mark.slow
def test_wheel_ships_templates_and_kernels(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("msclip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("msclip/templates/")}
    assert shipped == {p.name for p in (REPO / "templates").glob("*.txt")}
    assert "msclip/cuda/__init__.py" in names
    # the data folders (no __init__.py): demo weights, model configs, class-name lists
    for folder, pattern in [
        ("weights", "*"), ("model_configs", "*.json"), ("eval/classnames", "*.txt"),
    ]:  # fmt: skip
        expected = {f"msclip/{folder}/{p.name}" for p in (REPO / "msclip" / folder).glob(pattern)}
        assert expected and expected <= set(names), folder
    # the unpacked wheel, first on the path, finds its own templates and kernels package
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import msclip.zero_shot as z, msclip.cuda as k; "
        "print(z.templates_dir()); print(k.__file__); print(z.list_template_sets())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()  # fmt: skip
    assert out[0] == str(site / "msclip" / "templates")
    assert out[1].startswith(str(site / "msclip" / "cuda"))
    assert "eo" in out[2]


def _declared_closure() -> set[str]:
    """Distributions pyproject.toml declares, with everything they require (installed metadata)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    seen: set[str] = set()
    todo = [Requirement(r).name for r in declared]
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


def test_every_third_party_import_is_a_declared_dependency():
    # msclip/ only: cuda/ imports triton, which the CUDA build of torch brings along
    top: set[str] = set()
    for path in (REPO / "msclip").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top.add(node.module.split(".")[0])
    third_party = top - set(sys.stdlib_module_names) - {"msclip"}
    dists = metadata.packages_distributions()
    closure = _declared_closure()
    missing = {
        m: dists.get(m, ["?"]) for m in sorted(third_party)
        if not any(d.lower().replace("_", "-") in closure for d in dists.get(m, []))
    }  # fmt: skip
    assert not missing, f"imported but not required by pyproject.toml: {missing}"
