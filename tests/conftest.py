"""Fixtures: a real etcd on free ports, a fault-injecting proxy, watchers, and clean globals."""

from __future__ import annotations

import logging
import os

import pytest

import config_watch
from config_watch import ConfigWatcher, Settings, service_prefix, GLOBAL_PREFIX
from config_watch._source import EtcdSource
from gateway import pipeline
from tools.etcd_server import EtcdServer
from tools.tcp_proxy import TcpProxy

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]


@pytest.fixture(autouse=True)
def _clean_globals():
    """Every test starts with no runtime, membership or gateway state (breaker, buckets,
    upstream pool), and leaves os.environ as it found it."""
    saved = dict(os.environ)
    config_watch.reset_runtime()
    config_watch.reset_membership()
    pipeline.reset()
    yield
    config_watch.reset_runtime()
    config_watch.reset_membership()
    pipeline.reset()
    os.environ.clear()
    os.environ.update(saved)
    # The runtime's log handler holds the stdout of this test's capture: drop it.
    from config_watch import _logging

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_config_watch", False)]:
        root.removeHandler(handler)
    _logging._configured = False


@pytest.fixture
def etcd(tmp_path):
    server = EtcdServer(data_dir=str(tmp_path / "etcd-data"), log_path=str(tmp_path / "etcd.log"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(etcd):
    with TcpProxy(etcd.client_port) as p:
        yield p


def fast_settings(endpoints: str, **overrides) -> Settings:
    """Settings with short bounds, so fault tests finish in seconds."""
    env = {
        "ETCD_ENDPOINTS": endpoints,
        "ETCD_DEAD_STREAM_SECONDS": "1.5",
        "ETCD_REQUEST_TIMEOUT_SECONDS": "1",
        "CONFIG_STALENESS_SECONDS": "2",
        "CONFIG_CHECK_TIMEOUT_SECONDS": "0.5",
        **{k: str(v) for k, v in overrides.items()},
    }
    return Settings.from_env(env)


@pytest.fixture
def make_watcher():
    """Start a real watcher against the given endpoints; stopped after the test."""
    started: list[ConfigWatcher] = []

    def make(endpoints: str, backoff=None, **overrides) -> ConfigWatcher:
        settings = fast_settings(endpoints, **overrides)
        watcher = ConfigWatcher(lambda: EtcdSource(settings, PREFIXES), PREFIXES, settings, backoff=backoff)
        started.append(watcher.start())
        return watcher

    yield make
    for w in started:
        w.stop()
