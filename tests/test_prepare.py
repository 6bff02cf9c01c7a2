"""`neox prepare`: inputs, outputs, bad input, interruption, inspect, merge, presets."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zstandard

from neoxcli.cli import main
from neoxcli.data.indexed import IndexedDataset
from neoxcli.data.prepare import prepare
from neoxcli.data.presets import download, prepare_preset, stdlib_files, stdlib_root
from neoxcli.data.tokenizer import CharLevelTokenizer
from neoxcli.errors import DataError

CHAR = ["--tokenizer", "CharLevelTokenizer", "-q"]
DOCS = [
    {"text": "hello world", "title": "one"},
    {"text": "héllo ✓", "title": "two"},
    {"text": "", "title": "x"},
]


def _jsonl(path: Path, docs: list[dict] = DOCS) -> Path:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def _docs(prefix: Path) -> list[str]:
    ds = IndexedDataset(prefix)
    return [bytes(ds.document(i).tolist()).decode("utf-8") for i in range(ds.num_documents)]


def test_jsonl_to_gpt_neox_naming(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "a.jsonl")
    assert main(["prepare", str(src), "--output-prefix", str(tmp_path / "out"), *CHAR]) == 0
    assert _docs(tmp_path / "out_text_document") == ["hello world", "héllo ✓"]  # the empty one is skipped
    err = capsys.readouterr().err
    assert "3 documents read" in err


def test_append_eod_and_multiple_keys(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "a.jsonl")
    args = [
        "prepare",
        str(src),
        "-o",
        str(tmp_path / "o"),
        "--append-eod",
        "--jsonl-keys",
        "text",
        "title",
        *CHAR,
    ]
    assert main(args) == 0
    t = IndexedDataset(tmp_path / "o_text_document")
    assert t[0].tolist() == list(b"hello world") + [0]
    assert _docs(tmp_path / "o_title_document") == ["one\x00", "two\x00", "x\x00"]


def test_zst_json_txt_and_directories(tmp_path: Path) -> None:
    raw = "".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(2000)).encode()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "in" / "b.json").write_text(json.dumps([{"text": "from json"}, "plain string"]))
    (tmp_path / "in" / "c.txt").write_text("a whole\nfile\n")
    assert main(["prepare", str(tmp_path / "in"), "-o", str(tmp_path / "o"), *CHAR]) == 0
    docs = _docs(tmp_path / "o_text_document")
    assert (
        len(docs) == 2003
        and docs[0] == "doc 0 " * 50
        and docs[2000:] == ["from json", "plain string", "a whole\nfile\n"]
    )


def test_zst_is_streamed_across_frames(tmp_path: Path) -> None:
    c = zstandard.ZstdCompressor()
    frames = b"".join(c.compress(json.dumps({"text": f"f{i}"}).encode() + b"\n") for i in range(5))
    (tmp_path / "m.jsonl.zst").write_bytes(frames)
    assert main(["prepare", str(tmp_path / "m.jsonl.zst"), "-o", str(tmp_path / "o"), *CHAR]) == 0
    assert _docs(tmp_path / "o_text_document") == [f"f{i}" for i in range(5)]


BAD_CASES = {
    "invalid_json": (b'{"text": "ok"}\n{"text": oops}\n', "bad.jsonl:2: invalid JSON"),
    "missing_key": (b'{"text": "ok"}\n{"body": "x"}\n', "bad.jsonl:2: missing key 'text'"),
    "not_a_string": (b'{"text": 5}\n', "bad.jsonl:1: key 'text' is int"),
    "undecodable": (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', "bad.jsonl:2: undecodable bytes"),
    "lone_surrogate": (
        b'{"text": "ok"}\n{"text": "caf\xc3\xa9 \\ud800!"}\n',
        "bad.jsonl:2: key 'text' holds a lone surrogate \\ud800 at character 5",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_fails_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    data, message = BAD_CASES[case]
    (tmp_path / "bad.jsonl").write_bytes(data)
    rc = main(["prepare", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "o"), *CHAR])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and "--on-bad skip" in err
    assert not [p for p in tmp_path.iterdir() if p.name != "bad.jsonl"]  # nothing left behind


def test_truncated_zst_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = "".join(json.dumps({"text": f"line {i} " * 20}) + "\n" for i in range(5000)).encode()
    comp = zstandard.ZstdCompressor().compress(raw)
    (tmp_path / "t.jsonl.zst").write_bytes(comp[: len(comp) // 2])
    rc = main(["prepare", str(tmp_path / "t.jsonl.zst"), "-o", str(tmp_path / "o"), *CHAR])
    err = capsys.readouterr().err
    assert rc == 2 and "t.jsonl.zst:" in err and "truncated .zst" in err


def test_on_bad_skip_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "a"}\nnot json\n{"x": 1}\n{"text": "b"}\n')
    rc = main(["prepare", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "o"), "--on-bad", "skip", *CHAR])
    err = capsys.readouterr().err
    assert rc == 0 and "2 bad skipped" in err and "bad.jsonl:2" in err
    assert _docs(tmp_path / "o_text_document") == ["a", "b"]


def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o"), *CHAR]) == 2
    assert "not found" in capsys.readouterr().err
    src = _jsonl(tmp_path / "a.jsonl")
    assert main(["prepare", str(src), *CHAR]) == 2
    assert "--output-prefix" in capsys.readouterr().err
    assert main(["prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", "Nope"]) == 2
    assert main(["prepare", str(src), "-o", str(tmp_path / "o"), *CHAR]) == 0
    assert main(["prepare", str(src), "-o", str(tmp_path / "o"), *CHAR]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_stdin_and_workers(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"text": f"stdin doc {i}"}) + "\n" for i in range(100))
    cmd = [
        sys.executable,
        "-m",
        "neoxcli.cli",
        "prepare",
        "-",
        "-o",
        str(tmp_path / "s"),
        "--workers",
        "2",
        *CHAR,
    ]
    proc = subprocess.run(cmd, input=lines, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _docs(tmp_path / "s_text_document") == [f"stdin doc {i}" for i in range(100)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_never_leaves_a_whole_looking_dataset(tmp_path: Path, sig: signal.Signals) -> None:
    cmd = [sys.executable, "-m", "neoxcli.cli", "prepare", "-", "-o", str(tmp_path / "k"), *CHAR]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    line = (json.dumps({"text": "x" * 1000}) + "\n").encode()
    proc.stdin.write(line * 3000)  # several batches: data is being written
    proc.stdin.flush()
    deadline = time.time() + 30
    while time.time() < deadline and not any(
        p.stat().st_size for p in tmp_path.glob(".k_text_document.bin.tmp-*")
    ):
        time.sleep(0.05)
    assert list(tmp_path.glob(".k_text_document.bin.tmp-*")), "the writer never started"
    proc.send_signal(sig)
    proc.wait(30)
    assert not (tmp_path / "k_text_document.bin").exists() and not (tmp_path / "k_text_document.idx").exists()
    if sig == signal.SIGTERM:
        assert list(tmp_path.iterdir()) == []  # temporaries removed on the way out
    src = _jsonl(tmp_path / "a.jsonl")
    assert main(["prepare", str(src), "-o", str(tmp_path / "k"), *CHAR]) == 0  # the next run cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jsonl",
        "k_text_document.bin",
        "k_text_document.idx",
    ]


def test_inspect_and_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _jsonl(tmp_path / "a.jsonl")
    _jsonl(tmp_path / "b.jsonl", [{"text": "third"}])
    assert main(["prepare", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "a"), *CHAR]) == 0
    assert main(["prepare", str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "b"), *CHAR]) == 0
    capsys.readouterr()
    assert (
        main(["prepare", "inspect", str(tmp_path / "a_text_document"), "--tokenizer", "CharLevelTokenizer"])
        == 0
    )
    out = capsys.readouterr().out
    assert "documents   2" in out and "tokens      21" in out and "uint16" in out and "hello world" in out
    m = str(tmp_path / "m_text_document")
    assert (
        main(
            [
                "prepare",
                "merge",
                str(tmp_path / "a_text_document"),
                str(tmp_path / "b_text_document"),
                "-o",
                m,
            ]
        )
        == 0
    )
    ds = IndexedDataset(m)
    assert ds.doc_idx.tolist() == [0, 1, 2, 3]
    assert _docs(Path(m)) == ["hello world", "héllo ✓", "third"]


def test_merge_output_with_a_suffix_is_the_same_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o x.bin`` writes ``x.bin``/``x.idx``: the overwrite and output-is-input checks must see that."""
    _jsonl(tmp_path / "a.jsonl")
    _jsonl(tmp_path / "b.jsonl", [{"text": "third"}])
    for name in ("a", "b"):
        assert main(["prepare", str(tmp_path / f"{name}.jsonl"), "-o", str(tmp_path / name), *CHAR]) == 0
    a, b = str(tmp_path / "a_text_document"), str(tmp_path / "b_text_document")
    capsys.readouterr()
    assert main(["prepare", "merge", a, "-o", b + ".idx"]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err and _docs(Path(b)) == ["third"]
    assert main(["prepare", "merge", a, b, "-o", b + ".bin", "--overwrite"]) == 2
    assert "is also an input" in capsys.readouterr().err and _docs(Path(b)) == ["third"]
    assert main(["prepare", "merge", a, b, "-o", str(tmp_path / "m.bin")]) == 0
    assert f"wrote {tmp_path / 'm'}.bin/.idx" in capsys.readouterr().out
    assert _docs(tmp_path / "m") == ["hello world", "héllo ✓", "third"]


def test_help_shows_example_and_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "neox prepare --preset python-stdlib" in out and "neox prepare inspect" in out
    assert main(["prepare", "merge", "--help"]) == 0
    assert "Example" in capsys.readouterr().out


def test_usage_errors_point_at_neox_prepare_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "a.jsonl", "-o", "x", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "Try 'neox prepare -h' for help." in err and "_tokenize" not in err


def test_train_tokenizer_option(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "a.jsonl", [{"text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(200)])
    assert (
        main(
            ["prepare", str(src), "-o", str(tmp_path / "t"), "--train-tokenizer", "--vocab-size", "300", "-q"]
        )
        == 0
    )
    assert (tmp_path / "t_tokenizer.json").exists()
    assert IndexedDataset(tmp_path / "t_text_document").num_documents == 200


def test_python_stdlib_preset_small(tmp_path: Path) -> None:
    files = stdlib_files(max_files=15)
    rel = [p.relative_to(stdlib_root()).as_posix() for p in stdlib_files()]
    assert rel == sorted(rel) and len(files) == 15
    assert all("site-packages" not in p.parts and "test" not in p.parts[:-1] for p in stdlib_files())
    res = prepare_preset("python-stdlib", tmp_path, vocab_size=1024, max_files=15)
    assert not res.skipped and res.tokenizer_path == tmp_path / "tokenizer.json"
    ds = IndexedDataset(res.prefix)
    assert res.prefix.endswith("python-stdlib_text_document")
    assert ds.num_documents == res.documents <= 15 and ds.num_tokens == res.tokens > 1000
    tok = res.tokenizer()
    first = ds.document(0).tolist()
    assert first[-1] == tok.eod_id and tok.decode(first[:-1]) == files[0].read_text(encoding="utf-8")
    again = prepare_preset("python-stdlib", tmp_path, vocab_size=1024, max_files=15)
    assert again.skipped and again.tokens == res.tokens


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support; the first full request is cut short."""

    cut = {"done": False}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not rng and not self.cut["done"]:
            self.cut["done"] = True
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    _RangeHandler.cut["done"] = False
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root))
    )
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def test_download_resumes_and_checks(server: tuple[str, Path], tmp_path: Path) -> None:
    import hashlib

    url, root = server
    payload = os.urandom(300_000)
    (root / "blob.bin").write_bytes(payload)
    seen: list[int] = []
    out = download(
        f"{url}/blob.bin",
        tmp_path / "dl" / "blob.bin",
        lambda d, t: seen.append(d),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    assert out.read_bytes() == payload and seen[-1] == len(payload)
    assert not list((tmp_path / "dl").glob("*.part"))
    with pytest.raises(DataError, match="checksum"):
        download(f"{url}/blob.bin", tmp_path / "dl2" / "blob.bin", sha256="0" * 64)
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{url}/missing.bin", tmp_path / "dl3" / "x")


def test_download_preset_from_local_server(server: tuple[str, Path], tmp_path: Path) -> None:
    import zipfile

    url, root = server
    with zipfile.ZipFile(root / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", "<mediawiki>" + "text " * 1000 + "</mediawiki>")
    res = prepare_preset(
        "enwik8", tmp_path / "data", tokenizer=CharLevelTokenizer(), urls=[f"{url}/enwik8.zip"]
    )
    assert res.documents == 1 and res.tokens == 5000 + 23 + 1
    assert res.prefix.endswith("enwik8_text_document")
    docs = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(10)).encode()
    (root / "val.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(docs))
    res = prepare_preset(
        "pile_validation", tmp_path / "pv", tokenizer=CharLevelTokenizer(), urls=[f"{url}/val.jsonl.zst"]
    )
    assert res.documents == 10 and IndexedDataset(res.prefix)[3][:-1].tolist() == list(b"doc 3")
    with pytest.raises(DataError, match="unknown preset"):
        prepare_preset("enwik9", tmp_path)


def test_tar_and_json_gz_presets_from_local_server(server: tuple[str, Path], tmp_path: Path) -> None:
    import gzip
    import io
    import tarfile

    url, root = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (
            (
                "openwebtext2/a.jsonl.zst",
                b"".join(json.dumps({"text": f"owt {i}"}).encode() + b"\n" for i in range(3)),
            ),
            ("openwebtext2/notes.png", b"\x89PNG not text"),
            ("openwebtext2/b.jsonl.zst", json.dumps({"text": "owt last"}).encode() + b"\n"),
        ):
            if name.endswith(".zst"):
                data = zstandard.ZstdCompressor().compress(data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (root / "openwebtext2.jsonl.zst.tar").write_bytes(buf.getvalue())
    res = prepare_preset(
        "openwebtext2",
        tmp_path / "owt",
        tokenizer=CharLevelTokenizer(),
        urls=[f"{url}/openwebtext2.jsonl.zst.tar"],
    )
    assert res.documents == 4 and res.skipped_members == {".png": 1}
    assert _docs(Path(res.prefix)) == ["owt 0\x00", "owt 1\x00", "owt 2\x00", "owt last\x00"]
    again = prepare_preset(
        "openwebtext2",
        tmp_path / "owt",
        tokenizer=CharLevelTokenizer(),
        urls=[f"{url}/openwebtext2.jsonl.zst.tar"],
    )
    assert again.skipped and again.skipped_members == {".png": 1}
    for i in range(2):  # c4's files: JSON lines in .json.gz
        lines = "".join(json.dumps({"text": f"c4 {i}.{j}", "url": "u"}) + "\n" for j in range(2))
        (root / f"c4-train.{i:05}-of-01024.json.gz").write_bytes(gzip.compress(lines.encode()))
    res = prepare_preset(
        "c4",
        tmp_path / "c4",
        tokenizer=CharLevelTokenizer(),
        urls=[f"{url}/c4-train.{i:05}-of-01024.json.gz" for i in range(2)],
    )
    assert _docs(Path(res.prefix)) == ["c4 0.0\x00", "c4 0.1\x00", "c4 1.0\x00", "c4 1.1\x00"]


def test_encode_ids_stay_in_dtype(tmp_path: Path) -> None:
    ds_prefix = tmp_path / "x"
    src = _jsonl(tmp_path / "a.jsonl")
    assert main(["prepare", str(src), "-o", str(ds_prefix), *CHAR]) == 0
    assert IndexedDataset(str(ds_prefix) + "_text_document").dtype == np.uint16


def test_ftfy_in_worker_processes(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "f.jsonl", [{"text": "doesn\u00e2\u20ac\u2122t"}, {"text": "plain"}])
    res = prepare([src], tmp_path / "f", CharLevelTokenizer(), ftfy=True, workers=2)
    assert res.documents == 2
    assert _docs(tmp_path / "f_text_document") == ["doesn't", "plain"]


def _deny_reading(monkeypatch: pytest.MonkeyPatch, module: object, denied: Path) -> None:
    """``open`` in ``module`` fails on ``denied`` as on a file without read permission (also as root)."""
    real_open = open

    def fake_open(file: object, *args: object, **kwargs: object) -> object:
        if Path(os.fspath(file)) == denied:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(file))  # type: ignore[arg-type]
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(module, "open", fake_open, raising=False)


def test_unusable_paths_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import neoxcli.data.indexed as indexed_mod
    import neoxcli.data.readers as readers_mod

    src = _jsonl(tmp_path / "a.jsonl")
    in_the_way = tmp_path / "file"
    in_the_way.write_text("not a directory")
    cases = [
        (["prepare", str(src), "-o", str(in_the_way / "o"), *CHAR], "cannot create output directory"),
        (
            [
                "prepare",
                str(src),
                "-o",
                str(in_the_way / "t"),
                "--train-tokenizer",
                "--vocab-size",
                "300",
                "-q",
            ],
            "cannot create directory",
        ),
    ]
    assert main(["prepare", str(src), "-o", str(tmp_path / "a"), *CHAR]) == 0
    cases.append(
        (["prepare", "merge", str(tmp_path / "a_text_document"), "-o", str(in_the_way / "m")], "cannot write")
    )
    capsys.readouterr()
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and str(in_the_way) in err and "Traceback" not in err
    _deny_reading(monkeypatch, readers_mod, src)
    assert main(["prepare", str(src), "-o", str(tmp_path / "b"), *CHAR]) == 2
    assert f"error: cannot read {src}: Permission denied" in capsys.readouterr().err
    _deny_reading(monkeypatch, indexed_mod, tmp_path / "a_text_document.idx")
    assert main(["prepare", "inspect", str(tmp_path / "a_text_document")]) == 2
    assert "error: cannot read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jsonl",
        "a_text_document.bin",
        "a_text_document.idx",
        "file",
    ]


def test_ctrl_c_leaves_worker_processes_to_the_main_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C signals the whole process group; workers must neither die of it nor wedge the pool."""
    import struct

    import neoxcli.data.prepare as prep

    monkeypatch.setattr(prep, "POOL_STOP_SECONDS", 0.2)
    work = ([["abc"]], False, False)
    with pytest.raises(KeyboardInterrupt), prep._worker_pool(1, CharLevelTokenizer().spec) as pool:
        assert pool.apply_async(prep._worker_encode, (work,)).get(timeout=10)[0][1].tolist() == [3]
        (worker,) = pool._pool  # type: ignore[attr-defined]
        os.kill(worker.pid, signal.SIGINT)
        assert pool.apply_async(prep._worker_encode, (work,)).get(timeout=10)[0][1].tolist() == [3]
        assert worker.is_alive()  # the same worker served the second batch
        # a worker killed mid-reply leaves a length header without its body in the result pipe
        os.write(pool._outqueue._writer.fileno(), struct.pack("!i", 1 << 20))  # type: ignore[attr-defined]
        t0 = time.monotonic()
        raise KeyboardInterrupt
    assert time.monotonic() - t0 < 3 and not worker.is_alive()
