"""Where finished archives are kept, and the time-limited URLs they are downloaded from.

:class:`LocalStorage` (the default) keeps each archive's file under the data directory and
signs download URLs served by salon itself (``GET /v2/archive-download/{id}``: HMAC-SHA256
with a server key kept in the data directory, the expiry in the query, so the URL is all a
downloader needs). :class:`S3Storage` puts them in an S3-compatible bucket and hands out
presigned URLs (``--archive-storage s3://bucket/prefix``). URLs are valid for
:data:`URL_LIFETIME` seconds, as in OpenTok.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import os
import pathlib
import secrets
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "URL_LIFETIME",
    "ArchiveStorage",
    "DiskFullError",
    "LocalStorage",
    "RemoteFile",
    "S3Storage",
    "StorageError",
    "storage_from_url",
]

#: How long a download URL is valid, seconds (10 minutes, as in OpenTok).
URL_LIFETIME = 600


class StorageError(Exception):
    """An archive could not be stored; the message is the archive's ``reason``."""


class DiskFullError(StorageError):
    """The disk (or quota) is full."""


def storage_error(exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError("the disk is full")
    return StorageError(f"cannot store the archive: {exc.strerror or exc.__class__.__name__}")


class ArchiveStorage(Protocol):
    """Keeps finished archives' files."""

    async def put(self, archive_id: str, path: pathlib.Path) -> str:
        """Store the file ``path`` (which may be moved) as the archive's; its location.

        :raises StorageError: (:class:`DiskFullError` on a full disk).
        """
        ...

    def url(self, archive_id: str, location: str, base_url: str) -> str:
        """An absolute URL the archive downloads from, for :data:`URL_LIFETIME` seconds."""
        ...

    async def delete(self, archive_id: str, location: str) -> None:
        """Remove the archive's file (nothing if it is gone already)."""
        ...


def _sign(key: bytes, archive_id: str, expires: int) -> str:
    message = f"{archive_id}:{expires}".encode("utf-8", "replace")  # any path, even a lone surrogate
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _server_key(path: pathlib.Path) -> bytes:
    """The key download URLs are signed with: read from ``path``, made (mode 0600) if absent,
    so URLs handed out survive a restart."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


class LocalStorage:
    """Archives on local disk: ``root/{archive_id}/{file name}``."""

    def __init__(self, root: pathlib.Path, *, key: bytes | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._key = key if key is not None else _server_key(root / ".url-key")

    async def put(self, archive_id: str, path: pathlib.Path) -> str:
        target = self.root / archive_id / path.name

        def move() -> None:
            if path.resolve() == target.resolve():
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))

        try:
            await asyncio.to_thread(move)
        except OSError as exc:
            # A copy across file systems that failed (a full disk) leaves a partial file.
            await asyncio.to_thread(shutil.rmtree, target.parent, True)
            raise storage_error(exc) from exc
        return str(target.relative_to(self.root))

    def url(self, archive_id: str, location: str, base_url: str, *, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + URL_LIFETIME
        query = urllib.parse.urlencode(
            {"expires": expires, "signature": _sign(self._key, archive_id, expires)}
        )
        return f"{base_url.rstrip('/')}/v2/archive-download/{archive_id}?{query}"

    def verify(self, archive_id: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        """Whether a download URL's signature is this server's and it has not expired."""
        if expires < (now if now is not None else time.time()):
            return False
        expected = _sign(self._key, archive_id, expires).encode()
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))

    def path(self, location: str) -> pathlib.Path:
        path = (self.root / location).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError("the archive's location is outside the archive directory")
        return path

    async def delete(self, archive_id: str, location: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / archive_id, True)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """An archive's file being read from another node (local storage in a cluster): its size
    if known, its file name, its bytes (``chunks``), and :meth:`close` once done with it."""

    size: int | None
    filename: str
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str


class S3Storage:
    """Archives in an S3-compatible bucket (boto3): ``prefix/{archive_id}/{file name}``.

    The endpoint and credentials come from boto3's usual configuration (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``...) unless given.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        try:  # an optional dependency (salon[s3]): only S3 storage needs it
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise StorageError("S3 archive storage needs boto3: pip install 'salon[s3]'") from exc

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Signature version 4: presigned URLs carry their lifetime (X-Amz-Expires).
        self._client = client or boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=Config(signature_version="s3v4")
        )

    def _key(self, archive_id: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, archive_id, name) if p)

    async def put(self, archive_id: str, path: pathlib.Path) -> str:
        key = self._key(archive_id, path.name)
        try:
            await asyncio.to_thread(self._client.upload_file, str(path), self.bucket, key)
        except OSError as exc:
            raise storage_error(exc) from exc
        except Exception as exc:  # botocore's errors: the reason, never the credentials
            raise StorageError(f"cannot upload the archive to S3: {exc.__class__.__name__}") from exc
        await asyncio.to_thread(path.unlink, True)
        return key

    def url(self, archive_id: str, location: str, base_url: str) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": location}, ExpiresIn=URL_LIFETIME
        )
        return url

    async def delete(self, archive_id: str, location: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=location)


def storage_from_url(
    url: str | None, data_dir: pathlib.Path, *, endpoint_url: str | None = None
) -> ArchiveStorage:
    """``None``: local storage under ``data_dir/archives``; ``s3://bucket/prefix``: S3."""
    if url is None or url == "":
        return LocalStorage(data_dir / "archives")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"archive storage must be s3://bucket/prefix, not {url!r}")
    return S3Storage(parts.netloc, parts.path, endpoint_url=endpoint_url)
