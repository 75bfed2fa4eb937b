"""The OpenFeature provider against a real etcd, through the real SDK's client."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from config_watch._backoff import Backoff
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode, GeneralError, ProviderNotReadyError
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

import config_watch
from config_watch import (
    EXPERIMENTS,
    FEATURES,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    RATE_LIMIT_SCOPE,
    THREADS,
    UPSTREAM_TIMEOUT_MS,
    EtcdClient,
    Settings,
)
from config_watch.openfeature import EtcdProvider
from tests.support import wait_until
from tools.etcd_server import EtcdServer
from tools.tcp_proxy import TcpProxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONBOARDING = FEATURES + "new-user-onboarding"


class Events:
    """Every event the SDK dispatches for the etcd provider, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[ProviderEvent, EventDetails]] = []
        for event in ProviderEvent:
            api.add_handler(event, self._recorder(event))

    def _recorder(self, event: ProviderEvent):
        def record(details: EventDetails) -> None:
            if details.provider_name == "etcd":  # not the no-op provider's immediate READY
                with self._lock:
                    self.items.append((event, details))
        return record

    def of(self, event: ProviderEvent) -> list[EventDetails]:
        with self._lock:
            return [d for e, d in self.items if e is event]

    def kinds(self) -> list[ProviderEvent]:
        with self._lock:
            return [e for e, _ in self.items]


@pytest.fixture
def openfeature():
    """The SDK's global state, reset before and after: providers, handlers, hooks, context."""
    api.shutdown()
    try:
        yield api
    finally:
        api.shutdown()


@pytest.fixture
def events(openfeature) -> Events:
    return Events()


@pytest.fixture
def etcd_client(etcd):
    client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}))
    try:
        yield client
    finally:
        client.close()


def ready_client(watcher, **options):
    api.set_provider_and_wait(EtcdProvider(watcher, **options))
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.READY
    return client


# --- resolution ----------------------------------------------------------------------


def test_boolean_flags_from_features_through_the_process_runtime(etcd, openfeature, monkeypatch):
    etcd.etcdctl("put", ONBOARDING, "true")
    etcd.etcdctl("put", MAINTENANCE_MODE, "true")
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    provider = EtcdProvider()  # the process's runtime, from the same settings as the services
    api.set_provider_and_wait(provider)
    client = api.get_client()
    assert provider.watcher is config_watch.get_runtime().watcher

    details = client.get_boolean_details("new-user-onboarding", False)
    assert (details.value, details.reason, details.error_code) == (True, Reason.STATIC, None)
    assert details.flag_metadata["revision"] == etcd.revision()
    assert details.flag_metadata["key"] == ONBOARDING
    # Unset: the schema's default for the family (false), whatever the caller's default.
    unset = client.get_boolean_details("dark-mode", True)
    assert (unset.value, unset.reason, unset.error_code) == (False, Reason.DEFAULT, None)
    # A bool schema key by its full path.
    assert client.get_boolean_value(MAINTENANCE_MODE, False) is True
    # Not a feature name at all.
    wrong = client.get_boolean_details("features/new-user-onboarding", True)
    assert (wrong.value, wrong.reason, wrong.error_code) == (True, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)


def test_integer_values_from_schema_keys_with_defaults_and_error_codes(etcd, make_watcher, openfeature):
    etcd.etcdctl("put", RATE_LIMIT, "250")
    etcd.etcdctl("put", ONBOARDING, "true")
    client = ready_client(make_watcher(etcd.endpoint))

    details = client.get_integer_details(RATE_LIMIT, 7)
    assert (details.value, details.reason, details.error_code) == (250, Reason.STATIC, None)
    assert details.flag_metadata["revision"] == etcd.revision()
    # A schema key unset in etcd: the schema default is the value in force.
    unset = client.get_integer_details(UPSTREAM_TIMEOUT_MS, 7)
    assert (unset.value, unset.reason, unset.error_code) == (5000, Reason.DEFAULT, None)
    for key in ("/config/services/api-gateway/no-such-key", THREADS):  # unknown; another service's key
        missing = client.get_integer_details(key, 7)
        assert (missing.value, missing.reason, missing.error_code) == (7, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)
    for resolve, key, default in ((client.get_integer_details, MAINTENANCE_MODE, 7),
                                  (client.get_integer_details, "new-user-onboarding", 7),
                                  (client.get_boolean_details, RATE_LIMIT, True),
                                  (client.get_float_details, RATE_LIMIT, 1.5),
                                  (client.get_object_details, RATE_LIMIT, {"a": 1})):
        mismatch = resolve(key, default)
        assert (mismatch.value, mismatch.error_code) == (default, ErrorCode.TYPE_MISMATCH), (key, mismatch)
    # A bad value is rejected by the schema; the last good value stays.
    etcd.etcdctl("put", RATE_LIMIT, "lots")
    etcd.etcdctl("put", FEATURES + "beta", "true")
    wait_until(lambda: client.get_boolean_value("beta", False), 10)
    assert client.get_integer_value(RATE_LIMIT, 7) == 250


