"""``neox eval --text enwik8 | text8 | wikitext-103``: download once, cut the conventional test split, cache it.

A local HTTP server on 127.0.0.1 serves small archives built here, shaped like the
real ones (same member names; the split sizes are shrunk so the test stays fast).
Offline, an uncached preset is one error line naming the file and where it goes.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from neoxcli.evaluation import text_presets as TP

#: enwik8-like bytes: a 2-byte character across the split's start, a 3-byte one across its end
ENWIK8 = b"<mediawiki>" + b"x" * 2988 + "é".encode() + ("<page> wörds, ünïcode </page>\n" * 40)[:990].encode()
ENWIK8 = ENWIK8[:3998] + "€".encode() + b"y" * 99
WIKI = (
    " \n = Alpha = \n \n Alpha is the first . \n \n = = History = = \n \n It began @-@ early . \n"
    " \n = Beta = \n \n Beta follows , in 2 @,@ 000 words . \n \n"
)


def _zip(path: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    site = tmp_path / "site"
    site.mkdir()
    _zip(site / "enwik8.zip", "enwik8", ENWIK8)
    _zip(site / "text8.zip", "text8", (b" anarchism originated as a term of abuse" * 200)[:4100])
    _zip(site / "wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.test.raw", WIKI.encode())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("enwik8", "text8"):
        monkeypatch.setitem(TP.TEXT_PRESETS, name, replace(TP.TEXT_PRESETS[name], first=4000, last=1000))
    monkeypatch.setenv("NEOX_EVAL_URL_ENWIK8", f"{url}/enwik8.zip")
    monkeypatch.setenv("NEOX_EVAL_URL_TEXT8", f"{url}/text8.zip")
    monkeypatch.setenv("NEOX_EVAL_URL_WIKITEXT_103", f"{url}/wikitext-103-raw-v1.zip")
    monkeypatch.setenv("NEOX_DATA_DIR", str(tmp_path / "data"))
    yield {"url": url, "site": site, "data": tmp_path / "data"}
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_splits_are_cut_cached_and_checked(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    path, manifest = TP.fetch_text_preset("enwik8")
    assert path == served["data"] / "eval" / "enwik8" / "enwik8.test.txt"
    assert path.read_bytes() == ENWIK8[3001:3998]  # whole characters inside bytes 3000..4000
    assert manifest["trimmed_bytes"] == [1, 2] and manifest["range"] == [3000, 4000]
    assert manifest["bytes"] == 997 and manifest["url"].endswith("/enwik8.zip")

    text8, _ = TP.fetch_text_preset("text8")
    assert text8.read_bytes() == (b" anarchism originated as a term of abuse" * 200)[3000:4000]

    wiki, manifest = TP.fetch_text_preset("WikiText_103")
    pages = [json.loads(line)["text"] for line in wiki.read_text().splitlines()]
    assert "\n".join(pages) == WIKI  # every line kept, cut before each article's title line
    assert [p.split("\n")[:2] for p in pages] == [[" ", " = Alpha = "], [" = Beta = ", " "]]
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    assert words > 20 and manifest["range"] is None

    # Cached: no network needed, and a damaged split is cut again from the cached archive.
    monkeypatch.setenv("NEOX_EVAL_URL_ENWIK8", f"http://127.0.0.1:{_closed_port()}/enwik8.zip")
    assert TP.fetch_text_preset("enwik8")[0].read_bytes() == ENWIK8[3001:3998]
    path.write_bytes(b"tampered")
    assert TP.fetch_text_preset("enwik8")[0].read_bytes() == ENWIK8[3001:3998]


def test_a_short_or_wrong_archive_is_refused(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from neoxcli.errors import DataError

    monkeypatch.setitem(TP.TEXT_PRESETS, "text8", replace(TP.TEXT_PRESETS["text8"], first=10**8))
    with pytest.raises(DataError, match=r"has 4,100 bytes, fewer than the 100,000,000 of text8"):
        TP.fetch_text_preset("text8")
    _zip(served["site"] / "enwik8.zip", "other", b"x" * 5000)
    with pytest.raises(DataError, match=r"holds no 'enwik8'"):
        TP.fetch_text_preset("enwik8")


def test_whole_characters() -> None:
    assert TP._whole_characters("aé".encode()[2:] + b"bc")[1] == (1, 0)
    assert TP._whole_characters(b"ab" + "€".encode()[:2]) == (b"ab", (0, 2))
    assert TP._whole_characters(b"ab" + "€".encode()) == (b"ab" + "€".encode(), (0, 0))
    assert TP._whole_characters(b"ab" + "😀".encode()[:3]) == (b"ab", (0, 3))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eval_tasks import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("presets") / "run")


def test_cli_scores_the_preset_like_its_file(
    served: dict[str, Any], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neoxcli.cli import main

    out = tmp_path / "r.json"
    args = ["eval", "-c", str(checkpoint), "--output-path", str(out), "--format", "json"]
    assert main([*args, "--text", "enwik8,wikitext-103", "--per-document"]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    (row,) = doc["perplexity"]
    assert row["source"] == "enwik8,wikitext-103" and row["documents"] == 3
    assert set(doc["config"]["text_presets"]) == {"enwik8", "wikitext-103"}
    assert doc["config"]["text_presets"]["enwik8"]["split"] == "the last 1,000 of the first 4,000 bytes"
    files = [doc["config"]["text_presets"][n]["path"] for n in ("enwik8", "wikitext-103")]
    capsys.readouterr()
    assert main([*args, "--text", ",".join(files), "--per-document"]) == 0
    (same,) = json.loads(out.read_text())["perplexity"]
    keys = ("tokens", "bytes", "chars", "words", "nll", "bits_per_byte")
    assert {k: same[k] for k in keys} == {k: row[k] for k in keys}
    assert row["bytes"] == 997 + len(WIKI.encode()) - 1  # the newline between the two articles is no one's


def test_offline_uncached_preset_is_one_line(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reliability.harness import Outcome, expect_clean_error, files_under

    from neoxcli.cli import main

    monkeypatch.setenv("NEOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NEOX_EVAL_URL_TEXT8", f"http://127.0.0.1:{_closed_port()}/text8.zip")
    before = files_under(tmp_path)
    code = main(["eval", "-c", str(checkpoint), "--text", "text8", "--output-path", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    expect_clean_error(Outcome(code, out, err), "--text text8: not cached", before=before, root=tmp_path)
    assert "text8.zip is missing" in err and "/text8.zip into " in err
