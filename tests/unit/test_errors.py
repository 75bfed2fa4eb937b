"""What each error means for the watch loop: decided in one place."""

from __future__ import annotations

import pytest

from config_watch._errors import (
    EXPIRED,
    PERMANENT,
    TRANSIENT,
    AuthError,
    Compacted,
    ConfigurationError,
    EtcdError,
    Unavailable,
    error_for_code,
    failure_of,
    refused_user,
)
from config_watch._settings import SettingsError


@pytest.mark.parametrize(
    "err,kind",
    [
        (Compacted(42), EXPIRED),
        (Unavailable("connection refused"), TRANSIENT),
        (Unavailable("etcdserver: no leader"), TRANSIENT),
        (error_for_code(4, "context deadline exceeded"), TRANSIENT),
        (error_for_code(3, "etcdserver: revision of auth store is old"), TRANSIENT),  # passes by itself
        (refused_user("gateway", AuthError("etcdserver: authentication failed, invalid user ID or password")),
         PERMANENT),
        (error_for_code(7, "etcdserver: permission denied"), PERMANENT),
        (ConfigurationError("ETCD_CACERT: cannot read /etc/secrets/ca.pem: No such file or directory"), PERMANENT),
        (SettingsError("ETCD_ENDPOINTS: expected host:port, got 'x'"), PERMANENT),
        (RuntimeError("a bug"), TRANSIENT),
    ],
)
def test_each_error_has_one_meaning(err, kind):
    assert failure_of(err).kind == kind


def test_reasons_name_what_to_fix_and_nothing_else():
    refused = failure_of(refused_user("gateway", AuthError("authentication failed, invalid user ID or password")))
    assert refused.reason == "etcd refused the credentials (check ETCD_USERNAME/ETCD_PASSWORD)"
    assert "gateway" in refused.detail and "gateway" not in refused.reason
    denied = failure_of(AuthError("etcdserver: permission denied"))
    assert "role" in denied.reason
    tls = failure_of(ConfigurationError("ETCD_KEY: cannot read /etc/secrets/key.pem: Permission denied"))
    assert tls.reason == "bad setting: ETCD_KEY" and "/etc/secrets" in tls.detail
    unreachable = failure_of(Unavailable("10.0.0.5:2379: connection refused"))
    assert "10.0.0.5" not in unreachable.reason


def test_unreadable_tls_files_are_a_settings_error():
    assert issubclass(ConfigurationError, SettingsError) and issubclass(ConfigurationError, EtcdError)
