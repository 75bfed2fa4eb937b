"""Settings from the environment: defaults, endpoint forms, and messages that name the setting."""

from __future__ import annotations

import pytest

from config_watch import Settings, SettingsError
from config_watch._settings import Endpoint


def endpoints(text: str) -> list[tuple[str, int, bool | None]]:
    return [(e.host, e.port, e.secure) for e in Settings.from_env({"ETCD_ENDPOINTS": text}).endpoints]


def test_defaults_from_an_empty_environment():
    s = Settings.from_env({})
    assert [str(e) for e in s.endpoints] == ["127.0.0.1:2379"]
    assert s.service == "api-gateway"
    assert (s.cacert, s.cert, s.key, s.username, s.password) == (None,) * 5
    assert s.secure is False
    assert s.initial_wait == 0.5 and s.staleness == 5.0 and s.check_timeout == 0.5
    assert s.request_timeout == 3.0 and s.dead_stream == 5.0
    assert s.trusted_proxy_hops == 0 and s.max_clients == 100_000
    assert s.log_level == "INFO"


def test_from_env_matches_the_dataclass_defaults():
    assert Settings.from_env({}) == Settings()


def test_empty_values_mean_the_default():
    s = Settings.from_env({"ETCD_ENDPOINTS": "", "CONFIG_STALENESS_SECONDS": " ", "TRUSTED_PROXY_HOPS": ""})
    assert s == Settings()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("etcd:2379", [("etcd", 2379, None)]),
        ("http://10.0.0.5:2379", [("10.0.0.5", 2379, False)]),
        ("https://etcd.internal:2379/", [("etcd.internal", 2379, True)]),
        ("[::1]:2379", [("::1", 2379, None)]),
        ("https://[fd00::5]:23790", [("fd00::5", 23790, True)]),
        ("a:1,b:2,c:3", [("a", 1, None), ("b", 2, None), ("c", 3, None)]),
        ("  a:1 ,\tb:2 , ", [("a", 1, None), ("b", 2, None)]),
    ],
)
def test_endpoint_forms(text, expected):
    assert endpoints(text) == expected


def test_endpoint_target_brackets_ipv6_hosts():
    assert Endpoint("::1", 2379, None).target == "[::1]:2379"
    assert str(Endpoint("::1", 2379, True)) == "https://[::1]:2379"
    assert Endpoint("etcd", 2379, None).target == "etcd:2379"


def test_https_endpoints_make_the_connection_secure():
    assert Settings.from_env({"ETCD_ENDPOINTS": "https://a:1"}).secure is True
    assert Settings.from_env({"ETCD_ENDPOINTS": "a:1", "ETCD_CACERT": "/ca.pem"}).secure is True


@pytest.mark.parametrize(
    "text",
    ["etcd", "etcd:", ":2379", "etcd:0", "etcd:65536", "etcd:port", "etcd:-1", "etcd:+1", "[::1]", "[::1",
     "[::1]:x", "ftp://etcd:2379", "http://", ",", " , ,", "etcd:2379/path", "etcd:\u00b2", "etcd:\u0662"],
)
def test_malformed_endpoints_raise_settings_error_naming_etcd_endpoints(text):
    with pytest.raises(SettingsError, match="ETCD_ENDPOINTS"):
        Settings.from_env({"ETCD_ENDPOINTS": text})


def test_mixed_schemes_are_rejected():
    with pytest.raises(SettingsError, match="ETCD_ENDPOINTS.*mixes"):
        Settings.from_env({"ETCD_ENDPOINTS": "http://a:1,https://b:2"})


def test_unspecified_scheme_mixes_with_either():
    assert endpoints("a:1,https://b:2") == [("a", 1, None), ("b", 2, True)]


def test_cacert_with_http_endpoints_is_rejected():
    with pytest.raises(SettingsError, match="ETCD_CACERT"):
        Settings.from_env({"ETCD_ENDPOINTS": "http://a:1", "ETCD_CACERT": "/ca.pem"})


@pytest.mark.parametrize("given", [{"ETCD_CERT": "/c.pem"}, {"ETCD_KEY": "/k.pem"}])
def test_cert_without_key_is_rejected(given):
    with pytest.raises(SettingsError, match="ETCD_CERT and ETCD_KEY"):
        Settings.from_env({"ETCD_ENDPOINTS": "https://a:1", **given})


def test_client_cert_without_tls_is_rejected():
    with pytest.raises(SettingsError, match="ETCD_CERT needs TLS"):
        Settings.from_env({"ETCD_ENDPOINTS": "a:1", "ETCD_CERT": "/c.pem", "ETCD_KEY": "/k.pem"})


