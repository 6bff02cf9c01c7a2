"""The shipped model presets: where they are, their names, and resolving a preset name to its file.

A preset is a config file in the templates' ``presets/`` directory
(``pythia-160m.yml``); its name is the file name without ``.yml``. Besides the
model's settings it holds ``hf_id``, the Hugging Face model whose sizes it
reproduces (``null`` where none was released). ``quickstart`` names the
quickstart config the same way. Standard library and PyYAML only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from neoxcli.resources import templates_dir

#: Config files in the templates' top level that a bare name also stands for.
TEMPLATE_CONFIGS = ("quickstart",)


def preset_dir() -> Path:
    """The ``presets`` directory of the shipped templates."""
    return templates_dir() / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets (file names without ``.yml``)."""
    return sorted(p.stem for p in preset_dir().glob("*.yml"))


def _named_file(name: str) -> Path | None:
    """The shipped config a bare name stands for, if any."""
    stem = name.removesuffix(".yml")
    preset = preset_dir() / f"{stem}.yml"
    if preset.is_file():
        return preset
    if stem in TEMPLATE_CONFIGS and (templates_dir() / f"{stem}.yml").is_file():
        return templates_dir() / f"{stem}.yml"
    return None


def resolve_config_path(name: str | os.PathLike[str]) -> str:
    """A config file path: the file itself when it exists, else the shipped config of that name.

    Only a bare name (no path separator) can mean a preset, and an existing
    file wins: ``pythia-70m`` is ``./pythia-70m`` or ``./pythia-70m.yml`` when
    either exists, else the preset. Anything else comes back unchanged, so the
    caller's "not found" error names what the user typed.
    """
    text = os.fspath(name)
    path = Path(text)
    if path.exists() or path.with_name(path.name + ".yml").exists():
        return text
    if "/" in text or os.sep in text or (os.altsep and os.altsep in text) or not text.strip():
        return text
    found = _named_file(text)
    return str(found) if found is not None else text


@dataclass(frozen=True)
class PresetInfo:
    """One preset as ``neox config presets`` lists it."""

    name: str
    hf_id: str | None
    title: str  # the file's first comment line, without its "Hugging Face: ..." part


def preset_info(name: str) -> PresetInfo:
    """Name, Hugging Face id and title of one preset."""
    import yaml

    path = preset_dir() / f"{name}.yml"
    text = path.read_text(encoding="utf-8")
    hf_id = (yaml.safe_load(text) or {}).get("hf_id")
    first = text.splitlines()[0].lstrip("# ").strip()
    title = re.split(r"\s*Hugging Face:", first, maxsplit=1)[0].strip()
    return PresetInfo(name, str(hf_id) if hf_id is not None else None, title)


def list_presets() -> list[PresetInfo]:
    """Every shipped preset, by name."""
    return [preset_info(name) for name in preset_names()]
