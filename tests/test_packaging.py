"""The built wheel: it carries every module and the templates, and an install of it finds them.

The repository keeps ``templates/`` (presets, the quickstart, the sbatch
template) at the top level; the wheel ships it as ``neoxcli/templates``. The
wheel is built from a copy of the sources in a temporary directory, offline
(``--no-build-isolation``: the installed setuptools builds it), so the checkout
gets no ``build/`` directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("setuptools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("neoxcli", "templates"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(src),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = out.glob("neoxcli-*.whl")
    return found


def test_wheel_holds_every_module_and_the_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "neoxcli").rglob("*.py")}
    assert modules - names == set(), "a package is missing from [tool.setuptools] packages in pyproject.toml"
    templates = {
        "neoxcli/templates/" + p.relative_to(ROOT / "templates").as_posix()
        for p in (ROOT / "templates").rglob("*")
        if p.is_file()
    }
    assert "neoxcli/templates/quickstart.yml" in templates
    assert "neoxcli/templates/slurm/neox.sbatch" in templates
    assert "neoxcli/templates/presets/pythia-14m.yml" in templates
    assert templates - names == set(), "a template is missing from package-data in pyproject.toml"
    assert not any(n.startswith("templates/") for n in names)  # inside the package, not top level


@pytest.mark.slow
def test_installed_wheel_finds_its_templates_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv (torch and friends from the system) with only the wheel installed, run elsewhere."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    # --force-reinstall: a neoxcli of the same version may be installed (editable) in the system.
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall"]
    proc = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEOX_DEBUG")}

    def neox(*args: str) -> str:
        proc = subprocess.run(
            [str(venv / "bin" / "neox"), *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"neox {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    where = subprocess.run(
        [str(python), "-c", "import neoxcli.resources as r; print(r.__file__); print(r.templates_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    site = venv.resolve()
    assert all(Path(line).resolve().is_relative_to(site) for line in where), where

    assert neox("config", "validate", "quickstart") == "ok: quickstart\n"
    assert "neoxcli/templates/presets/pythia-14m.yml" in neox("train", "pythia-14m", "--dry-run")
    assert "EleutherAI/pythia-160m" in neox("config", "presets")
    sbatch = neox("train", "quickstart", "--launcher", "slurm", "--sbatch", "--dry-run")
    template = (ROOT / "templates" / "slurm" / "neox.sbatch").read_text(encoding="utf-8")
    assert f"#   {template.splitlines()[1]}" in sbatch, sbatch  # the script is the shipped template, filled
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # dry runs write nothing
