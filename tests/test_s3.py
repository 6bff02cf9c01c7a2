"""Checkpoints in object storage, against a real S3-compatible server (moto's) on 127.0.0.1.

The server runs in its own process with a small minimum part size, so a file of a few hundred
KiB is a multipart upload of several parts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import moto_server

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from neoxcli.checkpoint.s3 import (  # noqa: E402
    client,
    download_checkpoint,
    prune_remote,
    upload_file,
    upload_tag,
)
from neoxcli.errors import NeoxError  # noqa: E402

SECRET = "s3cr3t-never-printed"
PART = 64 * 1024


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(
        tmp_path_factory.mktemp("moto") / "server.log", S3_UPLOAD_PART_MIN_SIZE=str(PART)
    ) as url:
        yield url


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return client()


def _bucket(s3: object, name: str) -> str:
    s3.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


class _Cut(Exception):
    """The network gone after a number of parts."""


def test_an_interrupted_upload_resumes_without_sending_parts_again(s3, tmp_path: Path) -> None:
    bucket = _bucket(s3, "resume")
    path = tmp_path / "portable_pp00_tp00.pt"
    data = os.urandom(5 * PART + 123)
    path.write_bytes(data)

    def cut_after_two(key: str, done: int, size: int) -> None:
        if done >= 2 * PART:
            raise _Cut

    with pytest.raises(_Cut):
        upload_file(s3, path, bucket, "run/global_step3/x.pt", PART, cut_after_two)
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in uploads] == ["run/global_step3/x.pt"]
    parts = s3.list_parts(Bucket=bucket, Key="run/global_step3/x.pt", UploadId=uploads[0]["UploadId"])
    assert [p["PartNumber"] for p in parts["Parts"]] == [1, 2]

    sent = upload_file(s3, path, bucket, "run/global_step3/x.pt", PART)
    assert sent == len(data) - 2 * PART, "only the four missing parts are sent"
    body = s3.get_object(Bucket=bucket, Key="run/global_step3/x.pt")["Body"].read()
    assert body == data
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert upload_file(s3, path, bucket, "run/global_step3/x.pt", PART) == 0, (
        "a finished file is not sent again"
    )


def test_a_tag_goes_up_marker_last_then_latest_and_comes_back(s3, tmp_path: Path) -> None:
    bucket = _bucket(s3, "tags")
    tag = tmp_path / "save" / "global_step7"
    tag.mkdir(parents=True)
    (tag / "portable_pp00_tp00.pt").write_bytes(os.urandom(3 * PART))
    (tag / "config.yml").write_text("seed: 1\n")
    (tag / "complete").write_text("")
    order: list[str] = []
    upload_tag(s3, tag, f"s3://{bucket}/runs/a", PART, lambda key, done, size: order.append(key))
    assert order[-1] == "runs/a/global_step7/complete"
    got = s3.get_object(Bucket=bucket, Key="runs/a/latest")["Body"].read()
    assert got == b"global_step7"

    cache = download_checkpoint(f"s3://{bucket}/runs/a", tmp_path / "cache")
    assert (cache / "latest").read_text() == "global_step7"
    for name in ("portable_pp00_tp00.pt", "config.yml", "complete"):
        assert (cache / "global_step7" / name).read_bytes() == (tag / name).read_bytes()


def _tag(save: Path, step: int, complete: bool = True) -> Path:
    tag = save / f"global_step{step}"
    tag.mkdir(parents=True)
    (tag / "portable_pp00_tp00.pt").write_bytes(os.urandom(2 * PART + step))  # multipart
    (tag / "config.yml").write_text(f"step: {step}\n")
    if complete:
        (tag / "complete").write_text("")
    return tag


def _remote(s3: object, bucket: str) -> dict[str, set[str]]:
    """Each top-level name in the bucket's ``runs/a`` with the names under it."""
    found: dict[str, set[str]] = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents") or []:  # type: ignore[attr-defined]
        top, _, name = obj["Key"].removeprefix("runs/a/").partition("/")
        found.setdefault(top, set()).add(name)
    return found


def test_pruning_keeps_the_newest_complete_tags_and_the_one_latest_names(s3, tmp_path: Path) -> None:
    bucket = _bucket(s3, "prune")
    url = f"s3://{bucket}/runs/a"
    save = tmp_path / "save"
    for step in (1, 2, 3):
        upload_tag(s3, _tag(save, step), url, PART, latest=step == 2)  # latest: global_step2
    # An upload cut short: tag 4 lost its marker and one part is still open on the server.
    stub = _tag(save, 4, complete=False)
    upload_tag(s3, stub, url, PART, latest=False)
    s3.create_multipart_upload(Bucket=bucket, Key="runs/a/global_step4/portable_pp00_tp00.pt")
    s3.put_object(Bucket=bucket, Key="runs/a/notes.txt", Body=b"not a tag")

    # Tag 5 is not whole yet (no marker): nothing may go.
    upload_tag(s3, _tag(save, 5, complete=False), url, PART, latest=False)
    assert prune_remote(s3, url, 1, "global_step5") == []
    assert set(_remote(s3, bucket)) == {
        "global_step1",
        "global_step2",
        "global_step3",
        "global_step4",
        "global_step5",
        "latest",
        "notes.txt",
    }

    (save / "global_step5" / "complete").write_text("")
    upload_tag(s3, save / "global_step5", url, PART, latest=False)  # latest still names global_step2
    assert prune_remote(s3, url, 1, "global_step5") == ["global_step1", "global_step3", "global_step4"]
    left = _remote(s3, bucket)
    assert set(left) == {"global_step2", "global_step5", "latest", "notes.txt"}
    assert left["global_step5"] == {"portable_pp00_tp00.pt", "config.yml", "complete"}
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert prune_remote(s3, url, 1, "global_step5") == []  # latest's tag stays, however old


