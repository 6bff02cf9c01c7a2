"""Small file helpers shared by the commands (standard library only, so cheap to import)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_output_file(path: str | os.PathLike[str]) -> None:
    """Fail with one error line when ``path`` cannot become a file.

    A directory of that name, or a file where a parent directory should be,
    would otherwise surface as an OSError traceback from the final rename (or
    from creating the parents), after the work whose result was to be written.
    """
    from neoxcli.errors import NeoxError

    path = Path(path)
    if path.is_dir():
        raise NeoxError(f"cannot write {path}: it is a directory", hint="name a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NeoxError(f"cannot write {path}: {parent} is a file, not a directory")
            break


def atomic_write_text(path: str | os.PathLike[str], text: str, *, keep_mode: bool = False) -> None:
    """Write ``text`` through a temporary file in the same directory and a rename.

    Readers (a launcher reading a hostfile, a loader following ``latest``) see the
    old file or the new one, never half of it; the temporary file is removed on
    any failure. ``keep_mode`` keeps an existing file's permissions (else 0644).
    Creates missing parent directories.
    """
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if keep_mode and path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
