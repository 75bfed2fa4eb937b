"""The operator's tool: `python -m config_watch <command>`.

    schema                       print the key schema as JSON (the cross-language contract)
    get [PREFIX]                 show keys under /config/ with their revision
    set KEY VALUE [KEY VALUE..]  validate against the schema, then write all in one txn
    delete KEY                   remove a key (it falls back to its default)
    history KEY                  the key's past values still in etcd's history
    rollback KEY REVISION        put back the value KEY had at REVISION
    seed                         write every missing key with its default
    status URL                   GET URL/_status and print it

etcd is reached with the same ETCD_* settings as the function.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

from ._etcd import EtcdClient, EtcdError
from ._schema import ROOT, SCHEMA, InvalidValue
from ._settings import Settings, SettingsError


def _client() -> tuple[EtcdClient, float]:
    settings = Settings.from_env()
    return EtcdClient(settings), settings.request_timeout


def _validate(key: str, value: str) -> str:
    spec = SCHEMA.spec_for(key)
    if spec is None:
        raise SystemExit(f"error: {key} is not in the schema (python -m config_watch schema lists the keys)")
    try:
        return spec.format(spec.parse(value.encode()))
    except InvalidValue as exc:
        raise SystemExit(f"error: {key}={value!r} rejected: {exc}") from None


def cmd_schema(_args) -> int:
    print(json.dumps(SCHEMA.to_json(), indent=2))
    return 0


def cmd_get(args) -> int:
    client, timeout = _client()
    prefix = (args.prefix or ROOT).encode()
    from ._etcd import prefix_range_end

    revision, kvs = client.list_range(prefix, prefix_range_end(prefix), timeout)
    print(f"# revision {revision}")
    for kv in kvs:
        print(f"{kv.key}\t{kv.value.decode('utf-8', 'replace')}\t(mod_revision {kv.mod_revision})")
    return 0


def cmd_set(args) -> int:
    if len(args.pairs) % 2:
        raise SystemExit("error: set takes KEY VALUE pairs")
    items = {k: _validate(k, v) for k, v in zip(args.pairs[::2], args.pairs[1::2])}
    client, timeout = _client()
    revision = client.put_many(items, timeout)
    print(f"written at revision {revision}: " + ", ".join(f"{k}={v}" for k, v in items.items()))
    return 0


def cmd_delete(args) -> int:
    client, timeout = _client()
    print(f"deleted at revision {client.delete(args.key, timeout)}")
    return 0


def cmd_history(args) -> int:
    client, timeout = _client()
    revision, kvs = client.list_range(args.key.encode(), args.key.encode() + b"\0", timeout)
    seen = kvs[0].mod_revision if kvs else None
    print(f"# {args.key} at revision {revision}: {kvs[0].value.decode() if kvs else '(unset)'}")
    while seen and seen > 1:
        try:
            old = client.get_at(args.key, seen - 1, timeout)
        except EtcdError as exc:
            print(f"# older history compacted ({exc})")
            break
        if old is None:
            print(f"# unset before revision {seen}")
            break
        print(f"{old.mod_revision}\t{old.value.decode('utf-8', 'replace')}")
        seen = old.mod_revision
    return 0


def cmd_rollback(args) -> int:
    client, timeout = _client()
    old = client.get_at(args.key, args.revision, timeout)
    if old is None:
        revision = client.delete(args.key, timeout)
        print(f"{args.key} was unset at revision {args.revision}; deleted at revision {revision}")
    else:
        value = _validate(args.key, old.value.decode("utf-8", "replace"))
        revision = client.put(args.key, value, timeout)
        print(f"{args.key}={value} (as at revision {args.revision}) written at revision {revision}")
    return 0


def cmd_seed(_args) -> int:
    client, timeout = _client()
    _, kvs = client.list_range(ROOT.encode(), ROOT[:-1].encode() + b"0", timeout)
    present = {kv.key for kv in kvs}
    missing = {s.path: s.format(s.default) for s in SCHEMA.specs
               if not s.family and not s.default_from and s.path not in present}
    if missing:
        print(f"seeded at revision {client.put_many(missing, timeout)}: " + ", ".join(missing))
    else:
        print("every key already set")
    return 0


def cmd_status(args) -> int:
    with urllib.request.urlopen(args.url.rstrip("/") + "/_status", timeout=10) as resp:
        print(json.dumps(json.load(resp), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config_watch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema").set_defaults(fn=cmd_schema)
    p = sub.add_parser("get"); p.add_argument("prefix", nargs="?"); p.set_defaults(fn=cmd_get)
    p = sub.add_parser("set"); p.add_argument("pairs", nargs="+"); p.set_defaults(fn=cmd_set)
    p = sub.add_parser("delete"); p.add_argument("key"); p.set_defaults(fn=cmd_delete)
    p = sub.add_parser("history"); p.add_argument("key"); p.set_defaults(fn=cmd_history)
    p = sub.add_parser("rollback"); p.add_argument("key"); p.add_argument("revision", type=int)
    p.set_defaults(fn=cmd_rollback)
    sub.add_parser("seed").set_defaults(fn=cmd_seed)
    p = sub.add_parser("status"); p.add_argument("url"); p.set_defaults(fn=cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (EtcdError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
