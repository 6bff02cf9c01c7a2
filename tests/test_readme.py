"""The README's promises: two set-up commands first, and CI runs the test one verbatim."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands() -> None:
    first, second = _setup_commands()
    assert "neox train templates/quickstart.yml" in first
    assert "pytest" in second
    assert (ROOT / "templates" / "quickstart.yml").is_file()


def test_ci_runs_the_readme_test_command() -> None:
    _, test_command = _setup_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


# --------------------------------------------------------------------------- the tour's commands
#
# Every `neox ...` line of the README's ```bash blocks is a candidate; these are run exactly as
# written (as tests/test_readme.py in litgpt does), each in a fresh temporary directory holding a
# copy of templates/, as a fresh clone would. Only commands that are offline and take seconds are
# selected, by this rule:
#   * `neox config show|validate|presets ...`
#   * `neox hostfile --from-list ...` (the other sources read a scheduler's job environment)
#   * `neox train ... --dry-run` (prints the launch and exits; no data, no training)
# Everything else (prepare, real training, generate/convert of a checkpoint, hostfiles from
# Slurm/PBS/LSF) is left out. A config argument that is neither a file of the repository nor a
# preset name (`my.yml`, `cfg.yml`) stands for the reader's own file: the directory gets a copy of
# the quickstart under that name.


def _readme_commands() -> list[list[str]]:
    import shlex

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in text.split("```bash\n")[1:]:
        body = block.split("```", 1)[0].replace("\\\n", " ")
        for line in body.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["neox"]:
                commands.append(argv)
    return commands


def _offline(argv: list[str]) -> bool:
    verb = argv[1] if len(argv) > 1 else ""
    if verb == "config":
        return len(argv) > 2 and argv[2] in ("show", "validate", "presets")
    if verb == "hostfile":
        return "--from-list" in argv
    return verb == "train" and "--dry-run" in argv


OFFLINE_COMMANDS = [argv for argv in _readme_commands() if _offline(argv)]


def test_the_offline_selection_covers_the_tour() -> None:
    lines = {" ".join(argv) for argv in OFFLINE_COMMANDS}
    assert "neox train pythia-14m --dry-run" in lines
    assert "neox config presets" in lines
    for start in ("neox config show ", "neox config validate ", "neox hostfile --from-list ", "neox train "):
        assert any(line.startswith(start) for line in lines), start
    assert not any(argv[1] in ("prepare", "generate", "convert") for argv in OFFLINE_COMMANDS)


@pytest.mark.parametrize("argv", OFFLINE_COMMANDS, ids=[" ".join(a[1:]) for a in OFFLINE_COMMANDS])
def test_readme_command_runs_as_written(argv: list[str], tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    from neoxcli.config.presets import preset_names

    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    for arg in argv[2:]:
        is_config = arg.endswith((".yml", ".yaml", ".json"))
        if is_config and not (ROOT / arg).exists() and arg.removesuffix(".yml") not in preset_names():
            shutil.copy(ROOT / "templates" / "quickstart.yml", tmp_path / arg)  # the reader's own config
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "neoxcli.cli", *argv[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout}\n{proc.stderr}"