def test_string_variants_from_experiments_by_the_shared_assignment(etcd, make_watcher, openfeature):
    etcd.etcdctl("put", EXPERIMENTS + "checkout", "control:50,treatment:50")
    watcher = make_watcher(etcd.endpoint)
    client = ready_client(watcher)

    seen = set()
    for i in range(40):
        identity = f"client-{i}"
        details = client.get_string_details("checkout", "none", EvaluationContext(targeting_key=identity))
        expected = config_watch.assign(watcher.store.current, "checkout", identity)
        assert (details.value, details.variant, details.reason) == (expected, expected, Reason.SPLIT)
        assert details.error_code is None and details.flag_metadata["revision"] == etcd.revision()
        seen.add(details.value)
    assert seen == {"control", "treatment"}

    no_key = client.get_string_details("checkout", "none")
    assert (no_key.value, no_key.error_code) == ("none", ErrorCode.TARGETING_KEY_MISSING)
    unknown = client.get_string_details("pricing", "none", EvaluationContext(targeting_key="client-1"))
    assert (unknown.value, unknown.error_code) == ("none", ErrorCode.FLAG_NOT_FOUND)
    # An experiment asked for as a boolean is another type, not an unset feature.
    assert client.get_boolean_details("checkout", True).error_code is ErrorCode.TYPE_MISMATCH
    # An enum schema key is a string flag by its full path.
    assert client.get_string_value(RATE_LIMIT_SCOPE, "x") == "cluster"


def test_every_resolution_reads_one_snapshot(etcd, etcd_client, make_watcher, openfeature):
    """Value and revision always belong together while revisions land concurrently."""
    value_at = {etcd_client.put(RATE_LIMIT, "1000", timeout=5): 1000}
    client = ready_client(make_watcher(etcd.endpoint))
    done = threading.Event()

    def writer():
        for i in range(300):
            value_at[etcd_client.put(RATE_LIMIT, str(i), timeout=5)] = i
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen = []
    while not done.is_set() or not seen:
        details = client.get_integer_details(RATE_LIMIT, -1)
        seen.append((details.flag_metadata["revision"], details.value))
    thread.join(10)
    assert len(seen) > 50 and len({revision for revision, _ in seen}) > 10
    assert [(r, v) for r, v in seen if value_at.get(r) != v] == []


# --- status and events ---------------------------------------------------------------


def test_not_ready_until_the_first_list_then_ready(proxy, make_watcher, events):
    proxy.cut()
    provider = EtcdProvider(make_watcher(proxy.endpoint), init_timeout=60)
    api.set_provider(provider)  # initialises in the background
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.NOT_READY
    details = client.get_boolean_details("new-user-onboarding", True)
    assert (details.value, details.error_code) == (True, ErrorCode.PROVIDER_NOT_READY)
    proxy.heal()
    wait_until(lambda: client.get_provider_status() is ProviderStatus.READY, 20, message="READY after the list")
    wait_until(lambda: events.kinds() == [ProviderEvent.PROVIDER_READY], 5)
    assert client.get_boolean_details("new-user-onboarding", True).value is False


def test_init_timeout_reports_error_then_ready_when_etcd_answers(proxy, make_watcher, events):
    proxy.cut()
    with pytest.raises(ProviderNotReadyError):
        api.set_provider_and_wait(EtcdProvider(make_watcher(proxy.endpoint), init_timeout=0.3))
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.ERROR
    # Evaluated by the provider in ERROR: the caller's default, said to be not ready.
    details = client.get_integer_details(RATE_LIMIT, 3)
    assert (details.value, details.error_code) == (3, ErrorCode.PROVIDER_NOT_READY)
    proxy.heal()
    wait_until(lambda: client.get_provider_status() is ProviderStatus.READY, 20)
    wait_until(lambda: events.kinds() == [ProviderEvent.PROVIDER_ERROR, ProviderEvent.PROVIDER_READY], 5)
    assert events.of(ProviderEvent.PROVIDER_ERROR)[0].error_code is ErrorCode.PROVIDER_NOT_READY
    assert client.get_integer_value(RATE_LIMIT, 3) == 100


