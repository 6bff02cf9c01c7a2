"""The usual language-modelling test texts for ``neox eval --text NAME``: enwik8, text8, WikiText-103.

Each is downloaded once through the data presets' downloader (resume, a
checksum where one is pinned), and its conventional test split is cut out and
cached beside the archive with a manifest holding the split's SHA-256, which is
checked on every later use:

* ``enwik8``: bytes ``95e6 .. 1e8`` of the first 10^8 bytes of the Hutter Prize
  file (the 90M/5M/5M split); the cut is moved inward to whole UTF-8 characters
  (at most 3 bytes at each end), and the row's byte count is what is scored.
* ``text8``: characters ``95e6 .. 1e8`` (a-z and space, one byte each), for bits
  per character.
* ``wikitext-103``: the raw (untokenized-by-us) test file, one document per
  article (a new article starts at a `` = Title = `` line), written as JSON lines,
  so word and byte counts per document are those lm-eval's ``wikitext`` task
  counts (WikiText-2 and WikiText-103 share their test articles).

``NEOX_EVAL_URL_<NAME>`` (``NEOX_EVAL_URL_WIKITEXT_103``) replaces a URL (a
mirror); the cache is ``$NEOX_DATA_DIR/eval/<name>`` (default ``./data``).
Offline, a preset not cached fails at once, naming the file to fetch and where it goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError


@dataclass(frozen=True)
class TextPreset:
    """Where a corpus comes from and which part of it is its test split."""

    name: str
    url: str
    member: str  # the file inside the zip archive
    kind: str  # "bytes" (enwik8), "chars" (text8) or "wikitext"
    first: int = 10**8  # the split is the last ``last`` of the first ``first`` bytes
    last: int = 5 * 10**6
    sha256: str | None = None  # of the archive, where a trusted value is pinned

    @property
    def archive(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def split_file(self) -> str:
        return f"{self.name}.test.{'jsonl' if self.kind == 'wikitext' else 'txt'}"

    @property
    def protocol(self) -> str:
        if self.kind == "wikitext":
            return "the raw test split, one document per article"
        unit = "bytes" if self.kind == "bytes" else "characters"
        return f"the last {self.last:,} of the first {self.first:,} {unit}"


TEXT_PRESETS: dict[str, TextPreset] = {
    p.name: p
    for p in (
        TextPreset("enwik8", "http://mattmahoney.net/dc/enwik8.zip", "enwik8", "bytes"),
        TextPreset("text8", "http://mattmahoney.net/dc/text8.zip", "text8", "chars"),
        TextPreset(
            "wikitext-103",
            "https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
            "wikitext-103-raw/wiki.test.raw",
            "wikitext",
        ),
    )
}


def preset_name(spec: str) -> str | None:
    """The preset ``spec`` names (``wikitext_103``, ``WikiText-103`` ...), or None for a file path."""
    key = spec.strip().lower().replace("_", "-")
    key = {"wikitext103": "wikitext-103"}.get(key, key)
    return key if key in TEXT_PRESETS else None


def cache_dir(name: str) -> Path:
    from neoxcli.data.presets import default_data_dir

    return default_data_dir() / "eval" / name


def url_for(preset: TextPreset) -> str:
    return os.environ.get("NEOX_EVAL_URL_" + re.sub(r"\W", "_", preset.name.upper()), preset.url)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_text_preset(
    spec: str,
    *,
    root: Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The test split of preset ``spec`` as a local file (downloaded and cut on first use) and its manifest."""
    from neoxcli.data.presets import download

    name = preset_name(spec)
    if name is None:
        raise DataError(f"--text {spec}: not a text preset (use one of {', '.join(TEXT_PRESETS)})")
    preset = TEXT_PRESETS[name]
    root = Path(root) if root is not None else cache_dir(name)
    split, manifest_path = root / preset.split_file, root / f"{name}.test.json"
    manifest = _read_manifest(manifest_path)
    if manifest is not None and split.is_file() and _sha256(split) == manifest.get("sha256"):
        return split, manifest
    archive = root / "raw" / preset.archive
    url = url_for(preset)
    if not archive.is_file():
        fresh = [d for d in (archive.parent, *archive.parent.parents) if not d.exists()]
        try:
            download(url, archive, progress, preset.sha256, timeout=20.0, retries=1)
        except DataError as exc:
            for d in fresh:  # deepest first: the cache folders this attempt made, if still empty
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            raise DataError(
                f"--text {name}: not cached ({archive} is missing) and it cannot be downloaded: {exc}",
                hint=f"run once with network access to cache it, or fetch {url} into {archive.parent}/",
            ) from None
    manifest = _cut_split(preset, archive, split, url)
    from neoxcli.fileio import atomic_write_text

    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return split, manifest


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _member(zf: zipfile.ZipFile, preset: TextPreset, archive: Path) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(preset.member)
    except KeyError:
        raise DataError(
            f"{archive} holds no {preset.member!r}: not the {preset.name} archive",
            hint="delete it and run again to download it anew",
        ) from None


