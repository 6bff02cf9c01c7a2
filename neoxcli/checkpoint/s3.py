"""Checkpoints in S3-compatible object storage: upload after each save, download for a resume.

``s3_path: s3://bucket/prefix`` mirrors the save directory there, as GPT-NeoX
does: ``prefix/global_stepN/FILE`` for each file of a tag (its ``complete``
marker last), then ``prefix/latest``, so a reader that follows ``latest``
never finds half a checkpoint. Uploads run on one background thread
(``Uploader``), one tag after another, so training never waits for the
network; the run waits for them at its end.

Large files go up as multipart uploads of ``s3_chunk_size`` bytes. An upload
cut short (the process killed, the network gone) is resumed by the next
attempt: it finds the unfinished multipart upload of the key, keeps every part
the server already holds whose MD5 matches the local bytes, and sends only the
rest. A finished file (same size and modification time recorded in its
metadata) is not sent again.

With ``keep_last_n_checkpoints`` the bucket is pruned like the save
directory, after each tag's upload is whole (``prune_remote``): all but the
newest N complete tags go, never the one the remote ``latest`` names, and with
them the leftovers of older uploads that never finished (a tag pruned locally
before its upload ended).

``load: s3://bucket/prefix`` downloads the tag that ``load_tag`` or the
remote ``latest`` names into a local cache directory laid out as a save
directory, which the resume then reads like any other.

The endpoint is ``s3_endpoint_url``, else ``AWS_ENDPOINT_URL``, else AWS's;
credentials come from boto3's usual chain and are never printed. boto3 is the
``s3`` extra and is imported only when a transfer starts.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neoxcli.checkpoint.tags import COMPLETE_NAME, check_tag, step_of
from neoxcli.errors import NeoxError

#: Called with (key, bytes of the file sent so far, the file's size) after each part.
Progress = Callable[[str, int, int], None]
_MTIME_KEY = "neox-mtime-ns"
_SIZE_KEY = "neox-size"


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")`` (prefix without slashes at either end)."""
    if not url.startswith("s3://"):
        raise NeoxError(f"{url!r} is not an s3:// URL", hint="write s3://bucket/prefix")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise NeoxError(f"{url!r} names no bucket", hint="write s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _key(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix, *parts) if p)


def client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for ``endpoint_url`` (default: ``AWS_ENDPOINT_URL``, else AWS)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise NeoxError(
            "s3:// checkpoints need boto3, which is not installed", hint="pip install 'neoxcli[s3]'"
        ) from None
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client(
        "s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 5, "mode": "standard"})
    )


def _reason(exc: BaseException) -> str:
    """What went wrong, from S3's error code or the exception's first line (never a credential)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code, message = err.get("Code"), err.get("Message")
        if code:
            return f"{code}: {message}" if message else str(code)
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _already_there(s3: Any, bucket: str, key: str, size: int, mtime_ns: int) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    meta = head.get("Metadata") or {}
    return head.get("ContentLength") == size and meta.get(_MTIME_KEY) == str(mtime_ns)


def _open_upload(
    s3: Any, bucket: str, key: str, meta: dict[str, str]
) -> tuple[str, dict[int, tuple[str, int]]]:
    """The id of an unfinished multipart upload of ``key`` made for this very file, or a new one, and its parts."""
    found = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads") or []
    for upload in sorted(found, key=lambda u: u.get("Initiated") or 0, reverse=True):
        if upload.get("Key") != key:
            continue
        upload_id = upload["UploadId"]
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            page = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
            for part in page.get("Parts") or []:
                parts[int(part["PartNumber"])] = (str(part["ETag"]).strip('"'), int(part["Size"]))
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        return upload_id, parts
    created = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata=meta)
    return created["UploadId"], {}


def upload_file(
    s3: Any,
    path: Path,
    bucket: str,
    key: str,
    chunk_size: int,
    progress: Progress | None = None,
) -> int:
    """Upload ``path`` to ``bucket/key``, resuming an unfinished multipart upload; returns the bytes sent.

    A part the server already holds is kept when its size and MD5 (its ETag)
    match the local bytes, so only missing or different parts are sent.
    """
    stat = path.stat()
    size, meta = stat.st_size, {_SIZE_KEY: str(stat.st_size), _MTIME_KEY: str(stat.st_mtime_ns)}
    if _already_there(s3, bucket, key, size, stat.st_mtime_ns):
        return 0
    if size <= chunk_size:
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), Metadata=meta)
        if progress is not None:
            progress(key, size, size)
        return size
    upload_id, have = _open_upload(s3, bucket, key, meta)
    sent, done, parts = 0, 0, []
    with path.open("rb") as f:
        number = 1
        while True:
            data = f.read(chunk_size)
            if not data:
                break
            etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if have.get(number) != (etag, len(data)):
                etag = str(
                    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)[
                        "ETag"
                    ]
                ).strip('"')
                sent += len(data)
            parts.append({"PartNumber": number, "ETag": f'"{etag}"'})
            done += len(data)
            if progress is not None:
                progress(key, done, size)
            number += 1
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return sent


def upload_tag(
    s3: Any,
    tag_dir: Path,
    url: str,
    chunk_size: int,
    progress: Progress | None = None,
    latest: bool = True,
) -> int:
    """Upload one tag directory under ``url`` (its ``complete`` marker last, then ``latest``); returns bytes sent."""
    bucket, prefix = split_url(url)
    files = sorted(p for p in tag_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    files.sort(key=lambda p: p.name == COMPLETE_NAME)  # stable: the marker goes last
    sent = 0
    for path in files:
        sent += upload_file(s3, path, bucket, _key(prefix, tag_dir.name, path.name), chunk_size, progress)
    if latest:
        s3.put_object(Bucket=bucket, Key=_key(prefix, "latest"), Body=tag_dir.name.encode())
    return sent


def remote_latest(s3: Any, url: str) -> str | None:
    """The tag ``url/latest`` names, or None when there is none."""
    from botocore.exceptions import ClientError

    bucket, prefix = split_url(url)
    try:
        body = s3.get_object(Bucket=bucket, Key=_key(prefix, "latest"))["Body"].read()
    except ClientError as exc:
        if (getattr(exc, "response", {}).get("Error") or {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    tag = body.decode("utf-8", "replace").strip()
    return check_tag(tag, Path(f"{url}/latest")) if tag else None


def _remote_tags(s3: Any, bucket: str, prefix: str) -> dict[str, list[str]]:
    """Every ``global_stepN`` tag under ``prefix`` with the keys it holds."""
    tags: dict[str, list[str]] = {}
    start = f"{prefix}/" if prefix else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for obj in page.get("Contents") or []:
            tag, sep, _name = obj["Key"][len(start) :].partition("/")
            if sep and step_of(tag) is not None:
                tags.setdefault(tag, []).append(obj["Key"])
    return tags


def _delete_tag(s3: Any, bucket: str, prefix: str, tag: str, keys: list[str]) -> None:
    """Delete one remote tag: its ``complete`` marker first, so no reader takes the rest for a checkpoint."""
    marker = _key(prefix, tag, COMPLETE_NAME)
    if marker in keys:
        s3.delete_object(Bucket=bucket, Key=marker)
    rest = [k for k in keys if k != marker]
    for at in range(0, len(rest), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in rest[at : at + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    unfinished = s3.list_multipart_uploads(Bucket=bucket, Prefix=_key(prefix, tag) + "/").get("Uploads")
    for upload in unfinished or []:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def prune_remote(s3: Any, url: str, keep_last: int, newest: str) -> list[str]:
    """Delete all but the newest ``keep_last`` complete tags under ``url``; returns the tags deleted.

    Called once tag ``newest`` is uploaded whole (nothing is deleted while it
    is not). Never deletes ``newest`` or the tag the remote ``latest`` names.
    An incomplete tag older than ``newest`` is an upload that will not be
    finished (the uploader sends tags in order): it goes too.
    """
    bucket, prefix = split_url(url)
    tags = _remote_tags(s3, bucket, prefix)
    marker = _key(prefix, newest, COMPLETE_NAME)
    if marker not in tags.get(newest, []):
        return []
    keep = {newest, remote_latest(s3, url)}
    newest_step = step_of(newest)
    complete = sorted((t for t, keys in tags.items() if _key(prefix, t, COMPLETE_NAME) in keys), key=step_of)
    doomed = set(complete[: max(len(complete) - keep_last, 0)])
    if newest_step is not None:
        doomed |= {t for t in tags if t not in complete and (step_of(t) or 0) < newest_step}
    removed = []
    for tag in sorted(doomed - keep, key=step_of):
        _delete_tag(s3, bucket, prefix, tag, tags[tag])
        removed.append(tag)
    return removed


def download_checkpoint(
    url: str, cache_dir: Path, tag: str | None = None, endpoint_url: str | None = None
) -> Path:
    """Fetch tag ``tag`` (default: what ``url/latest`` names) into ``cache_dir``; returns ``cache_dir``.

    ``cache_dir`` becomes a save directory holding that tag and a ``latest``
    naming it. Files already there with the remote size are kept; each new
    file is written under a temporary name and renamed, so an interrupted
    download never leaves a file that looks whole.
    """
    from neoxcli.checkpoint.tags import write_latest

    s3 = client(endpoint_url)
    bucket, prefix = split_url(url)
    try:
        if tag is None:
            tag = remote_latest(s3, url)
            if tag is None:
                raise NeoxError(
                    f"checkpoint.load: {url} holds no checkpoint (no 'latest' there)",
                    hint="name the s3_path of the run to resume, or set load_tag",
                )
        check_tag(tag, Path("load_tag"))
        listed: list[dict[str, Any]] = []
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=_key(prefix, tag) + "/"
        ):
            listed += page.get("Contents") or []
        names = {obj["Key"].rsplit("/", 1)[-1]: int(obj["Size"]) for obj in listed}
        if COMPLETE_NAME not in names:
            what = "has no tag" if not names else "has an incomplete tag (its upload did not finish)"
            raise NeoxError(
                f"checkpoint.load: {url} {what} {tag!r}", hint="resume from another tag with load_tag"
            )
        tag_dir = cache_dir / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        for name, size in sorted(names.items(), key=lambda kv: kv[0] == COMPLETE_NAME):
            check_tag(name, Path(f"{url}/{tag}"))
            target = tag_dir / name
            if target.is_file() and target.stat().st_size == size:
                continue
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            s3.download_file(bucket, _key(prefix, tag, name), str(tmp))
            os.replace(tmp, target)
    except NeoxError:
        raise
    except Exception as exc:  # network, permissions, a missing bucket: one line naming the URL
        raise NeoxError(
            f"cannot download checkpoint {url}: {_reason(exc)}",
            hint="check the URL, the endpoint (s3_endpoint_url or AWS_ENDPOINT_URL) and the credentials",
        ) from None
    write_latest(cache_dir, tag)
    return cache_dir


def cache_dir_for(url: str, save: str | None) -> Path:
    """Where ``load: URL`` is downloaded: ``{save}/s3-cache/BUCKET/PREFIX``, else under ``.neox-cache``."""
    bucket, prefix = split_url(url)
    root = Path(save) / "s3-cache" if save else Path(".neox-cache") / "s3-cache"
    return root.joinpath(bucket, *[p for p in prefix.split("/") if p])


@dataclass
class Uploader:
    """Uploads tag directories on one background thread, in the order they were saved.

    ``submit`` returns at once; ``drain`` hands the main thread the lines to
    report (finished or failed uploads); ``close`` waits for the queue to empty.
    A tag deleted locally before its upload finished (pruned by
    ``keep_last_n_checkpoints``) is skipped: a newer one follows it. With
    ``keep_last`` the bucket is pruned after each upload (``prune_remote``).
    """

    url: str
    chunk_size: int
    endpoint_url: str | None = None
    keep_last: int | None = None
    _queue: queue.Queue[Path | None] = field(default_factory=queue.Queue, init=False)
    _lines: list[str] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    failed: list[str] = field(default_factory=list, init=False)

    def submit(self, tag_dir: Path) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="neox-s3-upload", daemon=True)
            self._thread.start()
        self._queue.put(tag_dir)

    def _say(self, line: str, failed: bool = False) -> None:
        with self._lock:
            self._lines.append(line)
            if failed:
                self.failed.append(line)

    def _work(self) -> None:
        s3 = None
        while True:
            tag_dir = self._queue.get()
            if tag_dir is None:
                return
            where = f"{self.url.rstrip('/')}/{tag_dir.name}"
            try:
                s3 = s3 or client(self.endpoint_url)
                sent = upload_tag(s3, tag_dir, self.url, self.chunk_size)
                self._say(f"uploaded {tag_dir.name} to {where} ({sent / 2**20:.1f} MiB sent)")
                if self.keep_last:
                    self._prune(s3, tag_dir.name)
            except FileNotFoundError:
                self._say(f"skipped the upload of {tag_dir.name}: it was pruned locally before it finished")
            except NeoxError as exc:
                self._say(f"upload of {tag_dir.name} to {where} failed: {exc}", failed=True)
            except Exception as exc:  # noqa: BLE001 - reported on the main thread, training goes on
                self._say(f"upload of {tag_dir.name} to {where} failed: {_reason(exc)}", failed=True)

    def _prune(self, s3: Any, newest: str) -> None:
        assert self.keep_last is not None
        try:
            removed = prune_remote(s3, self.url, self.keep_last, newest)
        except Exception as exc:  # noqa: BLE001 - the new checkpoint is safe; older ones merely stay
            self._say(f"could not prune old checkpoints from {self.url}: {_reason(exc)}")
            return
        if removed:
            self._say(
                f"pruned {', '.join(removed)} from {self.url} (keep_last_n_checkpoints={self.keep_last})"
            )

    def drain(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def close(self) -> list[str]:
        """Wait for every submitted upload; returns the lines not yet drained."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        return self.drain()
