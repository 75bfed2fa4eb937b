"""The operator's tool against a real etcd: the audit trail, undo, the --create rule,
marks on rejected values, and its one-line errors (each leaving etcd unwritten).

The CLI runs in process here (`main(argv)`), for speed; tests/e2e runs it as the
operator does, as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
from typing import NamedTuple

import pytest

from config_watch import FEATURES, MAINTENANCE_MODE, RATE_LIMIT, SCHEMA, THREADS, Settings
from config_watch import _audit
from config_watch._cli import main
from config_watch._etcd import EtcdClient

FLAG = FEATURES + "new-user-onboarding"


class Result(NamedTuple):
    status: int
    out: str
    err: str


@pytest.fixture
def cli(etcd, tmp_path, monkeypatch, capsys):
    """Run the tool in process against the test etcd, from a directory with no .local/env."""
    monkeypatch.chdir(tmp_path)
    os.environ["ETCD_ENDPOINTS"] = etcd.endpoint
    os.environ.pop("CONFIG_REQUIRE_REASON", None)

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse's own exits
            status = exc.code
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return run


@pytest.fixture
def client(etcd):
    c = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}))
    yield c
    c.close()


def revision(client: EtcdClient) -> int:
    rev, _ = client.list_range(b"/", b"\0", 3)
    return rev


def value(client: EtcdClient, key: str):
    _, kvs = client.list_range(key.encode(), key.encode() + b"\0", 3)
    return kvs[0] if kvs else None


def assert_refused(result: Result, status: int, *fragments: str) -> None:
    """One line on stderr, naming what failed; no traceback; the given exit status."""
    assert result.status == status, result
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


# --- the audit trail ------------------------------------------------------------------

def test_set_writes_its_audit_entry_in_the_same_transaction(cli, client):
    result = cli("set", RATE_LIMIT, "500", MAINTENANCE_MODE, "true", "--reason", "launch", "--actor", "alice")
    assert result.status == 0, result
    [entry] = _audit.entries(client, 3)
    rate, maintenance = value(client, RATE_LIMIT), value(client, MAINTENANCE_MODE)
    # One revision for both keys and the entry: etcd committed them together.
    assert entry.revision == rate.mod_revision == maintenance.mod_revision
    assert f"written at revision {entry.revision}" in result.out
    assert entry.key.startswith("/audit/") and (entry.actor, entry.reason, entry.command) == ("alice", "launch", "set")
    assert {(c.key, c.old, c.new, c.old_revision) for c in entry.changes} == {
        (RATE_LIMIT, None, "500", 0), (MAINTENANCE_MODE, None, "true", 0)}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry.time)

    assert cli("set", RATE_LIMIT, "600").status == 0
    newest = _audit.entries(client, 3, limit=1)[0]
    assert [(c.old, c.new, c.old_revision) for c in newest.changes] == [("500", "600", entry.revision)]
    assert newest.actor  # the OS user by default


def test_a_concurrent_change_is_never_recorded_as_the_wrong_old_value(client, etcd):
    etcd.etcdctl("put", RATE_LIMIT, "100")
    calls = []

    def plan(current):
        calls.append(current[RATE_LIMIT].value)
        if len(calls) == 1:  # another operator writes between the tool's read and its commit
            etcd.etcdctl("put", RATE_LIMIT, "150")
        return {RATE_LIMIT: "200"}

    entry = _audit.write(client, [RATE_LIMIT], plan, actor="t", reason=None, command="set", timeout=3)
    assert calls == [b"100", b"150"]  # the first commit was refused by its compare, then planned again
    assert [(c.old, c.new) for c in entry.changes] == [("150", "200")]
    assert len(_audit.entries(client, 3)) == 1

    def busy(current):  # someone changes the key every time: the tool gives up, writing nothing
        etcd.etcdctl("put", RATE_LIMIT, str(int(current[RATE_LIMIT].value) + 1))
        return {RATE_LIMIT: "300"}

    with pytest.raises(_audit.ConcurrentChange, match="kept changing"):
        _audit.write(client, [RATE_LIMIT], busy, actor="t", reason=None, command="set", timeout=3)
    assert len(_audit.entries(client, 3)) == 1 and value(client, RATE_LIMIT).value != b"300"


def test_a_commit_cut_off_midway_is_reported_in_doubt_not_as_failed(client, proxy):
    through_proxy = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": proxy.endpoint,
                                                  "ETCD_REQUEST_TIMEOUT_SECONDS": "0.5"}))

    def plan(current):
        proxy.stall()  # the connection goes silent as the transaction is sent
        return {RATE_LIMIT: "200"}

    before = revision(client)
    try:
        with pytest.raises(_audit.InDoubt, match="may have been applied: check with `python -m config_watch audit`"):
            _audit.write(through_proxy, [RATE_LIMIT], plan, actor="t", reason=None, command="set", timeout=0.5)
    finally:
        through_proxy.close()
    assert revision(client) == before


def test_audit_entries_survive_compaction_and_list_newest_first(cli, client, etcd):
    for limit in ("10", "20", "30"):
        assert cli("set", RATE_LIMIT, limit, "--reason", f"to {limit}").status == 0
    assert cli("delete", RATE_LIMIT, "--reason", "back to default").status == 0
    etcd.etcdctl("compact", str(revision(client)), "--physical")
    entries = _audit.entries(client, 3)
    assert [e.reason for e in entries] == ["back to default", "to 30", "to 20", "to 10"]
    assert [e.revision for e in entries] == sorted((e.revision for e in entries), reverse=True)

    listed = cli("audit", "--limit", "2")
    assert listed.status == 0, listed
    heads = [line for line in listed.out.splitlines() if line.startswith("revision ")]
    assert len(heads) == 2
    assert "delete  reason: back to default" in heads[0] and "reason: to 30" in heads[1]
    assert f"{RATE_LIMIT}: 30 -> (unset)" in listed.out
    exported = [json.loads(line) for line in cli("audit", "--json").out.splitlines()]
    assert [e["revision"] for e in exported] == [e.revision for e in entries]
    assert exported[0]["changes"] == [{"key": RATE_LIMIT, "old": "30", "new": None,
                                       "old_revision": entries[1].revision}]


def test_a_raw_put_shows_as_unaudited(cli, client, etcd):
    assert cli("set", RATE_LIMIT, "100").status == 0
    etcd.etcdctl("put", RATE_LIMIT, "250")
    raw = value(client, RATE_LIMIT).mod_revision
    etcd.etcdctl("put", THREADS, "8")
    listed = cli("audit", RATE_LIMIT).out
    assert f"revision {raw}  unaudited" in listed and f"{RATE_LIMIT} = 250" in listed
    assert THREADS not in listed  # the KEY filter
    under = cli("audit", "/config/services/").out  # a prefix
    assert f"{RATE_LIMIT} = 250" in under and f"{THREADS} = 8" in under

    # Still found once the tool writes over it: the entry records the old mod revision.
    assert cli("set", RATE_LIMIT, "300").status == 0
    listed = cli("audit").out
    assert f"revision {raw}  unaudited" in listed and f"{RATE_LIMIT}: 250 -> 300" in listed
    assert f"{THREADS} = 8" in listed


def test_undo_restores_every_key_of_a_change_in_one_transaction(cli, client):
    assert cli("set", RATE_LIMIT, "100", FLAG, "true", "--create").status == 0
    change = cli("set", RATE_LIMIT, "5", FLAG, "false", MAINTENANCE_MODE, "true", "--reason", "incident")
    at = _audit.entries(client, 3, limit=1)[0].revision
    assert change.status == 0

    undo = cli("rollback", str(at), "--reason", "incident over")
    assert undo.status == 0, undo
    rate, flag = value(client, RATE_LIMIT), value(client, FLAG)
    assert (rate.value, flag.value) == (b"100", b"true")
    assert value(client, MAINTENANCE_MODE) is None  # it was unset before the change
    entry = _audit.entries(client, 3, limit=1)[0]
    assert entry.revision == rate.mod_revision == flag.mod_revision
    assert (entry.command, entry.undoes, entry.reason) == ("undo", at, "incident over")
    assert "undo of revision" in cli("audit", "--limit", "1").out


def test_undo_refuses_when_a_key_changed_since_unless_forced(cli, client):
    assert cli("set", RATE_LIMIT, "100").status == 0
    assert cli("set", RATE_LIMIT, "200").status == 0
    first = _audit.entries(client, 3, limit=1)[0].revision
    assert cli("set", RATE_LIMIT, "300").status == 0
    before = revision(client)
    result = cli("rollback", str(first))
    assert_refused(result, 2, RATE_LIMIT, "changed again", "--force")
    assert revision(client) == before
    assert cli("rollback", str(first), "--force").status == 0
    assert value(client, RATE_LIMIT).value == b"100"


def test_a_reason_is_required_when_configured(cli, client):
    os.environ["CONFIG_REQUIRE_REASON"] = "true"
    before = revision(client)
    for args in (("set", RATE_LIMIT, "7"), ("delete", RATE_LIMIT), ("rollback", RATE_LIMIT, "1")):
        assert_refused(cli(*args), 2, "reason is required", "--reason")
    assert revision(client) == before
    assert cli("set", RATE_LIMIT, "7", "--reason", "load test").status == 0
    assert _audit.entries(client, 3)[0].reason == "load test"


# --- no typo reaches etcd -------------------------------------------------------------------

# A value each family type accepts, for families whose spec has no default.
EXAMPLE_VALUES = {"bool": "true", "int": "1", "split": "control:90,treatment:10", "rule": "prefix=/v1,rate=60"}


@pytest.mark.parametrize("family", [s for s in SCHEMA.specs if s.family and s.written_by == "operator"],
                         ids=lambda s: s.path)
def test_a_new_name_in_an_open_family_needs_create(cli, client, family):
    good = family.format(family.default) if family.default is not None else EXAMPLE_VALUES[family.type]
    assert cli("set", family.path + "checkout-redesign", good, "--create").status == 0
    before = revision(client)
    result = cli("set", family.path + "checkout-redesgin", good)
    assert_refused(result, 2, "does not exist yet", "closest existing: checkout-redesign", "--create")
    assert revision(client) == before and value(client, family.path + "checkout-redesgin") is None
    assert cli("set", family.path + "checkout-redesign", good).status == 0  # existing: no --create needed


def test_keys_the_services_write_are_refused(cli, client):
    before = revision(client)
    member = next(s for s in SCHEMA.specs if s.written_by == "service").path + "gateway-1"
    assert_refused(cli("set", member, "{}", "--create"), 2, "written by the services themselves", "nothing written")
    assert revision(client) == before and value(client, member) is None


def test_unknown_keys_and_bad_values_are_refused_before_etcd(cli, client):
    before = revision(client)
    assert_refused(cli("set", "/config/global/maintenance", "true"), 2, "not in the schema",
                   f"did you mean {MAINTENANCE_MODE}")
    assert_refused(cli("set", RATE_LIMIT, "lots"), 2, "rejected: expected an integer")
    assert_refused(cli("set", RATE_LIMIT), 2, "KEY VALUE pairs")
    assert_refused(cli("delete", RATE_LIMIT), 2, "not set", "nothing to delete")
    assert_refused(cli("rollback", RATE_LIMIT, "x"), 2, "not a revision")
    assert_refused(cli("no-such-command"), 2, "invalid choice")
    assert revision(client) == before


# --- reading ------------------------------------------------------------------------------------

def test_get_marks_values_the_services_reject(cli, etcd):
    etcd.etcdctl("put", "--", RATE_LIMIT, "-3")
    etcd.etcdctl("put", MAINTENANCE_MODE, "true")
    etcd.etcdctl("put", "/config/services/api-gateway/rate-limitt", "5")
    lines = {line.split("\t")[0]: line for line in cli("get").out.splitlines()}
    assert lines[RATE_LIMIT].endswith("# rejected: below minimum 0")
    assert lines["/config/services/api-gateway/rate-limitt"].endswith("# rejected: not in the schema")
    assert "rejected" not in lines[MAINTENANCE_MODE]
    assert f"# etcd {etcd.endpoint} (from ETCD_ENDPOINTS)" in cli("get").out


def test_history_shows_the_current_value_with_its_revision(cli, client):
    for n in ("1", "2", "3"):
        assert cli("set", RATE_LIMIT, n).status == 0
    current = value(client, RATE_LIMIT).mod_revision
    lines = cli("history", RATE_LIMIT).out.splitlines()
    assert lines[1] == f"{current}\t3\t(current)"
    assert [line.split("\t")[1] for line in lines[2:4]] == ["2", "1"]
    assert lines[4].startswith("# unset before revision")

    assert cli("delete", RATE_LIMIT).status == 0
    deleted = revision(client)
    lines = cli("history", RATE_LIMIT).out.splitlines()
    assert lines[1] == f"{deleted}\t(deleted)\t(current: its default is in force)"
    assert lines[2] == f"{current}\t3"


# --- revisions etcd does not have -----------------------------------------------------------

def test_rollback_to_a_revision_etcd_does_not_have_says_which_it_has(cli, client, etcd):
    for n in ("1", "2", "3"):
        assert cli("set", RATE_LIMIT, n).status == 0
    current = revision(client)
    etcd.etcdctl("compact", str(current - 1))
    future = cli("rollback", RATE_LIMIT, str(current + 50))
    assert_refused(future, 2, f"revision {current + 50} does not exist yet", f"etcd has revisions {current - 1} to {current}")
    compacted = cli("rollback", RATE_LIMIT, "2")
    assert_refused(compacted, 2, "revision 2 was compacted", f"etcd has revisions {current - 1} to {current}",
                   "audit trail")
    assert_refused(cli("rollback", str(current + 50)), 2, "does not exist yet")
    assert_refused(cli("rollback", "1"), 2, "no audit entry at revision 1")
    assert revision(client) == current


# --- where etcd is, and reaching it -----------------------------------------------------------

def test_local_env_is_read_only_when_etcd_endpoints_is_unset(cli, etcd, tmp_path):
    from tools.etcd_server import free_port

    (tmp_path / ".local").mkdir()
    env_file = tmp_path / ".local" / "env"
    env_file.write_text(f"# written by make run\nETCD_ENDPOINTS={etcd.endpoint}\n")
    del os.environ["ETCD_ENDPOINTS"]
    result = cli("get")
    assert result.status == 0 and f"# etcd {etcd.endpoint} (from {env_file}" in result.out
    (tmp_path / "sub").mkdir()
    os.chdir(tmp_path / "sub")  # found from a subdirectory too
    assert cli("endpoint").out.strip() == etcd.endpoint

    env_file.write_text(f"ETCD_ENDPOINTS=127.0.0.1:{free_port()}\n")
    os.environ["ETCD_ENDPOINTS"] = etcd.endpoint  # the environment wins over the file
    assert cli("get").status == 0


def test_unreachable_etcd_and_bad_settings_are_one_line(cli, tmp_path):
    from tools.etcd_server import free_port

    port = free_port()
    os.environ["ETCD_ENDPOINTS"] = f"127.0.0.1:{port}"
    assert_refused(cli("get"), 1, f"cannot reach etcd at 127.0.0.1:{port}", "make run")
    (tmp_path / ".local").mkdir()
    (tmp_path / ".local" / "env").write_text(f"ETCD_ENDPOINTS=127.0.0.1:{port}\n")
    del os.environ["ETCD_ENDPOINTS"]
    assert_refused(cli("set", RATE_LIMIT, "5"), 1, "cannot reach etcd", ".local/env, written by make run")
    os.environ["ETCD_ENDPOINTS"] = "not-an-endpoint"
    assert_refused(cli("get"), 2, "bad setting: ETCD_ENDPOINTS")
    os.environ["ETCD_ENDPOINTS"] = f"127.0.0.1:{port}"
    os.environ["ETCD_REQUEST_TIMEOUT_SECONDS"] = "soon"
    assert_refused(cli("get"), 2, "bad setting: ETCD_REQUEST_TIMEOUT_SECONDS")
    del os.environ["ETCD_REQUEST_TIMEOUT_SECONDS"]
    os.environ["CONFIG_REQUIRE_REASON"] = "perhaps"
    assert_refused(cli("set", RATE_LIMIT, "5"), 2, "CONFIG_REQUIRE_REASON")


def test_debug_shows_the_traceback(cli):
    os.environ["ETCD_ENDPOINTS"] = "not-an-endpoint"
    result = cli("--debug", "get")
    assert result.status == 2 and "Traceback" in result.err and result.err.rstrip().splitlines()[-1].startswith("error:")


@pytest.fixture
def auth_etcd(etcd):
    """Auth on: `operator` may write /config/ and /audit/, `reader` may only read /config/."""
    for args in (
        ("user", "add", "root", "--new-user-password=root-pw"),
        ("role", "add", "config-reader"),
        ("role", "grant-permission", "config-reader", "read", "/config/", "--prefix=true"),
        ("role", "add", "config-operator"),
        ("role", "grant-permission", "config-operator", "readwrite", "/config/", "--prefix=true"),
        ("role", "grant-permission", "config-operator", "readwrite", "/audit/", "--prefix=true"),
        ("user", "add", "reader", "--new-user-password=reader-pw"),
        ("user", "grant-role", "reader", "config-reader"),
        ("user", "add", "operator", "--new-user-password=operator-pw"),
        ("user", "grant-role", "operator", "config-operator"),
        ("auth", "enable"),
    ):
        etcd.etcdctl(*args)
    return etcd


def test_auth_refused_and_permission_denied_write_nothing(cli, auth_etcd):
    root = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": auth_etcd.endpoint, "ETCD_USERNAME": "root",
                                         "ETCD_PASSWORD": "root-pw"}))
    try:
        before = revision(root)
        assert_refused(cli("get"), 1, "etcd requires a user", "ETCD_USERNAME")
        os.environ.update(ETCD_USERNAME="operator", ETCD_PASSWORD="wrong")
        assert_refused(cli("set", RATE_LIMIT, "5"), 1, "etcd refused user 'operator'", "ETCD_PASSWORD")
        os.environ.update(ETCD_USERNAME="reader", ETCD_PASSWORD="reader-pw")
        assert cli("get").status == 0
        assert_refused(cli("set", RATE_LIMIT, "5"), 1, "etcd denied permission to user 'reader'",
                       "/config/ and /audit/", "nothing written")
        assert revision(root) == before

        os.environ.update(ETCD_USERNAME="operator", ETCD_PASSWORD="operator-pw")
        result = cli("set", RATE_LIMIT, "5", "--reason", "with auth")
        assert result.status == 0, result
        [entry] = _audit.entries(root, 3)
        assert entry.etcd_user == "operator" and entry.revision == revision(root)
    finally:
        root.close()


def test_make_reset_clears_the_local_etcd_data_only_and_never_under_a_running_etcd(tmp_path, monkeypatch, capsys):
    from tools import reset_local
    from tools.etcd_server import EtcdServer

    local = tmp_path / ".local"
    (local / "etcd-data").mkdir(parents=True)
    keep = [local / "env", tmp_path / ".venv" / "stamp"]
    for path in keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("kept")
    monkeypatch.setattr(reset_local, "ROOT", tmp_path)
    monkeypatch.setattr(reset_local, "DATA_DIR", local / "etcd-data")
    monkeypatch.setattr(reset_local, "LOG", local / "etcd.log")
    server = EtcdServer(data_dir=str(local / "etcd-data"), log_path=str(local / "etcd.log"))
    server.start()
    try:
        server.etcdctl("put", MAINTENANCE_MODE, "true")
        assert reset_local.main() == 1
        assert "stop it" in capsys.readouterr().err
        assert (local / "etcd-data" / "member").is_dir()
    finally:
        server.stop()
    assert reset_local.main() == 0
    assert not (local / "etcd-data").exists() and not (local / "etcd.log").exists()
    assert all(path.read_text() == "kept" for path in keep)