def test_client_cert_with_a_ca_is_accepted():
    s = Settings.from_env({"ETCD_CACERT": "/ca", "ETCD_CERT": "/c", "ETCD_KEY": "/k"})
    assert (s.cacert, s.cert, s.key, s.secure) == ("/ca", "/c", "/k", True)


@pytest.mark.parametrize("given", [{"ETCD_USERNAME": "root"}, {"ETCD_PASSWORD": "pw"}])
def test_username_without_password_is_rejected(given):
    with pytest.raises(SettingsError, match="ETCD_USERNAME and ETCD_PASSWORD"):
        Settings.from_env(given)


def test_password_is_not_in_the_repr():
    s = Settings.from_env({"ETCD_USERNAME": "root", "ETCD_PASSWORD": "hunter2-secret"})
    assert s.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(s)


@pytest.mark.parametrize("service", ["a/b", "/"])
def test_service_name_with_a_slash_is_rejected(service):
    with pytest.raises(SettingsError, match="CONFIG_SERVICE"):
        Settings.from_env({"CONFIG_SERVICE": service})


def test_numeric_settings_are_read():
    s = Settings.from_env({
        "CONFIG_INITIAL_WAIT_SECONDS": "0.25", "CONFIG_STALENESS_SECONDS": "2", "CONFIG_CHECK_TIMEOUT_SECONDS": "0.1",
        "ETCD_REQUEST_TIMEOUT_SECONDS": "1.5", "ETCD_DEAD_STREAM_SECONDS": "0.9", "ETCD_KEEPALIVE_SECONDS": "20",
        "ETCD_KEEPALIVE_TIMEOUT_SECONDS": "2", "TRUSTED_PROXY_HOPS": "1", "RATE_LIMIT_MAX_CLIENTS": "10",
        "LOG_LEVEL": "debug",
    })
    assert (s.initial_wait, s.staleness, s.check_timeout, s.request_timeout, s.dead_stream) == (0.25, 2, 0.1, 1.5, 0.9)
    assert (s.keepalive, s.keepalive_timeout, s.trusted_proxy_hops, s.max_clients) == (20, 2, 1, 10)
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    "name,value",
    [
        ("CONFIG_INITIAL_WAIT_SECONDS", "soon"), ("CONFIG_INITIAL_WAIT_SECONDS", "-1"),
        ("CONFIG_STALENESS_SECONDS", "0.01"), ("CONFIG_STALENESS_SECONDS", "nan"),
        ("CONFIG_CHECK_TIMEOUT_SECONDS", "0"), ("ETCD_REQUEST_TIMEOUT_SECONDS", "1s"),
        ("ETCD_DEAD_STREAM_SECONDS", "0.1"), ("ETCD_KEEPALIVE_SECONDS", "1"),
        ("ETCD_KEEPALIVE_TIMEOUT_SECONDS", "0.1"), ("TRUSTED_PROXY_HOPS", "-1"), ("TRUSTED_PROXY_HOPS", "1.5"),
        ("TRUSTED_PROXY_HOPS", "one"), ("RATE_LIMIT_MAX_CLIENTS", "0"), ("RATE_LIMIT_MAX_CLIENTS", "1e5"),
    ],
)
def test_bad_numeric_settings_raise_an_error_naming_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "name",
    ["CONFIG_INITIAL_WAIT_SECONDS", "CONFIG_CHECK_TIMEOUT_SECONDS", "ETCD_REQUEST_TIMEOUT_SECONDS",
     "ETCD_DEAD_STREAM_SECONDS", "ETCD_KEEPALIVE_SECONDS", "ETCD_KEEPALIVE_TIMEOUT_SECONDS"],
)
def test_infinite_timeouts_are_rejected(name):
    """Each of these becomes a wait or a gRPC option; an infinite one raises OverflowError there."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "inf"})


def test_settings_are_immutable():
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.max_clients = 1  # type: ignore[misc]


def test_each_default_is_written_once_in_the_fields():
    """from_env takes its defaults from the fields, so the two can never disagree."""
    import inspect
    import re

    source = inspect.getsource(Settings.from_env)
    literals = re.findall(r'_(?:float|int|bool)\(env, "[A-Z_]+", (?!default\[)', source)
    assert literals == [], literals


@pytest.mark.parametrize("raw,expected", [("", False), ("true", True), ("TRUE", True), ("false", False)])
def test_status_details_is_off_unless_set_true(raw, expected):
    assert Settings.from_env({"STATUS_DETAILS": raw}).status_details is expected


def test_status_details_rejects_anything_but_true_or_false():
    with pytest.raises(SettingsError, match="STATUS_DETAILS"):
        Settings.from_env({"STATUS_DETAILS": "yes"})
