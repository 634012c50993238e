"""TLS for ``salon serve``: a given certificate, or a development certificate made here.

``--tls self-signed`` makes (once, then reuses) a self-signed certificate under the data
directory, ``DATA_DIR/tls/cert.pem`` with its key in ``DATA_DIR/tls/key.pem`` (mode 0600).
It is valid for ``localhost``, ``127.0.0.1``, ``::1`` and the addresses the server is told
about (its ``--host``, ``--announced-address`` and ``--media-address``), for 825 days; it
is made again when one of those names is missing or it expires within 30 days. Clients
trust it by being told of ``cert.pem`` (a browser: import it, or accept the warning once;
Python: ``ssl.create_default_context(cafile=...)`` or ``SSL_CERT_FILE`` /
``REQUESTS_CA_BUNDLE``; Node: ``NODE_EXTRA_CA_CERTS``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import socket
from collections.abc import Iterable

__all__ = ["self_signed_certificate"]

LIFETIME = datetime.timedelta(days=825)
RENEW_BEFORE = datetime.timedelta(days=30)


def _names(hosts: Iterable[str]) -> tuple[set[str], set[str]]:
    dns, ips = {"localhost"}, {"127.0.0.1", "::1"}
    for host in hosts:
        host = host.strip("[]")
        if not host or host in {"0.0.0.0", "::"}:
            continue
        try:
            ips.add(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.add(host.lower())
    return dns, ips


def self_signed_certificate(
    data_dir: pathlib.Path, hosts: Iterable[str] = ()
) -> tuple[pathlib.Path, pathlib.Path]:
    """The development certificate and key under ``data_dir/tls``, made if needed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = data_dir / "tls"
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    dns, ips = _names([*hosts, socket.gethostname()])
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have_dns = set(san.get_values_for_type(x509.DNSName))
            have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
            if dns <= have_dns and ips <= have_ips and cert.not_valid_after_utc - now > RENEW_BEFORE:
                return cert_path, key_path
        except (ValueError, x509.ExtensionNotFound):
            pass  # unreadable or not ours: make a new one
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "salon development certificate")])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.DNSName(d) for d in sorted(dns)),
                    *(x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp_key = key_path.with_suffix(".tmp")
    tmp_key.unlink(missing_ok=True)
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key_pem)
    os.replace(tmp_key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
