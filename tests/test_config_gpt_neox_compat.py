"""GPT-NeoX config forms: keys and values its own config files use, and the ones neox refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from neoxcli.config import load_config
from neoxcli.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "a.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config([path], warn=lambda _: None)
    return info.value


def test_save_interval_of_older_releases_is_checkpoint_factor(tmp_path: Path) -> None:
    # GPT-NeoX's 2-7B, 6-7B, 13B, 20B and XL files still write save-interval.
    cfg = load_config([write(tmp_path, '{\n  "save-interval": 500,\n}\n')], warn=lambda _: None)
    assert cfg.checkpoint.checkpoint_factor == 500
    both = write(tmp_path, "save_interval: 500\ncheckpoint_factor: 250\n", "b.yml")
    assert load_config([both]).checkpoint.checkpoint_factor == 250