def test_a_missing_checkpoint_is_one_line_and_credentials_are_never_printed(s3, tmp_path: Path) -> None:
    bucket = _bucket(s3, "empty")
    with pytest.raises(NeoxError, match=r"s3://empty/none holds no checkpoint \(no 'latest' there\)"):
        download_checkpoint(f"s3://{bucket}/none", tmp_path / "cache")
    with pytest.raises(
        NeoxError, match="cannot download checkpoint s3://no-such-bucket/x: NoSuchBucket"
    ) as err:
        download_checkpoint("s3://no-such-bucket/x", tmp_path / "cache", tag="global_step1")
    assert SECRET not in str(err.value) + str(err.value.hint)


def test_training_uploads_each_checkpoint_and_resumes_from_s3(s3, tmp_path: Path, capsys) -> None:
    pytest.importorskip("deepspeed")
    from conftest import tiny_train_config

    from neoxcli.cli import main
    from neoxcli.config import load_config
    from neoxcli.training.trainer import train

    bucket = _bucket(s3, "train")
    short = {"train-iters": 6, "checkpoint-factor": 3, "eval-interval": 3, "sample_at_end": False}
    url = f"s3://{bucket}/tiny"
    first = train(load_config([tiny_train_config(tmp_path, **short, s3_path=url)]))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"tiny/latest", "tiny/global_step3/complete", "tiny/global_step6/portable_pp00_tp00.pt"} <= keys
    assert s3.get_object(Bucket=bucket, Key="tiny/latest")["Body"].read() == b"global_step6"

    # Another machine: nothing local, resume from step 3 of the bucket into a new save directory.
    shutil.rmtree(tmp_path / "run")
    again = tmp_path / "again"
    cfg = tiny_train_config(tmp_path, **short, save=str(again), load=url, load_tag="global_step3")
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr()
    text = "".join((out.out + out.err).splitlines())  # the console wraps long paths
    assert f"resumed from {again / 's3-cache' / bucket / 'tiny' / 'global_step3'} at iteration 3" in text
    assert SECRET not in text
    resumed = [row["loss"] for row in _metrics(again)]
    assert resumed == [row["loss"] for row in first.history][3:]


def _metrics(run: Path) -> list[dict[str, float]]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_failed_upload_is_reported_and_the_local_checkpoints_stay(s3, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    from conftest import tiny_train_config

    from neoxcli.config import load_config
    from neoxcli.training.report import NullReporter
    from neoxcli.training.trainer import train

    class Lines(NullReporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def on_info(self, message: str) -> None:
            self.lines.append(message)

    short = {"train-iters": 3, "checkpoint-factor": 3, "eval-interval": 3, "sample_at_end": False}
    report = Lines()
    train(load_config([tiny_train_config(tmp_path, **short, s3_path="s3://no-such-bucket/x")]), report=report)
    assert (tmp_path / "run" / "global_step3" / "complete").is_file()
    failed = [line for line in report.lines if line.startswith("upload of")]
    assert failed[0].startswith(
        "upload of global_step3 to s3://no-such-bucket/x/global_step3 failed: NoSuchBucket"
    )
    assert f"the checkpoints in {tmp_path / 'run'} are complete; only their upload failed" in report.lines
    assert not any(SECRET in line for line in report.lines)


def test_keep_last_n_checkpoints_prunes_the_bucket_too(s3, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    from conftest import tiny_train_config

    from neoxcli.config import load_config
    from neoxcli.training.trainer import train

    bucket = _bucket(s3, "keep")
    short = {"train-iters": 6, "checkpoint-factor": 2, "eval-interval": 3, "sample_at_end": False}
    url = f"s3://{bucket}/tiny"
    train(load_config([tiny_train_config(tmp_path, **short, s3_path=url, keep_last_n_checkpoints=1)]))
    local = sorted(p.name for p in (tmp_path / "run").glob("global_step*"))
    assert local == ["global_step6"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {k.split("/")[1] for k in keys} == {"global_step6", "latest"}, sorted(keys)
    assert "tiny/global_step6/complete" in keys
    assert s3.get_object(Bucket=bucket, Key="tiny/latest")["Body"].read() == b"global_step6"
