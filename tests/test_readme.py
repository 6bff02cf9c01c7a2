"""The README's promises: two set-up commands first, and CI runs the test one verbatim."""

from __future__ import annotations

from pathlib import Path

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
