"""TLS material read once, when the runtime is made: a missing or unreadable file is a
bad setting, reported as such at once, not a connection failure retried forever."""

from __future__ import annotations

import ssl
from typing import NamedTuple

from ._errors import ConfigurationError
from ._settings import Settings


class TlsMaterial(NamedTuple):
    """The PEM bytes gRPC takes, and the context the JSON gateway's HTTPS client takes."""

    cacert: bytes | None
    cert: bytes | None
    key: bytes | None
    context: ssl.SSLContext

    @classmethod
    def load(cls, settings: Settings) -> "TlsMaterial | None":
        """The material `settings` names (None without TLS); ConfigurationError names the
        setting whose file cannot be read or parsed."""
        if not settings.secure:
            return None
        s = settings
        cacert, cert, key = (read_file(path, name) if path else None
                             for path, name in ((s.cacert, "ETCD_CACERT"), (s.cert, "ETCD_CERT"), (s.key, "ETCD_KEY")))
        try:
            context = ssl.create_default_context(cadata=cacert.decode("ascii") if cacert else None)
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"ETCD_CACERT: not a PEM certificate ({exc})") from None
        if s.cert:
            try:  # the ssl module loads a chain from files only; they were just read
                context.load_cert_chain(s.cert, s.key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"ETCD_CERT/ETCD_KEY: not a matching PEM certificate and key ({exc})") from None
        return cls(cacert, cert, key, context)


def read_file(path: str, name: str) -> bytes:
    """The bytes of a TLS file named by setting `name`, or a ConfigurationError saying which."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {path}: {exc.strerror}") from None