def _cut_split(preset: TextPreset, archive: Path, split: Path, url: str) -> dict[str, Any]:
    """Write the test split of ``archive`` to ``split`` (atomically); its manifest."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"{archive} is not a readable zip archive ({exc})", hint="delete it and run again"
        ) from None
    with zf:
        info = _member(zf, preset, archive)
        if preset.kind == "wikitext":
            text = zf.read(info).decode("utf-8")
            pages = wikitext_articles(text)
            data = "".join(json.dumps({"text": p}, ensure_ascii=False) + "\n" for p in pages).encode()
            dropped = (0, 0)
        else:
            if info.file_size < preset.first:
                raise DataError(
                    f"{archive}: {preset.member} has {info.file_size:,} bytes, fewer than the "
                    f"{preset.first:,} of {preset.name}",
                    hint="delete it and run again to download it anew",
                )
            raw = _byte_range(zf, info, preset.first - preset.last, preset.first)
            data, dropped = _whole_characters(raw) if preset.kind == "bytes" else (raw, (0, 0))
            try:
                data.decode("ascii" if preset.kind == "chars" else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{archive}: the {preset.name} test split is not text ({exc.reason})"
                ) from None
    _write_bytes(split, data)
    return {
        "preset": preset.name,
        "url": url,
        "archive": archive.name,
        "member": preset.member,
        "split": preset.protocol,
        "range": None if preset.kind == "wikitext" else [preset.first - preset.last, preset.first],
        "trimmed_bytes": list(dropped),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path`` byte for byte, through a temporary name and a rename."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _byte_range(zf: zipfile.ZipFile, info: zipfile.ZipInfo, start: int, end: int) -> bytes:
    """Bytes ``start .. end`` of a member, decompressed in chunks (never the whole member in memory)."""
    out = bytearray()
    pos = 0
    with zf.open(info) as f:
        while pos < end:
            chunk = f.read(min(1 << 22, end - pos))
            if not chunk:
                break
            lo, hi = max(start - pos, 0), len(chunk)
            if lo < hi:
                out += chunk[lo:hi]
            pos += len(chunk)
    return bytes(out)


def _whole_characters(raw: bytes) -> tuple[bytes, tuple[int, int]]:
    """``raw`` without a partial UTF-8 character at either end; (bytes, (dropped at start, at end))."""
    head = 0
    while head < min(3, len(raw)) and raw[head] & 0xC0 == 0x80:  # continuation bytes of a cut character
        head += 1
    body = raw[head:]
    tail = 0
    for back in range(1, min(4, len(body)) + 1):
        b = body[-back]
        if b & 0xC0 == 0x80:
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
        tail = back if need > back else 0
        break
    return (body[: len(body) - tail] if tail else body), (head, tail)


_ARTICLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(text: str) -> list[str]:
    """WikiText's raw file as articles: each starts at a top-level `` = Title = `` line, lines kept as they are."""
    pages: list[list[str]] = [[]]
    for line in text.split("\n"):
        if _ARTICLE.match(line) and any(s.strip() for s in pages[-1]):
            pages.append([])
        pages[-1].append(line)
    return ["\n".join(p) for p in pages if any(s.strip() for s in p)]
