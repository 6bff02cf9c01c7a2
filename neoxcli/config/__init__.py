"""neox configuration: the schema, loading files and overrides, and derived values.

Submodules not re-exported here: ``presets`` (the shipped presets and preset
names), ``params`` (parameter counts), ``report`` (what ``neox config show``
and ``validate`` print) and ``mup`` (the muP recipe for config files).

Kept import-light (pydantic and PyYAML only, never torch at import time) so
that ``neox config`` and ``neox --help`` stay fast.
"""

from __future__ import annotations

from neoxcli.config.derived import (
    Derived,
    default_world_size,
    padded_vocab_size,
    resolve,
    vocab_size_from_file,
)
from neoxcli.config.loader import dump_config, load_config, parse_override
from neoxcli.config.neox_keys import GPT_NEOX_KEYS
from neoxcli.config.schema import SECTIONS, NeoXConfig, field_index

__all__ = [
    "GPT_NEOX_KEYS",
    "SECTIONS",
    "Derived",
    "NeoXConfig",
    "default_world_size",
    "dump_config",
    "field_index",
    "load_config",
    "padded_vocab_size",
    "parse_override",
    "resolve",
    "vocab_size_from_file",
]
