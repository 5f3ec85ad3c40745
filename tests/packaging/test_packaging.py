"""An installed msclip finds its template sets and its optional kernels package, from a source
checkout (editable install) and from a wheel."""

from __future__ import annotations

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
