"""The gateway's TLS certificate: the operator's own (GATEWAY_TLS_CERT / GATEWAY_TLS_KEY), or a
self-signed one made at first start where those paths point and kept there.

The self-signed certificate names `localhost`, `127.0.0.1`, `::1` and this machine's host name, and is
its own trust anchor: a client trusts it by pointing its CA bundle at the certificate file (the SDK:
`SSL_CERT_FILE` and `REQUESTS_CA_BUNDLE`), or skips verification (`DISABLE_TLS_VERIFY=1`). The Docker
image makes the same one with openssl (docker/gateway-tls.sh).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

COMMON_NAME = "IntelliOptics edge gateway"
VALID_DAYS = 3650


class CertificateError(ValueError):
    """The certificate and key paths are not usable."""


def ensure_certificate(cert: Path, key: Path) -> bool:
    """Make a self-signed certificate and key at these paths unless both exist; True when made."""
    if cert.exists() and key.exists():
        return False
    if cert.exists() or key.exists():
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise CertificateError(f"{present} exists but {missing} does not: give both, or neither")
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = _self_signed(_host_names())
    _write(key, key_pem, 0o600)
    _write(cert, cert_pem, 0o644)
    return True


def _host_names() -> list[str]:
    names = ["localhost"]
    hostname = socket.gethostname()
    if hostname and hostname not in names:
        names.append(hostname)
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _self_signed(names: list[str]) -> tuple[bytes, bytes]:
    try:
        return _with_cryptography(names)
    except ImportError:
        return _with_openssl(names)


def _with_cryptography(names: list[str]) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
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
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _with_openssl(names: list[str]) -> tuple[bytes, bytes]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("neither the cryptography package nor openssl is installed")
    alt = ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1", "IP:::1"])
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        argv += ["-nodes", "-days", str(VALID_DAYS), "-subj", f"/CN={COMMON_NAME}"]
        argv += ["-addext", f"subjectAltName={alt}", "-addext", "extendedKeyUsage=serverAuth"]
        argv += ["-keyout", str(key), "-out", str(cert)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CertificateError(f"openssl could not make a certificate: {result.stderr.strip()}")
        return cert.read_bytes(), key.read_bytes()
