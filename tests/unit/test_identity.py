"""Client identity for rate limiting: API key, else address, forwarded only via trusted hops."""

from __future__ import annotations

import pytest

from gateway import client_identity


def environ(remote: str | None = "10.0.0.1", xff: str | None = None, api_key: str | None = None) -> dict:
    env = {}
    if remote is not None:
        env["REMOTE_ADDR"] = remote
    if xff is not None:
        env["HTTP_X_FORWARDED_FOR"] = xff
    if api_key is not None:
        env["HTTP_X_API_KEY"] = api_key
    return env


def test_api_key_wins_over_the_address():
    a = client_identity(environ(remote="10.0.0.1", api_key="k1"), 0)
    b = client_identity(environ(remote="10.0.0.2", xff="1.2.3.4", api_key="k1"), 1)
    assert a == b
    assert a.startswith("key:")


def test_api_key_is_hashed_not_repeated():
    identity = client_identity(environ(api_key="secret-key-value"), 0)
    assert "secret-key-value" not in identity


def test_distinct_api_keys_give_distinct_identities():
    assert client_identity(environ(api_key="k1"), 0) != client_identity(environ(api_key="k2"), 0)


def test_a_one_megabyte_api_key_yields_a_short_identity():
    identity = client_identity(environ(api_key="x" * 1_000_000), 0)
    assert len(identity) <= 64


@pytest.mark.parametrize("key", ["ключ", "\udcff\udc80", "caf\xe9", "\x00\x01", "🔑" * 100])
def test_odd_api_keys_are_hashed_without_error(key):
    assert client_identity(environ(api_key=key), 0).startswith("key:")


def test_empty_api_key_falls_back_to_the_address():
    assert client_identity(environ(remote="10.0.0.9", api_key=""), 0) == "ip:10.0.0.9"


def test_without_trusted_hops_the_address_is_the_remote_addr():
    assert client_identity(environ(remote="192.0.2.5"), 0) == "ip:192.0.2.5"


def test_without_trusted_hops_x_forwarded_for_is_ignored():
    """A client cannot pick a fresh identity (and a fresh bucket) by sending its own XFF."""
    identities = {client_identity(environ(remote="192.0.2.5", xff=f"198.51.100.{i}"), 0) for i in range(20)}
    assert identities == {"ip:192.0.2.5"}


def test_with_one_hop_the_rightmost_entry_is_used():
    env = environ(remote="10.0.0.1", xff="198.51.100.77, 203.0.113.7")
    assert client_identity(env, 1) == "ip:203.0.113.7"


def test_with_one_hop_a_client_supplied_prefix_does_not_change_the_identity():
    identities = {client_identity(environ(xff=f"198.51.100.{i}, 203.0.113.7"), 1) for i in range(20)}
    assert identities == {"ip:203.0.113.7"}


def test_with_one_hop_an_unbalanced_quote_from_the_client_does_not_hide_the_trusted_entry():
    """The proxy appends the real address after whatever the client sent, even `"`."""
    env = environ(remote="10.0.0.1", xff='"198.51.100.1, 203.0.113.7')
    assert client_identity(env, 1) == "ip:203.0.113.7"


def test_with_two_hops_the_second_from_the_right_is_used():
    env = environ(remote="10.0.0.1", xff="198.51.100.1, 203.0.113.7, 10.1.1.1")
    assert client_identity(env, 2) == "ip:203.0.113.7"


def test_more_hops_than_entries_falls_back_to_remote_addr():
    assert client_identity(environ(remote="10.0.0.1", xff="203.0.113.7"), 3) == "ip:10.0.0.1"


def test_missing_remote_addr_gives_a_stable_identity():
    assert client_identity(environ(remote=None), 0) == client_identity(environ(remote=None), 0)


def test_identity_does_not_modify_the_callers_environ():
    env = environ(remote="10.0.0.1", xff="203.0.113.7")
    before = dict(env)
    client_identity(env, 1)
    assert env == before


@pytest.mark.parametrize("xff", [",,,", "", " ", "[::1", "]", "\"", "\"\"", "a,,b", "1.2.3.4;x", "\x00",
                                 ",".join(["203.0.113.1"] * 2000), "ünïcødé", "::1, [::1", "a" * 100_000])
@pytest.mark.parametrize("hops", [0, 1, 2])
def test_malformed_x_forwarded_for_does_not_raise(xff, hops):
    identity = client_identity(environ(remote="10.0.0.1", xff=xff), hops)
    assert identity.startswith("ip:")
    if hops == 0:
        assert identity == "ip:10.0.0.1"
