"""Certificates and TLS contexts: every connection is TLS 1.3 and both ends
present a certificate signed by the deployment's CA. A certificate's common
name is its role (``mpcc-client``, ``mpcc-server``, ``mpcc-dealer``); each
side checks the peer's role, so a client certificate cannot act as a server.

``make_certs(DIR)`` writes a self-signed CA and one certificate per role, for
trying mpcc out (``mpcc certs DIR``); real deployments put their own files in
the same layout:

    DIR/ca.pem                       the CA that signed the peers' certificates
    DIR/client.pem, DIR/client.key   the client's certificate and key
    DIR/server.pem, DIR/server.key   the server's
    DIR/dealer.pem, DIR/dealer.key   the dealer's
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

__all__ = ["ROLES", "make_certs", "server_context", "client_context", "peer_role", "CertificateError"]

ROLES = ("client", "server", "dealer")
COMMON_NAME = {role: f"mpcc-{role}" for role in ROLES}
VALID_DAYS = 365


class CertificateError(ValueError):
    """A certificates directory that lacks a file or holds an unusable one."""


def make_certs(directory: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *,
               overwrite: bool = False) -> Path:
    """A fresh CA and a certificate per role under ``directory`` (keys readable by the owner only).
    ``hosts``: the names and addresses the server and dealer certificates are valid for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [p.name for p in (directory / "ca.pem", *(directory / f"{r}.key" for r in ROLES)) if p.exists()]
    if existing and not overwrite:
        raise CertificateError(f"{directory} already holds {', '.join(existing)}; pass overwrite=True (--force) "
                               f"to replace them")
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(path: Path, key) -> None:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("mpcc-ca")).issuer_name(name("mpcc-ca"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(COMMON_NAME[role])).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (directory / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(directory / f"{role}.key", key)
    return directory


def _files(directory: str | Path, role: str) -> tuple[Path, Path, Path]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    directory = Path(directory)
    files = (directory / "ca.pem", directory / f"{role}.pem", directory / f"{role}.key")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise CertificateError(f"certificates directory {directory}: missing {', '.join(missing)} "
                               f"(make a test set with `mpcc certs {directory}`)")
    return files


def _context(purpose, directory, role) -> ssl.SSLContext:
    ca, cert, key = _files(directory, role)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose == "server" else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED   # both sides present a certificate
    try:
        context.load_verify_locations(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as error:
        raise CertificateError(f"certificates directory {directory}: cannot load the {role}'s files: "
                               f"{error}") from None
    return context


def server_context(directory: str | Path, role: str) -> ssl.SSLContext:
    """The accepting side's context (the server; the dealer): requires a client certificate."""
    return _context("server", directory, role)


def client_context(directory: str | Path, role: str) -> ssl.SSLContext:
    """The connecting side's context: checks the peer's certificate and host name."""
    return _context("client", directory, role)


def peer_role(ssl_object) -> str | None:
    """The role in the peer's verified certificate (None: not an mpcc role)."""
    cert = ssl_object.getpeercert() or {}
    for entry in cert.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                for role, common in COMMON_NAME.items():
                    if value == common:
                        return role
    return None