def test_stale_when_etcd_is_cut_and_ready_again_when_it_returns(etcd, proxy, make_watcher, events):
    etcd.etcdctl("put", RATE_LIMIT, "77")
    # The bound is fast_settings' 2 s: shorter ones flap on a loaded machine.
    watcher = make_watcher(proxy.endpoint, CONFIG_CHECK_TIMEOUT_SECONDS=0.2)
    client = ready_client(watcher)
    proxy.cut()
    wait_until(lambda: client.get_provider_status() is ProviderStatus.STALE, 10, message="STALE after the cut")
    # Handlers run on the SDK's executor, after the status is set.
    stale = wait_until(lambda: events.of(ProviderEvent.PROVIDER_STALE), 5)
    assert len(stale) == 1 and stale[0].metadata["staleness_seconds"] > 2
    # The last good value is still served, marked as possibly out of date.
    details = client.get_integer_details(RATE_LIMIT, 3)
    assert (details.value, details.reason, details.error_code) == (77, Reason.STALE, None)
    proxy.heal()
    wait_until(lambda: client.get_provider_status() is ProviderStatus.READY, 20, message="READY after heal")
    assert client.get_integer_details(RATE_LIMIT, 3).reason == Reason.STATIC
    wait_until(lambda: events.kinds()[-1] is ProviderEvent.PROVIDER_READY, 5)
    assert events.kinds() == [ProviderEvent.PROVIDER_READY, ProviderEvent.PROVIDER_STALE,
                              ProviderEvent.PROVIDER_READY]


def test_change_event_names_the_flags_each_revision_changed(etcd, etcd_client, make_watcher, events):
    etcd.etcdctl("put", EXPERIMENTS + "checkout", "control:90,treatment:10")
    client = ready_client(make_watcher(etcd.endpoint))
    changes = lambda: events.of(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)  # noqa: E731

    etcd.etcdctl("put", ONBOARDING, "true")
    wait_until(lambda: len(changes()) == 1, 10, message="change event for the feature")
    assert changes()[0].flags_changed == ["new-user-onboarding"]
    assert changes()[0].metadata["revision"] == etcd.revision()
    assert client.get_boolean_value("new-user-onboarding", False) is True

    # One transaction over two keys: one event naming both.
    revision = etcd_client.put_many({RATE_LIMIT: "5", MAINTENANCE_MODE: "true"}, timeout=5)
    wait_until(lambda: len(changes()) == 2, 10)
    # The burst follows the rate while unset, so it changed too.
    assert changes()[1].flags_changed == sorted([MAINTENANCE_MODE, RATE_LIMIT, RATE_LIMIT_BURST])
    assert changes()[1].metadata["revision"] == revision

    # A rejected value changes no flag; an experiment's new split and a deleted feature do.
    etcd.etcdctl("put", RATE_LIMIT, "many")
    etcd_client.put_many({EXPERIMENTS + "checkout": "control:50,treatment:50", ONBOARDING: None}, timeout=5)
    wait_until(lambda: len(changes()) >= 3, 10)
    assert [c.flags_changed for c in changes()[2:]] == [["checkout", "new-user-onboarding"]]
    # Setting an unset feature to false changes nothing a caller could see.
    etcd.etcdctl("put", FEATURES + "dark-mode", "false")
    etcd.etcdctl("put", FEATURES + "beta", "true")
    wait_until(lambda: len(changes()) >= 4, 10)
    assert [c.flags_changed for c in changes()[3:]] == [["beta"]]


