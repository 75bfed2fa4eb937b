"""The operator's tool: `python -m config_watch <command>`.

    schema                           print the key schema as JSON (the cross-language contract)
    endpoint                         print the etcd endpoint(s) the tool uses
    get [PREFIX]                     keys under /config/ with their revision; rejected values marked
    set KEY VALUE [KEY VALUE ...]    validate, then write all in one transaction, audited
    delete KEY [KEY ...]             remove keys (they fall back to their defaults), audited
    history KEY [--limit N]          the key's current and past values still in etcd's history
    rollback KEY REVISION            put back the value KEY had at REVISION, audited
    rollback REVISION                undo the audited change made at REVISION (every key it touched)
    audit [KEY] [--limit N] [--json] the audit trail, newest first, unaudited changes marked (KEY/: a prefix)
    seed                             write every missing key with its default, audited
    status URL [--id-token]          GET URL/_status and print it

etcd is reached with the same ETCD_* settings as the function; when ETCD_ENDPOINTS is
unset, the endpoint `make run` wrote to .local/env is used. Exit status: 0 done,
1 failed (etcd, HTTP, a concurrent change), 2 refused (bad input, usage or settings).
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import json
import sys
import traceback

from . import _audit
from ._cli_etcd import CliError, Etcd, flag, refused, short
from ._cli_status import cmd_status
from ._errors import AuthError, Compacted, ConfigurationError, EtcdError, Unavailable
from ._schema import ROOT, SCHEMA, InvalidValue, KeySpec
from ._settings import SettingsError
# --- schema checks ------------------------------------------------------------------

def _spec(key: str) -> KeySpec:
    spec = SCHEMA.spec_for(key)
    if spec is None:
        known = [s.path + ("<name>" if s.family else "") for s in SCHEMA.specs]
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise refused(f"{key} is not in the schema; {hint}(`python -m config_watch schema` lists the keys); nothing written")
    if spec.written_by != "operator":
        raise refused(f"{key} is written by the services themselves ({spec.used_by}, under a lease), "
                      "not by operators; nothing written")
    return spec


def _canonical(spec: KeySpec, key: str, value: str) -> str:
    try:
        return spec.format(spec.parse(value.encode()))
    except InvalidValue as exc:
        raise refused(f"{key}={value!r} rejected: {exc}; nothing written") from None


def rejection(key: str, raw: bytes) -> str | None:
    """Why the services reject `raw` at `key`, or None if they accept it."""
    spec = SCHEMA.spec_for(key)
    if spec is None:
        return "not in the schema"
    try:
        spec.parse(raw)
    except InvalidValue as exc:
        return str(exc)
    return None


def _names_in_family(etcd: Etcd, spec: KeySpec) -> list[str]:
    _, kvs = etcd.under(spec.path)
    return [kv.key[len(spec.path):] for kv in kvs if spec.matches(kv.key)]


def _refuse_new_name(etcd: Etcd, spec: KeySpec, key: str) -> CliError:
    name = key[len(spec.path):]
    names = _names_in_family(etcd, spec)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        known = f"closest existing: {', '.join(close)}"
    elif names:
        known = f"existing: {', '.join(sorted(names)[:5])}{' …' if len(names) > 5 else ''}"
    else:
        known = f"none exists yet under {spec.path}"
    return refused(f"{key} does not exist yet ({known}); pass --create to add a new name; nothing written")


# --- the audit context of a change ------------------------------------------------------

def _who(args) -> dict:
    actor = args.actor
    if not actor:
        try:
            actor = getpass.getuser()
        except (OSError, KeyError):
            actor = "unknown"
    reason = (args.reason or "").strip() or None
    if reason is None and flag("CONFIG_REQUIRE_REASON"):
        raise refused("a reason is required (CONFIG_REQUIRE_REASON=true): add --reason '...'; nothing written")
    return {"actor": actor, "reason": reason}


def _write(etcd: Etcd, keys, plan, args, command: str, **extra):
    who = _who(args)
    return _audit.write(etcd.client, keys, plan, command=command, timeout=etcd.timeout,
                        etcd_user=etcd.settings.username, **who, **extra)


def _show_value(value: str | None) -> str:
    return "(unset)" if value is None else value


def _report(entry, what: str) -> None:
    changes = ", ".join(f"{c.key}: {_show_value(c.old)} -> {_show_value(c.new)}" for c in entry.changes)
    print(f"{what} at revision {entry.revision}: {changes} (audit entry {entry.key})")


# --- commands -----------------------------------------------------------------------

def cmd_schema(_args, _etcd) -> int:
    print(json.dumps(SCHEMA.to_json(), indent=2))
    return 0


def cmd_endpoint(_args, etcd: Etcd) -> int:
    print(etcd.endpoints)
    print(f"# from {etcd.source}", file=sys.stderr)
    return 0


def cmd_get(args, etcd: Etcd) -> int:
    prefix = args.prefix or ROOT
    revision, kvs = etcd.under(prefix)
    print(f"# etcd {etcd.endpoints} (from {etcd.source}), revision {revision}")
    for kv in kvs:
        line = f"{kv.key}\t{kv.value.decode('utf-8', 'replace')}\t(mod_revision {kv.mod_revision})"
        reason = rejection(kv.key, kv.value) if kv.key.startswith(ROOT) else None
        if reason:
            line += f"\t# rejected: {reason}"
        print(line)
    present = {kv.key for kv in kvs}
    for spec in SCHEMA.specs:
        if not spec.family and spec.path.startswith(prefix) and spec.path not in present:
            default = f"= {spec.default_from.rsplit('/', 1)[1]}" if spec.default_from else spec.format(spec.default)
            print(f"# {spec.path} unset: default {default} in force")
    return 0


def cmd_set(args, etcd: Etcd) -> int:
    if len(args.pairs) % 2:
        raise refused("set takes KEY VALUE pairs (an odd number of words was given); nothing written")
    wanted = {}
    specs = {}
    for key, value in zip(args.pairs[::2], args.pairs[1::2]):
        if key in specs:
            raise refused(f"{key} is given twice; nothing written")
        specs[key] = _spec(key)
        wanted[key] = _canonical(specs[key], key, value)
    who = _who(args)  # refuse a missing reason before touching etcd

    def plan(current):
        for key, kv in current.items():
            if kv is None and specs[key].family and not args.create:
                raise _refuse_new_name(etcd, specs[key], key)
        return {k: v for k, v in wanted.items() if current[k] is None or current[k].value.decode("utf-8", "replace") != v}

    entry = _audit.write(etcd.client, wanted, plan, command="set", timeout=etcd.timeout,
                         etcd_user=etcd.settings.username, **who)
    if entry is None:
        print("nothing to change: " + ", ".join(f"{k}={v}" for k, v in wanted.items()) + " already set")
    else:
        _report(entry, "written")
    return 0


def cmd_delete(args, etcd: Etcd) -> int:
    for key in args.keys:
        if not key.startswith(ROOT):
            raise refused(f"{key} is outside {ROOT}: the tool changes configuration keys only; nothing written")

    def plan(current):
        for key, kv in current.items():
            if kv is None:
                parent = key.rsplit("/", 1)[0] + "/"
                _, kvs = etcd.under(parent)
                close = difflib.get_close_matches(key, [kv.key for kv in kvs], n=3, cutoff=0.6)
                hint = f"; closest existing: {', '.join(close)}" if close else ""
                raise refused(f"{key} is not set, so there is nothing to delete{hint}; nothing written")
        return {key: None for key in current}

    entry = _write(etcd, args.keys, plan, args, "delete")
    _report(entry, "deleted")
    return 0


def cmd_history(args, etcd: Etcd) -> int:
    if args.limit < 1:
        raise refused("--limit takes a positive number")
    key = args.key
    current = etcd.get(key)
    revision = etcd.revision()
    from ._etcd import oldest_revision

    oldest = oldest_revision(etcd.client, ROOT.encode(), revision, etcd.timeout)
    print(f"# {key} at revision {revision}; etcd keeps history from revision {oldest}")
    if current is None:
        # An audited delete says where the key's history ends; walk back from there.
        deleted = next((e for e in _audit.entries(etcd.client, etcd.timeout, key=key)
                        if any(c.key == key and c.new is None for c in e.changes)), None)
        if deleted is None or deleted.revision <= oldest:
            print("# unset now (its default is in force)")
            return 0
        print(f"{deleted.revision}\t(deleted)\t(current: its default is in force)")
        seen = deleted.revision
    else:
        print(_history_line(key, current.mod_revision, current.value, "(current)"))
        seen = current.mod_revision
    for _ in range(args.limit):
        if seen <= 1:
            break
        try:
            old = etcd.client.get_at(key, seen - 1, etcd.timeout)
        except Compacted:
            print(f"# older values compacted; the audit trail keeps them: python -m config_watch audit {key}")
            break
        if old is None:
            print(f"# unset before revision {seen}")
            break
        print(_history_line(key, old.mod_revision, old.value))
        seen = old.mod_revision
    else:
        if seen > 1:
            print(f"# older values not shown: --limit {args.limit * 2}")
    return 0


def _history_line(key: str, revision: int, raw: bytes, note: str = "") -> str:
    line = f"{revision}\t{raw.decode('utf-8', 'replace')}"
    if note:
        line += f"\t{note}"
    reason = rejection(key, raw)
    return line + (f"\t# rejected: {reason}" if reason else "")


def _revision_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise refused(f"{text!r} is not a revision (a positive integer, as `history` and `audit` show); nothing written")
    return int(text)


def _missing_revision(etcd: Etcd, revision: int, key: str | None) -> CliError:
    """Say which revisions etcd has, for a revision it does not."""
    from ._etcd import oldest_revision

    current = etcd.revision()
    oldest = oldest_revision(etcd.client, ROOT.encode(), current, etcd.timeout)
    has = f"etcd has revisions {oldest} to {current}"
    if revision > current:
        return refused(f"revision {revision} does not exist yet: {has}; nothing written")
    where = f" {key}" if key else ""
    return refused(f"revision {revision} was compacted: {has}; older values are in the audit trail "
                   f"(python -m config_watch audit{where}); nothing written")


def cmd_rollback(args, etcd: Etcd) -> int:
    if len(args.target) == 1:
        return _undo(args, etcd, args.target[0])
    if len(args.target) != 2:
        raise refused("rollback takes KEY REVISION (one key) or REVISION (a whole audited change); nothing written")
    key, revision = args.target[0], _revision_arg(args.target[1])
    spec = _spec(key)
    _who(args)
    if revision > etcd.revision():
        raise _missing_revision(etcd, revision, key)
    try:
        old = etcd.client.get_at(key, revision, etcd.timeout)
    except Compacted:
        raise _missing_revision(etcd, revision, key) from None
    except EtcdError as exc:
        if "future revision" in str(exc):
            raise _missing_revision(etcd, revision, key) from None
        raise
    target = None if old is None else _canonical(spec, key, old.value.decode("utf-8", "replace"))

    def plan(current):
        now = current[key]
        if (now.value.decode("utf-8", "replace") if now else None) == target:
            return {}
        return {key: target}

    entry = _write(etcd, [key], plan, args, "rollback")
    if entry is None:
        print(f"nothing to change: {key} already has its value as at revision {revision} ({_show_value(target)})")
    else:
        _report(entry, f"{key} as at revision {revision} written")
    return 0


def _undo(args, etcd: Etcd, target: str) -> int:
    if target.startswith(_audit.AUDIT_PREFIX):
        kv = etcd.get(target)
        if kv is None:
            raise refused(f"no audit entry {target} (python -m config_watch audit lists them); nothing written")
        entry = _audit.decode(kv)
    else:
        revision = _revision_arg(target)
        entry = _audit.entry_at(etcd.client, revision, etcd.timeout)
        if entry is None:
            if revision > etcd.revision():
                raise _missing_revision(etcd, revision, None)
            raise refused(f"no audit entry at revision {revision}: it was not a change made with this tool "
                          "(python -m config_watch audit lists them; rollback KEY REVISION restores one key); nothing written")
    if not entry.changes:
        raise refused(f"audit entry {entry.key} records no change it could undo; nothing written")
    _who(args)
    restore = {}
    for change in entry.changes:
        restore[change.key] = None if change.old is None else _canonical(_spec(change.key), change.key, change.old)

    def plan(current):
        for key, kv in current.items():
            now = kv.mod_revision if kv else 0
            if now != entry.revision and not args.force:
                since = f"changed again at revision {now}" if now else "deleted again since"
                raise refused(f"{key} {since} after the change at revision {entry.revision}: undo the later change "
                              "first, or pass --force to restore anyway; nothing written")
        return {k: v for k, v in restore.items() if (current[k].value.decode("utf-8", "replace") if current[k] else None) != v}

    result = _write(etcd, restore, plan, args, "undo", undoes=entry.revision)
    if result is None:
        print(f"nothing to change: every key already has its value from before revision {entry.revision}")
    else:
        _report(result, f"change of revision {entry.revision} undone")
    return 0


def cmd_audit(args, etcd: Etcd) -> int:
    if args.limit is not None and args.limit < 1:
        raise refused("--limit takes a positive number")
    limit = args.limit or 0
    found = _audit.entries(etcd.client, etcd.timeout, key=args.key, limit=limit)
    missing = _audit.unaudited(etcd.client, etcd.timeout, found, key=args.key)
    items = sorted([*found, *missing], key=lambda item: item.revision, reverse=True)
    if limit:
        items = items[:limit]
    if args.json:
        for item in items:
            if isinstance(item, _audit.Unaudited):
                print(json.dumps({"revision": item.revision, "unaudited": True, "key": item.key, "value": item.value}))
            else:
                body = item._asdict()
                body["changes"] = [c._asdict() for c in item.changes]
                print(json.dumps(body))
        return 0
    if not items:
        print("no audit entries" + (f" for {args.key}" if args.key else ""))
    for item in items:
        if isinstance(item, _audit.Unaudited):
            print(f"revision {item.revision}  unaudited  (changed without this tool, e.g. etcdctl)")
            print(f"    {item.key} = {_show_value(item.value)}")
            continue
        reason = f"  reason: {item.reason}" if item.reason else ""
        undoes = f" of revision {item.undoes}" if item.undoes else ""
        print(f"revision {item.revision}  {item.time}  {item.actor}  {item.command}{undoes}{reason}")
        for c in item.changes:
            print(f"    {c.key}: {_show_value(c.old)} -> {_show_value(c.new)}")
    return 0


def cmd_seed(args, etcd: Etcd) -> int:
    defaults = {s.path: s.format(s.default) for s in SCHEMA.specs if not s.family and not s.default_from}
    args.reason = args.reason or "defaults for keys not set"

    def plan(current):
        return {k: v for k, v in defaults.items() if current[k] is None}

    entry = _write(etcd, defaults, plan, args, "seed")
    if entry is None:
        print("every key already set")
    else:
        _report(entry, "seeded")
    return 0


# --- errors and the entry point ---------------------------------------------------------

def explain(exc: BaseException, etcd: Etcd | None) -> tuple[str, int]:
    """One line naming what failed and what to do, and the exit status."""
    if isinstance(exc, CliError):
        return str(exc), exc.status
    if isinstance(exc, SettingsError):
        return f"bad setting: {exc}", 2
    if isinstance(exc, ConfigurationError):
        return f"{exc}: fix the path in that setting", 2
    user = etcd.settings.username if etcd else None
    if isinstance(exc, AuthError):
        text = short(exc)
        if "permission denied" in text:
            who = f"user {user!r}" if user else "this client"
            return (f"etcd denied permission to {who} ({text}): the operator tool needs a role that may read and "
                    f"write {ROOT} and {_audit.AUDIT_PREFIX} (config-operator); nothing written"), 1
        if "user name is empty" in text:
            return "etcd requires a user: set ETCD_USERNAME and ETCD_PASSWORD (or a client certificate)", 1
        return f"{text}; nothing written", 1
    if isinstance(exc, (_audit.ConcurrentChange, _audit.InDoubt)):
        return str(exc), 1
    if isinstance(exc, Unavailable):
        where = etcd.endpoints if etcd else "etcd"
        return f"etcd at {where} stopped answering ({short(exc)}): check it and try again", 1
    if isinstance(exc, EtcdError):
        return f"etcd refused the request: {short(exc)}", 1
    return f"unexpected {type(exc).__name__}: {short(exc)} (rerun with --debug for the traceback)", 1


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line as every other error is."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m config_watch", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    change = _Parser(add_help=False)
    change.add_argument("--reason", help="why (recorded in the audit entry; required when CONFIG_REQUIRE_REASON=true)")
    change.add_argument("--actor", help="who (recorded in the audit entry; default: the OS user)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name, fn, helptext, *parents):
        p = sub.add_parser(name, help=helptext, parents=[common, *parents])
        p.set_defaults(fn=fn, needs_etcd=fn not in (cmd_schema, cmd_status))
        return p

    command("schema", cmd_schema, "print the key schema as JSON")
    command("endpoint", cmd_endpoint, "print the etcd endpoint(s) the tool uses")
    command("get", cmd_get, "show keys with their revisions").add_argument("prefix", nargs="?")
    p = command("set", cmd_set, "validate and write KEY VALUE pairs in one transaction", change)
    p.add_argument("pairs", nargs="+", metavar="KEY VALUE")
    p.add_argument("--create", action="store_true", help="allow a new name in an open family (a new feature flag)")
    command("delete", cmd_delete, "delete keys in one transaction", change).add_argument("keys", nargs="+", metavar="KEY")
    p = command("history", cmd_history, "a key's current and past values")
    p.add_argument("key")
    p.add_argument("--limit", type=int, default=20, help="show at most N past values (default 20)")
    p = command("rollback", cmd_rollback, "KEY REVISION: restore one key; REVISION: undo an audited change", change)
    p.add_argument("target", nargs="+", metavar="KEY REVISION | REVISION")
    p.add_argument("--force", action="store_true", help="undo even if a key changed again since")
    p = command("audit", cmd_audit, "the audit trail, newest first")
    p.add_argument("key", nargs="?")
    p.add_argument("--limit", type=int, help="show at most N entries")
    p.add_argument("--json", action="store_true", help="one JSON object per line (to export the trail)")
    command("seed", cmd_seed, "write every missing key with its default", change)
    p = command("status", cmd_status, "GET URL/_status")
    p.add_argument("url")
    p.add_argument("--id-token", action="store_true", help="send an identity token (Cloud Run IAM)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    etcd = None
    try:
        etcd = Etcd() if args.needs_etcd else None
        return args.fn(args, etcd)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (head, less) went away: not an error
        sys.stderr.close()
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message, status = explain(exc, etcd)
        print("error: " + " ".join(message.split()), file=sys.stderr)
        return status
    finally:
        if etcd is not None:
            etcd.close()
