"""``salon serve`` over TLS: REST, signalling (wss) and the web app, with a given or a
self-signed development certificate; the Python client SDK trusts it with ``ssl_context``."""

from __future__ import annotations

import os
import pathlib
import ssl
import stat
import subprocess
import sys
import time

import httpx
import opentok
import pytest
import requests
from cryptography import x509

from salon.client import Session
from salon.client.errors import ConnectionFailed
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.server.tls import self_signed_certificate
from tests.conftest import API_KEY, API_SECRET

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_development_certificate_is_made_once_and_remade_for_a_new_name(tmp_path: pathlib.Path) -> None:
    cert, key = self_signed_certificate(tmp_path, ["127.0.0.1"])
    assert (cert, key) == (tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    first = cert.read_bytes()
    assert self_signed_certificate(tmp_path, ["0.0.0.0"])[0].read_bytes() == first
    self_signed_certificate(tmp_path, ["192.0.2.7", "salon.lan"])
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {"localhost", "salon.lan"} <= set(san.value.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "192.0.2.7", "::1"} <= {
        str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)
    }


async def test_rest_signalling_and_the_web_app_over_tls(tmp_path: pathlib.Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        media=False,
        tls_cert=cert,
        tls_key=key,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    idle = requests.Session()
    thread = ServerThread(config)
    with thread as server:
        assert server.url.startswith("https://127.0.0.1:")
        assert httpx.get(server.url + "/", verify=trust).status_code == 200  # the web app
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/")  # not trusted by default
        # The official SDK over HTTPS, trusting the certificate through REQUESTS_CA_BUNDLE.
        os.environ["REQUESTS_CA_BUNDLE"] = str(cert)
        try:
            sdk = opentok.Client(API_KEY, API_SECRET, api_url=server.url)
            session_id = sdk.create_session(media_mode=opentok.MediaModes.routed).session_id
            token = sdk.generate_token(session_id, data="tls")
        finally:
            del os.environ["REQUESTS_CA_BUNDLE"]
        async with Session(session_id, token, server.url, ssl_context=trust, reconnect=False) as session:
            assert session.connection is not None and session.connection.data == "tls"
        with pytest.raises(ConnectionFailed):
            await Session(session_id, token, server.url, reconnect=False).connect()
        # An idle keep-alive connection (as vonage-video's requests session leaves one) does not
        # hold up the shutdown (asyncio would wait 30 s for its TLS close).
        assert idle.get(server.url + "/", verify=str(cert)).status_code == 200
        started = time.monotonic()
    assert not thread._thread.is_alive() and time.monotonic() - started < 10, "shutdown waited on TLS"
    idle.close()
    with pytest.raises(ValueError, match="https"):
        Session(session_id, token, "http://127.0.0.1:1", ssl_context=trust)


def test_serve_refuses_half_or_broken_tls_settings(tmp_path: pathlib.Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    for args, message in [
        (["--tls-cert", str(cert)], "go together"),
        (["--tls", "self-signed", "--tls-cert", str(cert), "--tls-key", str(key)], "alternatives"),
        (["--tls-cert", str(key), "--tls-key", str(key)], "unusable"),
        (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(key)], "cannot read"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "salon", "serve", "--port", "0", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)


def test_serve_tls_self_signed_prints_the_certificate_it_serves_with(tmp_path: pathlib.Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SALON_")},
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
    }
    args = ["serve", "--port", "0", "--no-media", "--data-dir", str(tmp_path), "--tls", "self-signed"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "salon", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("salon serving on ")):
            lines.append(proc.stdout.readline())
        assert lines and lines[-1].startswith("salon serving on https://127.0.0.1:"), lines
        url = lines[-1].split()[-1]
        printed = next(line for line in lines if "self-signed development certificate" in line)
        cert = pathlib.Path(printed.rsplit(": ", 1)[1].strip())
        assert cert == (tmp_path / "tls" / "cert.pem").resolve()
        assert (
            httpx.get(url + "/health", verify=ssl.create_default_context(cafile=str(cert))).status_code == 200
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
