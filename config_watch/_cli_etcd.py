"""The operator tool's way to etcd: settings, `.local/env`, the first endpoint that
answers; and the one-line error it reports (`CliError`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ._errors import Unavailable
from ._keyrange import prefix_range_end
from ._schema import ROOT
from ._settings import Settings, SettingsError

# Where `make run` records the endpoint it started etcd on (git-ignored).
LOCAL_ENV = Path(".local") / "env"
# The only setting read from that file: the rest stay the operator's to set.
_LOCAL_SETTINGS = ("ETCD_ENDPOINTS",)
# How much of a server's error text a message repeats.
DETAIL_CHARS = 200


class CliError(Exception):
    """A failure to report as one line; `status` 1: failed, 2: refused."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def refused(message: str) -> CliError:
    return CliError(message, 2)


def find_local_env(start: Path | None = None) -> Path | None:
    """`.local/env` in the current directory or the nearest parent that has one."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / LOCAL_ENV
        if candidate.is_file():
            return candidate
    return None


def read_local_env(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc} (rerun `make run` to rewrite it)") from None
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name.strip()):
            raise SettingsError(f"{path} line {number}: expected NAME=VALUE, got {line!r} (rerun `make run` to rewrite it)")
        if name.strip() in _LOCAL_SETTINGS:
            values[name.strip()] = value.strip().strip("'\"")
    return values


def etcd_environment() -> tuple[dict[str, str], str]:
    """The environment to build Settings from, and where ETCD_ENDPOINTS came from."""
    env = dict(os.environ)
    if env.get("ETCD_ENDPOINTS"):
        return env, "ETCD_ENDPOINTS"
    path = find_local_env()
    if path is not None:
        local = read_local_env(path)
        if local.get("ETCD_ENDPOINTS"):
            env.update(local)
            return env, f"{path}, written by make run"
    return env, "the default: ETCD_ENDPOINTS unset, no .local/env"


class Etcd:
    """The connection of one command: settings, then the first endpoint that answers."""

    def __init__(self) -> None:
        env, self.source = etcd_environment()
        try:
            self.settings = Settings.from_env(env)
        except SettingsError as exc:
            from_file = str(exc).startswith("ETCD_ENDPOINTS") and self.source != "ETCD_ENDPOINTS"
            where = f" (ETCD_ENDPOINTS from {self.source})" if from_file else ""
            raise refused(f"bad setting: {exc}{where}") from None
        self.timeout = self.settings.request_timeout
        self._client = None

    @property
    def endpoints(self) -> str:
        return ",".join(str(e) for e in self.settings.endpoints)

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
        from ._etcd import EtcdClient  # gRPC loads only for commands that need etcd

        failures = []
        for endpoint in self.settings.endpoints:
            client = EtcdClient(self.settings._replace(endpoints=(endpoint,)))
            try:
                client.list_range(ROOT.encode(), b"", self.timeout)  # one key: proves we can read
                return client
            except Unavailable as exc:
                client.close()
                failures.append(f"{endpoint} ({short(exc)})")
            except BaseException:
                client.close()
                raise
        raise CliError(f"cannot reach etcd at {'; '.join(failures)} [endpoints from {self.source}]: "
                       "start it with `make run`, or point ETCD_ENDPOINTS at a running etcd")

    def revision(self) -> int:
        revision, _ = self.client.list_range(ROOT.encode(), b"", self.timeout)
        return revision

    def get(self, key: str):
        _, kvs = self.client.list_range(key.encode(), key.encode() + b"\0", self.timeout)
        return kvs[0] if kvs else None

    def under(self, prefix: str):
        start = prefix.encode()
        return self.client.list_range(start, prefix_range_end(start), self.timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def short(exc: Exception) -> str:
    text = str(exc)
    if "last error:" in text:
        text = text.rsplit("last error:", 1)[1]
    return " ".join(text.split())[:DETAIL_CHARS]


def flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise refused(f"bad setting: {name}: expected true or false, got {os.environ[name]!r}")
