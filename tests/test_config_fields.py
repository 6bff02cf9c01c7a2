"""Every setting the schema accepts is read by the code: no field is silently dead."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from neoxcli.config import schema

PACKAGE = Path(__file__).resolve().parents[1] / "neoxcli"
# These only map or list key names; a mention there is not a use.
NOT_READERS = {"loader.py", "neox_keys.py", "schema.py"}


def test_every_schema_field_has_a_reader() -> None:
    """A field counts as read where library code outside the key-mapping modules reads
    ``.field``, or where a schema property or validator derives something from ``self.field``
    (those derived values are what the library reads). A Literal with a single allowed value
    (GPT-NeoX's ``data_impl: mmap``) states a fact and needs no reader."""
    code = "\n".join(
        p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py") if p.name not in NOT_READERS
    )
    own = (PACKAGE / "config" / "schema.py").read_text(encoding="utf-8")
    dead = []
    for section, cls in schema.SECTIONS.items():
        for name, info in cls.model_fields.items():
            args = typing.get_args(info.annotation)
            if typing.get_origin(info.annotation) is typing.Literal and len(args) == 1:
                continue
            if re.search(rf"\.{name}\b", code) or re.search(rf"self\.{name}\b", own):
                continue
            dead.append(f"{section}.{name}")
    assert dead == [], f"schema fields nothing reads: {dead}"