@pytest.fixture
def auth_etcd(tmp_path):
    """etcd with auth on: user `reader` (password `first`) may read /config/."""
    server = EtcdServer(data_dir=str(tmp_path / "etcd-data"), log_path=str(tmp_path / "etcd.log"))
    server.start()
    try:
        for args in (("user", "add", "root", "--new-user-password=root-secret"),
                     ("role", "add", "config-reader"),
                     ("role", "grant-permission", "config-reader", "read", "/config/", "--prefix=true"),
                     ("user", "add", "reader", "--new-user-password=first"),
                     ("user", "grant-role", "reader", "config-reader"),
                     ("put", RATE_LIMIT, "42"),
                     ("auth", "enable")):
            server.etcdctl(*args)
        yield server
    finally:
        server.close()


def set_reader_password(server: EtcdServer, password: str) -> None:
    server.etcdctl("--user=root:root-secret", "user", "passwd", "reader", "--interactive=false", input=password)


def test_error_on_refused_credentials_and_ready_once_they_are_accepted(auth_etcd, make_watcher, events):
    # Refused credentials are retried at a slow fixed pace (30 s by default): short here.
    watcher = make_watcher(auth_etcd.endpoint, backoff=Backoff(permanent_delay=0.5),
                           ETCD_USERNAME="reader", ETCD_PASSWORD="second")
    started = time.monotonic()
    with pytest.raises(GeneralError, match="AuthError"):
        api.set_provider_and_wait(EtcdProvider(watcher, init_timeout=30))
    # A permanent error ends the wait at once, not at the init timeout.
    assert time.monotonic() - started < 15
    client = api.get_client()
    assert client.get_provider_status() is ProviderStatus.ERROR
    wait_until(lambda: events.kinds() == [ProviderEvent.PROVIDER_ERROR], 5)
    assert "invalid user ID or password" in events.of(ProviderEvent.PROVIDER_ERROR)[0].message
    assert client.get_integer_details(RATE_LIMIT, 3).error_code is ErrorCode.PROVIDER_NOT_READY
    # Fixed on the etcd side: the watcher's next try gets in, and the provider is READY.
    set_reader_password(auth_etcd, "second")
    wait_until(lambda: client.get_provider_status() is ProviderStatus.READY, 20, message="READY once accepted")
    assert client.get_integer_value(RATE_LIMIT, 3) == 42


def test_error_when_credentials_are_refused_after_ready(auth_etcd, make_watcher, events):
    with TcpProxy(auth_etcd.client_port) as proxy:
        watcher = make_watcher(proxy.endpoint, ETCD_USERNAME="reader", ETCD_PASSWORD="first")
        client = ready_client(watcher)
        set_reader_password(auth_etcd, "changed")
        proxy.cut()  # the next connection must sign in again, and is refused
        proxy.heal()
        wait_until(lambda: client.get_provider_status() is ProviderStatus.ERROR, 20, message="ERROR after refusal")
        error = wait_until(lambda: events.of(ProviderEvent.PROVIDER_ERROR), 5)
        assert len(error) == 1 and "AuthError" in error[0].message and error[0].error_code is ErrorCode.GENERAL
        # The last good values stay in force.
        assert client.get_integer_value(RATE_LIMIT, 3) == 42


def test_shutdown_stops_the_monitor_and_leaves_the_watcher_running(etcd, make_watcher, openfeature):
    watcher = make_watcher(etcd.endpoint)
    ready_client(watcher)
    assert any(t.name == "openfeature-etcd" for t in threading.enumerate())
    api.shutdown()
    assert not any(t.name == "openfeature-etcd" for t in threading.enumerate())
    assert watcher.alive


def test_readme_example_runs(etcd, openfeature, monkeypatch):
    etcd.etcdctl("put", ONBOARDING, "true")
    etcd.etcdctl("put", EXPERIMENTS + "checkout", "control:50,treatment:50")
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    readme = open(os.path.join(ROOT, "README.md")).read().split("## OpenFeature provider", 1)[1]
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {"client_id": "client-7"}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["flags"].get_boolean_value("new-user-onboarding", False) is True
    assert namespace["limit"] == 100
    assert namespace["arm"] == config_watch.assign(config_watch.snapshot(), "checkout", "client-7")


# --- the dependency stays optional ---------------------------------------------------


def test_importing_config_watch_does_not_import_the_sdk():
    code = "import sys, config_watch, main; assert 'openfeature' not in sys.modules, 'imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_provider_without_the_sdk_says_what_to_install():
    code = ("import sys; sys.modules['openfeature'] = None\n"
            "try:\n    import config_watch.openfeature\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "pip install openfeature-sdk" in out.stdout, out.stdout + out.stderr
