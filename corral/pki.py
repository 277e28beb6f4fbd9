"""The deployment's certificate authority and its services' certificates.

A deployment has one CA; every service (and the admin's CLI or grpcurl) has a certificate from
it whose one URI SAN names its role and name, `spiffe://corral/<role>/<name>` (grpc exposes it
as the peer's `peer_spiffe_id`, see corral.authz), plus the DNS names and IP addresses it is
reached at. Layout of a directory (`corral up` keeps one in <data_dir>/pki):

    ca.crt  ca.key           the CA (ca.key 0600; only needed to issue more certificates)
    <role>.crt  <role>.key   one pair per role: scheduler, executor, memory, gateway, admin

Keys are ECDSA P-256: small, and made in a millisecond (tests make a CA per cluster).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.authz import ROLES, parse_spiffe_id, spiffe_id

if TYPE_CHECKING:
    from corral.config import Settings

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# Where services are reached in the embedded mode, the tests and the compose deployment.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "scheduler", "memory", "gateway")
CA_DAYS = 3650
CERT_DAYS = 825


class PKIError(Exception):
    """A certificate directory is missing, incomplete or unusable; the message says which file."""


def cert_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.crt"


def key_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.key"


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode (never world-readable for a moment), replaced atomically.
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # the umask may have narrowed it: exactly `mode`
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: Path) -> CA:
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PKIError(f"cannot read the CA in {directory}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{directory / CA_KEY} is not an EC key")
        return cls(cert, key)

    def issue(
        self, role: str, name: str, hosts: Iterable[str] = DEFAULT_HOSTS
    ) -> tuple[bytes, bytes]:
        """A certificate (PEM) and its key (PEM) for `role`/`name`, valid for `hosts`."""
        if role not in ROLES:
            raise PKIError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not name or "/" in name:
            raise PKIError(f"invalid name {name!r}: give a non-empty name without '/'")
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(role, name))]
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{role}/{name}")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_into(
        self, directory: Path, role: str, name: str, hosts: Iterable[str] = DEFAULT_HOSTS,
        owner: int | None = None,
    ) -> None:
        """Writes <role>.crt, <role>.key (0600) and a copy of ca.crt into `directory`."""
        cert, key = self.issue(role, name, hosts)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        _write(directory / CA_CERT, self.cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(cert_path(directory, role), cert, 0o644)
        _write(key_path(directory, role), key, 0o600)
        if owner is not None:
            for path in (directory, key_path(directory, role)):
                os.chown(path, owner, owner)


def create_ca(directory: Path) -> CA:
    """A new CA in `directory` (0700; ca.key 0600). Refuses to replace an existing one."""
    if (directory / CA_KEY).exists():
        raise PKIError(f"{directory} already holds a CA ({CA_KEY}); remove it to make a new one")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corral deployment CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), 0o600)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CA(cert, key)


# The roles `corral up` and `corral pki init` issue, with the name each certificate carries
# (the executor's name is its executor id, given by the caller).
SERVICE_ROLES = ("scheduler", "memory", "gateway", "admin")


def ensure_deployment(directory: Path, executor_id: str, hosts: Iterable[str] = DEFAULT_HOSTS) -> bool:
    """Creates the CA and one certificate per role in `directory` unless it holds them already;
    True when it created them. The executor's certificate names `executor_id`."""
    if (directory / CA_CERT).exists():
        missing = [
            str(path) for role in ROLES for path in (cert_path(directory, role), key_path(directory, role))
            if not path.exists()
        ]
        if missing:
            raise PKIError(f"incomplete certificate directory {directory}: missing {', '.join(missing)}")
        return False
    ca = create_ca(directory)
    hosts = list(hosts)
    for role in SERVICE_ROLES:
        ca.issue_into(directory, role, role, hosts)
    ca.issue_into(directory, "executor", executor_id, hosts)
    return True


def identity_of(cert_pem: bytes) -> tuple[str, str] | None:
    """The (role, name) a certificate's corral SPIFFE id names, or None."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        parsed = parse_spiffe_id(uri)
        if parsed is not None:
            return parsed
    return None


def certified_executor_id(settings: Settings) -> str:
    """The executor id this executor's certificate names; CORRAL_EXECUTOR_ID, when set, must
    be the same (the scheduler refuses any other)."""
    _, cert_file, _ = settings.tls_paths("executor")
    try:
        identity = identity_of(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read the executor certificate {cert_file}: {exc}") from exc
    if identity is None or identity[0] != "executor":
        raise PKIError(f"{cert_file} is not an executor certificate (its SAN names {identity})")
    if settings.executor_id and settings.executor_id != identity[1]:
        raise PKIError(
            f"CORRAL_EXECUTOR_ID is {settings.executor_id!r} but the certificate {cert_file} is for "
            f"executor {identity[1]!r}: issue one for this id (corral pki issue --role executor "
            f"--name {settings.executor_id})"
        )
    return identity[1]
