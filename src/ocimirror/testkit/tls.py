"""Self-signed TLS material for local registries and token servers.

`make_tls_files` writes a fresh certificate authority and a server certificate it signed,
valid for `localhost`, `127.0.0.1` and `::1`, as PEM files in one directory. The CA file is
named `ca.crt` and the server's files do not end in `.crt`, `.cert` or `.key`, so the
directory doubles as a containers/image "cert dir" (`skopeo --cert-dir DIR` trusts the CA
and finds no client certificate). Keys are ECDSA P-256: generating them is instant.

`self_signed` makes the single self-signed certificate a token server signs with.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The names the server certificate is valid for unless told otherwise.
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

#: A private key `self_signed` and the issuing functions accept.
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_SKEW = dt.timedelta(hours=1)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate to trust, and the server's certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path

    @property
    def cert_dir(self) -> Path:
        """The directory holding `ca.crt`, usable as skopeo's `--cert-dir`."""
        return self.ca_cert.parent

    def server_context(self) -> ssl.SSLContext:
        """Return an SSL context serving the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return an SSL context trusting only the CA (hostnames are checked)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def new_key() -> ec.EllipticCurvePrivateKey:
    """Return a new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """Return a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """Return a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocimirror testkit"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(*, sign_certs: bool, encipher: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def self_signed(
    key: PrivateKey, common_name: str, *, ca: bool = True, days: int = 30
) -> x509.Certificate:
    """Return a self-signed certificate for `key` (a CA unless `ca` is false)."""
    name = _name(common_name)
    builder = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            _key_usage(sign_certs=ca, encipher=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
    )
    return builder.sign(key, hashes.SHA256())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def server_cert(
    key: PrivateKey,
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    days: int = 30,
) -> x509.Certificate:
    """Return a server certificate for `key` and `hosts`, signed by the CA."""
    builder = (
        _builder(_name(hosts[0]), ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(sign_certs=False, encipher=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def make_tls_files(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, *, days: int = 30
) -> TlsFiles:
    """Write a new CA and a server certificate for `hosts` it signed; return their paths."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca = self_signed(ca_key, "ocimirror testkit CA", ca=True, days=days)
    key = new_key()
    cert = server_cert(key, ca_key, ca, hosts, days=days)
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        cert=directory / "server-cert.pem",
        key=directory / "server-key.pem",
    )
    files.ca_cert.write_bytes(cert_pem(ca))
    files.cert.write_bytes(cert_pem(cert))
    files.key.touch(mode=0o600)
    files.key.write_bytes(key_pem(key))
    return files
