"""The gateway's deployment settings and its per-process state."""

from __future__ import annotations

import os

import pytest

from config_watch import SettingsError
from gateway._process import PerProcess
from gateway.settings import GatewaySettings, parse_upstream


def test_defaults_point_at_the_local_processor():
    settings = GatewaySettings.from_env({})
    assert str(settings.upstream) == "http://127.0.0.1:8081"
    assert settings.token is None and settings.max_body_bytes == 1 << 20


@pytest.mark.parametrize("url, expected", [
    ("http://processor.internal", "http://processor.internal:80"),
    ("https://10.0.0.5:8443/api/", "https://10.0.0.5:8443/api"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_upstream_urls(url, expected):
    assert str(parse_upstream(url)) == expected


@pytest.mark.parametrize("env, named", [
    ({"PROCESSOR_URL": "ftp://x"}, "PROCESSOR_URL"),
    ({"PROCESSOR_URL": "http://"}, "PROCESSOR_URL"),
    ({"PROCESSOR_URL": "http://x:99999"}, "PROCESSOR_URL"),
    ({"PROCESSOR_URL": "http://user:pw@x"}, "PROCESSOR_URL"),
    ({"PROCESSOR_TOKEN": "two words"}, "PROCESSOR_TOKEN"),
    ({"FORWARD_MAX_BODY_BYTES": "-1"}, "FORWARD_MAX_BODY_BYTES"),
    ({"FORWARD_POOL_CONNECTIONS": "0"}, "FORWARD_POOL_CONNECTIONS"),
])
def test_malformed_settings_are_named(env, named):
    with pytest.raises(SettingsError, match=named):
        GatewaySettings.from_env(env)


def test_the_token_never_shows_in_repr():
    assert "s3cret" not in repr(GatewaySettings.from_env({"PROCESSOR_TOKEN": "s3cret"}))


def test_per_process_value_is_made_once_and_anew_after_a_fork():
    made = []
    value = PerProcess(lambda: made.append(os.getpid()) or object())
    first = value.get()
    assert value.get() is first and made == [os.getpid()]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a value of its own, not the parent's
        try:
            child = value.get()
            os.write(write, b"new" if child is not first and value.get() is child else b"shared")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 16) == b"new"
    os.waitpid(pid, 0)
    os.close(read)
    assert value.get() is first
