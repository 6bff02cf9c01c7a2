"""`neox prepare` on gzip files and tar archives: the same ids as plain inputs, streamed, damage reported."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from neoxcli.cli import main
from neoxcli.data.indexed import IndexedDataset
from neoxcli.data.prepare import Progress, prepare
from neoxcli.data.readers import BadInput, InputFile, Record, expand_inputs, iter_records
from neoxcli.data.tokenizer import CharLevelTokenizer

CHAR = ["--tokenizer", "CharLevelTokenizer", "-q"]


def _lines(n: int, tag: str = "doc") -> bytes:
    return "".join(
        json.dumps({"text": f"{tag} {i} {os.urandom(24).hex()}"}) + "\n" for i in range(n)
    ).encode()


def _docs(prefix: Path) -> list[str]:
    ds = IndexedDataset(prefix)
    return [bytes(ds.document(i).tolist()).decode("utf-8") for i in range(ds.num_documents)]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                _add(tf, name, data)
    return buf.getvalue()


def _compress(data: bytes, suffix: str) -> bytes:
    if suffix.endswith(("gz", "tgz")):
        return gzip.compress(data)
    if suffix.endswith("zst"):
        return zstandard.ZstdCompressor().compress(data)
    return data


def test_gz_inputs_give_the_ids_of_the_plain_inputs(tmp_path: Path) -> None:
    files = {
        "a.jsonl": _lines(3000),
        "b.json": json.dumps([{"text": "from a json array"}, "plain string"]).encode(),
        "c.json": _lines(5, "c4-style json lines"),
        "d.txt": "one whole\nfile ✓\n".encode(),
    }
    for sub, suffix in (("plain", ""), ("gz", ".gz")):
        (tmp_path / sub).mkdir()
        for name, data in files.items():
            (tmp_path / sub / (name + suffix)).write_bytes(gzip.compress(data) if suffix else data)
        assert main(["prepare", str(tmp_path / sub), "-o", str(tmp_path / sub / "o"), *CHAR]) == 0
    plain, gz = tmp_path / "plain" / "o_text_document", tmp_path / "gz" / "o_text_document"
    assert IndexedDataset(gz).num_documents == 3000 + 2 + 5 + 1
    for ext in (".bin", ".idx"):
        assert Path(str(gz) + ext).read_bytes() == Path(str(plain) + ext).read_bytes()
    assert _docs(gz)[-1] == "one whole\nfile ✓\n"


def test_gz_is_streamed_and_progress_counts_compressed_bytes(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl.gz"
    src.write_bytes(gzip.compress(_lines(20000)))
    size = src.stat().st_size
    f = InputFile(str(src))
    first = next(iter_records(f, ("text",)))
    assert isinstance(first, Record) and first.texts[0].startswith("doc 0 ")
    assert 0 < f.position() < size // 4  # read a little, not the whole file
    f.close()
    seen: list[Progress] = []
    res = prepare(
        [src],
        tmp_path / "o",
        CharLevelTokenizer(),
        progress=lambda p: seen.append(Progress(**vars(p))),
        batch_bytes=1 << 16,
    )
    assert res.documents == 20000 and res.bytes_read == size
    assert all(p.bytes_total == size and p.bytes_done <= size for p in seen)
    assert any(0 < p.bytes_done < size for p in seen) and seen[-1].bytes_done == size


def test_truncated_or_corrupt_gz_is_reported_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comp = gzip.compress(_lines(20000))
    (tmp_path / "t.jsonl.gz").write_bytes(comp[: len(comp) // 2])
    rc = main(["prepare", str(tmp_path / "t.jsonl.gz"), "-o", str(tmp_path / "o"), *CHAR])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert re.search(r"t\.jsonl\.gz:\d+: truncated \.gz stream", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl.gz"]  # nothing half-written
    rc = main(["prepare", str(tmp_path / "t.jsonl.gz"), "-o", str(tmp_path / "o"), "--on-bad", "skip", *CHAR])
    err = capsys.readouterr().err
    assert rc == 0 and "1 bad skipped" in err
    assert 0 < IndexedDataset(tmp_path / "o_text_document").num_documents < 20000
    (tmp_path / "n.txt.gz").write_bytes(b"this is not gzip data at all")
    assert main(["prepare", str(tmp_path / "n.txt.gz"), "-o", str(tmp_path / "n"), *CHAR]) == 2
    assert "n.txt.gz:1: corrupt .gz data" in capsys.readouterr().err


def test_directories_and_globs_pick_up_gz_and_tar(tmp_path: Path) -> None:
    names = ["a.jsonl.gz", "b.json.gz", "c.txt.gz", "d.tar", "e.tar.gz", "f.tgz", "g.tar.zst", "h.png"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    want = [str(tmp_path / n) for n in names[:-1]]
    assert expand_inputs([tmp_path]) == want
    assert expand_inputs([str(tmp_path / "*.t*")]) == [
        str(tmp_path / n) for n in ("c.txt.gz", "d.tar", "e.tar.gz", "f.tgz", "g.tar.zst")
    ]


def _archive_members() -> list[tuple[str, bytes]]:
    inner = _tar([("f.jsonl", b'{"text": "nested tar"}\n')])
    return [
        ("docs/", b""),
        ("docs/a.jsonl.zst", zstandard.ZstdCompressor().compress(b'{"text": "a1"}\n{"text": "a2"}\n')),
        ("docs/b.txt", b"a whole\ntext member\n"),
        ("img/c.png", b"\x89PNG\r\n\x1a\n not text"),
        ("docs/d.json.gz", gzip.compress(json.dumps([{"text": "d1"}, {"text": "d2"}]).encode())),
        ("e.zip", b"PK\x03\x04 a zip we do not open"),
        ("inner.tar", inner),
        ("docs/._b.txt", b"\x00\x05\x16\x07 macOS metadata"),
    ]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.zst"])
def test_tar_archives_are_read_member_by_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    arc = tmp_path / f"corpus{suffix}"
    arc.write_bytes(_compress(_tar(_archive_members()), suffix))
    assert main(["prepare", str(arc), "-o", str(tmp_path / "o"), *CHAR]) == 0
    assert _docs(tmp_path / "o_text_document") == [
        "a1",
        "a2",
        "a whole\ntext member\n",
        "d1",
        "d2",
        "nested tar",
    ]
    err = capsys.readouterr().err
    assert "3 archive members skipped" in err and "1 .png" in err and "1 .zip" in err
    f = InputFile(str(arc))
    sources = [(r.source, r.line) for r in iter_records(f, ("text",)) if isinstance(r, Record)]
    f.close()
    assert sources[0] == (f"{arc}:docs/a.jsonl.zst", 1) and sources[-1] == (f"{arc}:inner.tar:f.jsonl", 1)
    assert dict(f.skipped) == {".png": 1, ".zip": 1, "macOS metadata": 1}


def test_tar_bad_members_name_archive_member_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the summary's long paths stay on one line
    arc = tmp_path / "bad.tar"
    arc.write_bytes(
        _tar(
            [
                ("x/a.jsonl", b'{"text": "ok"}\n{"text": oops}\n'),
                ("x/b.jsonl.zst", zstandard.ZstdCompressor().compress(_lines(2000))[:500]),
                ("x/c.txt", b"still read"),
            ]
        )
    )
    rc = main(["prepare", str(arc), "-o", str(tmp_path / "o"), *CHAR])
    err = capsys.readouterr().err
    assert rc == 2 and f"{arc}:x/a.jsonl:2: invalid JSON" in err and err.count("error:") == 1
    rc = main(["prepare", str(arc), "-o", str(tmp_path / "o"), "--on-bad", "skip", *CHAR])
    err = capsys.readouterr().err
    assert rc == 0 and "2 bad skipped" in err and "x/b.jsonl.zst:1: truncated .zst" in err
    assert _docs(tmp_path / "o_text_document") == ["ok", "still read"]  # the archive goes on


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_truncated_tar_is_reported_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    data = _compress(_tar([("big.jsonl", _lines(5000)), ("after.txt", b"x")]), suffix)
    arc = tmp_path / f"t{suffix}"
    arc.write_bytes(data[: len(data) // 2])
    rc = main(["prepare", str(arc), "-o", str(tmp_path / "o"), *CHAR])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert re.search(rf"t{re.escape(suffix)}:big\.jsonl:\d+: truncated", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [arc.name]


def test_damaged_tar_headers_are_not_taken_for_the_end(tmp_path: Path) -> None:
    raw = _tar([("a.txt", b"first"), ("b.txt", b"second")])
    (tmp_path / "cut.tar").write_bytes(raw[: 1024 + 300])  # inside b.txt's header
    (tmp_path / "junk.tar").write_bytes(raw[:1024] + b"\x07" * 512 + raw[1536:])
    (tmp_path / "none.tar").write_bytes(b"not a tar archive" * 40)
    want = {
        "cut.tar": "cut.tar: truncated tar archive",
        "junk.tar": "junk.tar: corrupt tar archive: bad member header after a.txt",
        "none.tar": "none.tar: not a tar archive",
    }
    for name, message in want.items():
        f = InputFile(str(tmp_path / name))
        bad = [str(r) for r in iter_records(f, ("text",)) if isinstance(r, BadInput)]
        f.close()
        assert len(bad) == 1 and message in bad[0], (name, bad)


def test_help_names_gz_and_tar(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in (".gz", ".zst", ".tar", ".tar.gz", ".tgz", ".tar.zst"))


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress])
def test_compressed_stdin_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: Callable[[bytes], bytes]
) -> None:
    data = _lines(50)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(compress(data)))))
    res = prepare(["-"], tmp_path / "s", CharLevelTokenizer())
    assert (
        res.documents == 50
        and _docs(tmp_path / "s_text_document")[0] == json.loads(data.split(b"\n")[0])["text"]
    )
