"""TLS material for the fleet broker: a CA, a broker certificate and client certificates.

Every certificate is ECDSA P-256, signed by one CA made here. A client certificate's CN is the
identity (robot or worker id): the broker uses it as the username its access control sees.
Private keys are written 0600. Layout under ``DIR``::

    ca.crt  broker.crt  broker.key  clients/ID.crt  clients/ID.key

and under ``CA_DIR`` (kept off the broker: whoever holds ``ca.key`` can mint any identity)::

    ca.crt  ca.key
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schemas.errors import KeyringError

VALIDITY = datetime.timedelta(days=825)


def write_tls(directory: str | Path, identities: Iterable[str], hostnames: Iterable[str] = (),
              address: str = "127.0.0.1", *, ca_dir: str | Path | None = None) -> Path:
    """Create (or reuse) the CA and write broker and client certificates under ``directory``.

    The broker certificate names ``hostnames`` and the IP ``address`` (when it is one). With
    ``ca_dir`` the CA's key lives there (0700) and ``directory`` gets only ``ca.crt``; a
    ``ca.key`` left in ``directory`` by an earlier render is moved to ``ca_dir``. Without it
    the CA is written into ``directory`` (a throwaway deployment).
    """
    root = Path(directory)
    (root / "clients").mkdir(parents=True, exist_ok=True)
    home = root if ca_dir is None else Path(ca_dir)
    if home != root:
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        if (root / "ca.key").exists() and not (home / "ca.key").exists():
            os.replace(root / "ca.key", home / "ca.key")
            os.replace(root / "ca.crt", home / "ca.crt")
        (root / "ca.key").unlink(missing_ok=True)
    if (home / "ca.crt").exists() and (home / "ca.key").exists():
        ca_key = _load_key(home / "ca.key")
        ca_cert = x509.load_pem_x509_certificate((home / "ca.crt").read_bytes())
    else:
        ca_key, ca_cert = make_ca("vlabus broker CA")
        write_pair(home / "ca", ca_key, ca_cert)
    if home != root:
        (root / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        names.append(x509.DNSName(address))
    key, cert = issue(ca_key, ca_cert, "vlabus broker", server_names=names)
    write_pair(root / "broker", key, cert)
    for identity in identities:
        key, cert = issue(ca_key, ca_cert, identity)
        write_pair(root / "clients" / identity, key, cert)
    return root


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
          server_names: list[x509.GeneralName] | None = None,
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate for ``common_name`` signed by the CA: a server certificate when
    ``server_names`` is given, else a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(server_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pair(stem: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    """Write ``STEM.key`` (0600, PKCS#8 PEM) and ``STEM.crt`` (PEM)."""
    key_path = stem.with_name(stem.name + ".key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    stem.with_name(stem.name + ".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyringError(f"{path} is not an EC private key")
    return key
