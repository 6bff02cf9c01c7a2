"""Small file helpers shared by the commands (standard library only, so cheap to import)."""

from __future__ import annotations

import errno
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


def write_error(path: str | os.PathLike[str], exc: OSError) -> Exception:
    """One error line for a failed write: the path meant, and the system's reason.

    ``exc.filename`` is often a temporary name; the user knows the path they asked for.
    """
    from neoxcli.errors import NeoxError

    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free some space, or write somewhere else",
        errno.EDQUOT: "the disk quota is used up: free some space, or write somewhere else",
        errno.EROFS: "that file system is mounted read-only: write somewhere else",
        errno.EACCES: "you may not write there: choose another path or fix the permissions",
    }.get(exc.errno or 0)
    return NeoxError(f"cannot write {os.fspath(path)}: {reason}", hint=hint)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, with one error line, when ``path`` could not be written later.

    Used before long work (sampling, tokenizing, converting) whose result goes
    to ``path``: a read-only, full or forbidden directory is found by writing
    one byte to a probe file in the nearest existing directory (then removed),
    not after the work is done.
    """
    path = Path(path)
    check_output_file(path)
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.write(fd, b"\0")
        os.fsync(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)


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
    fsync_dir(path.parent)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our writers' temporary files (``.{name}.*.tmp``), debris after a crash."""
    return name.startswith(".") and name.endswith(".tmp")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flush every file below ``root`` and each directory's entries, so a crash after this loses none of them."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)
