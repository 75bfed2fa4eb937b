"""ShellCheck on every shell script in the repository and on the etcd VM's startup
script as Terraform renders it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploy_support import REPO, TEMPLATES, render_startup_script

# Directories that hold no scripts of ours.
SKIP_DIRS = {".git", ".venv", ".venv-scan", ".local", ".terraform", "node_modules", "__pycache__",
             ".pytest_cache", ".hypothesis"}


def is_shell_script(path) -> bool:
    if path.suffix in (".sh", ".bash"):
        return True
    if path.suffix:  # templates (.tftpl), Python, docs ...
        return False
    try:
        with path.open("rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and any(s in first for s in (b"/sh", b"bash"))


def shell_scripts() -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file() and is_shell_script(path):
                found.append(str(path.relative_to(REPO)))
    return sorted(found)


SCRIPTS = shell_scripts()


def run_shellcheck(shellcheck: str, *paths: str) -> subprocess.CompletedProcess:
    # --norc: a developer's ~/.shellcheckrc must not change the verdict.
    return subprocess.run(
        [shellcheck, "--norc", "--external-sources", "--severity=style", *paths],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def test_discovers_the_known_scripts():
    for expected in ("deploy.sh", "scripts/smoke.sh", ".ci/run",
                     "terraform/templates/etcd-bootstrap.sh"):
        assert expected in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(shellcheck, script):
    result = run_shellcheck(shellcheck, script)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_startup_script_passes_shellcheck(shellcheck, tmp_path):
    rendered = tmp_path / "etcd-startup.sh"
    rendered.write_text(render_startup_script())
    result = run_shellcheck(shellcheck, str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_catches_a_bad_script(shellcheck, tmp_path):
    # Guards against a shellcheck invocation that passes everything.
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    result = run_shellcheck(shellcheck, str(bad))
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_template_itself_is_not_mistaken_for_a_script():
    assert not any(s.endswith(".tftpl") for s in SCRIPTS)
    assert (TEMPLATES / "etcd-startup.sh.tftpl").exists()
