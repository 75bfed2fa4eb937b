"""Throw-away TLS material for a client-cert-auth etcd: a CA, a server certificate, and
one client certificate per etcd user. For tests and local runs only.

    make_tls_material(directory, client_names=("root", "gateway", "operator"),
                      server_hosts=("127.0.0.1", "localhost"),
                      valid_days=30, no_cn_clients=()) -> TLSMaterial

Writes PEM files into `directory` (created if missing), under the names the etcd VM
uses (terraform/templates/etcd.flags.tftpl reads ca.pem, server.pem, server-key.pem
from its PKI directory):

    ca.pem  ca-key.pem  server.pem  server-key.pem  <client>.pem  <client>-key.pem

Each client certificate's Common Name is the client name: with `--client-cert-auth`
and auth enabled, etcd takes the CN as the user name when the client sends no
password, so `gateway.pem` authenticates as etcd user `gateway`.

TLSMaterial holds the paths (str): `directory`, `ca_cert`, `ca_key`, `server_cert`,
`server_key`, `clients` (dict name -> ClientCert(cert, key)), and
`etcd_tls(client=None)` returns a `tools.etcd_server.TLSFiles` for EtcdServer
(the client's cert and key are the ones its `.etcdctl()` presents).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.etcd_server import TLSFiles


@dataclass(frozen=True)
class ClientCert:
    cert: str
    key: str


@dataclass
class TLSMaterial:
    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    clients: dict[str, ClientCert] = field(default_factory=dict)

    def etcd_tls(self, client: str | None = None) -> TLSFiles:
        """TLSFiles for EtcdServer; `client` picks the certificate etcdctl presents."""
        chosen = self.clients[client] if client else None
        return TLSFiles(
            ca=self.ca_cert,
            server_cert=self.server_cert,
            server_key=self.server_key,
            client_cert=chosen.cert if chosen else None,
            client_key=chosen.key if chosen else None,
        )


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: what Terraform's tls_private_key makes for the VM, and fast to generate.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "config-watch test")]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_tls_material(
    directory: str | os.PathLike,
    client_names=("root", "gateway", "operator"),
    server_hosts=("127.0.0.1", "localhost"),
    valid_days: int = 30,
    no_cn_clients=(),
) -> TLSMaterial:
    """Create a CA, a server cert (SANs = server_hosts) and client certs in `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # Back-date a little so a clock a few seconds behind still accepts the certs.
    not_before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    not_after = not_before + datetime.timedelta(days=valid_days)

    ca_key = _new_key()
    ca_name = _name("config-watch test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str | None, usages, hosts=None):
        key = _new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    material = TLSMaterial(
        directory=str(out),
        ca_cert=str(out / "ca.pem"),
        ca_key=str(out / "ca-key.pem"),
        server_cert=str(out / "server.pem"),
        server_key=str(out / "server-key.pem"),
    )
    _write_key(Path(material.ca_key), ca_key)
    _write_cert(Path(material.ca_cert), ca_cert)

    # etcd's gRPC gateway dials the server with the server's own certificate, so under
    # --client-cert-auth the server certificate needs clientAuth as well as serverAuth.
    server_key, server_cert = leaf(
        "etcd",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        hosts=server_hosts,
    )
    _write_key(Path(material.server_key), server_key)
    _write_cert(Path(material.server_cert), server_cert)

    for name in (*client_names, *no_cn_clients):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"client name {name!r} cannot be a file name")
        # A certificate without a Common Name names no etcd user: its holder must log
        # in with a password (etcd's JSON gateway refuses CN certificates under auth).
        common_name = None if name in no_cn_clients else name
        key, cert = leaf(common_name, [ExtendedKeyUsageOID.CLIENT_AUTH])
        client = ClientCert(cert=str(out / f"{name}.pem"), key=str(out / f"{name}-key.pem"))
        _write_key(Path(client.key), key)
        _write_cert(Path(client.cert), cert)
        material.clients[name] = client
    return material
