"""Archives in S3-compatible storage (``--archive-storage s3://bucket/prefix``), against moto's
S3 server on 127.0.0.1: uploaded, downloaded from a presigned URL, deleted."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import urllib.parse
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from salon.server.run import ServerThread
from tests.functional.test_archives import FileRecorder, Server, config, wait_status

pytestmark = pytest.mark.timeout(120)

BUCKET = "salon-archives"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """moto's S3 server on a free loopback port, a bucket in it, and credentials for boto3."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        server.stop()


async def test_archives_are_stored_in_s3_and_downloaded_from_presigned_urls(
    tmp_path: pathlib.Path, s3: tuple[str, Any]
) -> None:
    endpoint, client = s3
    recorder = FileRecorder()
    settings = dataclasses.replace(
        config(tmp_path, recorder),
        archive_storage=f"s3://{BUCKET}/prod/archives",
        archive_s3_endpoint=endpoint,
    )
    with ServerThread(settings) as thread:
        server = Server(thread, recorder)
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid, data="alice")
        archive = await server.call("start_archive", sid, name="to s3")
        await server.call("stop_archive", archive.id)
        available = await wait_status(server, archive.id, "available")
        key = f"prod/archives/{archive.id}/archive.mp4"
        listed = client.list_objects_v2(Bucket=BUCKET)["Contents"]
        assert [o["Key"] for o in listed] == [key] and listed[0]["Size"] == available.size
        # A presigned URL of moto's server, valid 10 minutes: it alone downloads the archive.
        url = urllib.parse.urlsplit(available.url)
        query = urllib.parse.parse_qs(url.query)
        assert available.url.startswith(f"{endpoint}/{BUCKET}/{key}") and query["X-Amz-Expires"] == ["600"]
        r = httpx.get(available.url)
        assert (
            r.status_code == 200 and r.content.decode().splitlines() == recorder.recordings[archive.id].lines
        )
        assert not (tmp_path / "archives-work" / archive.id).exists()  # nothing left on local disk
        # Deleting the archive deletes the object.
        await server.call("delete_archive", archive.id)
        assert client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
        await alice.close()
