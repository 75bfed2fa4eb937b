"""README.md stays true: its key table and settings table match the code."""

from __future__ import annotations

import re
from pathlib import Path

from config_watch import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    section = README.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and rule


def test_key_table_matches_schema():
    rows = {row[0].strip("`"): row for row in table_after("## Key table")}
    for spec in SCHEMA.specs:
        key = spec.path + ("<name>" if spec.family else "")
        assert key in rows, f"{key} missing from README's key table"
        row = rows.pop(key)
        assert row[1] == spec.type
        default = "= rate-limit" if spec.default_from else str(spec.default).lower()
        assert row[2] == default, (key, row[2])
        if spec.minimum is not None:
            assert row[3].startswith(f"{spec.minimum}..{spec.maximum}"), (key, row[3])
    assert not rows, f"README lists keys the schema does not have: {list(rows)}"


def test_settings_table_lists_every_setting_the_code_reads():
    code = (ROOT / "config_watch" / "_settings.py").read_text()
    read = set(re.findall(r'"((?:ETCD|CONFIG|TRUSTED|RATE_LIMIT|INSTANCE|LOG|STATUS)_[A-Z_]+)"', code))
    gateway = (ROOT / "gateway" / "settings.py").read_text()
    read |= set(re.findall(r'env(?:\.get\(|, )"([A-Z][A-Z_]+)"', gateway))
    documented = set()
    for row in table_after("## Configuration settings"):
        documented |= set(re.findall(r"`([A-Z_]+)`", row[0]))
    assert read <= documented, f"settings missing from README: {read - documented}"
    assert documented <= read, f"README documents settings the code does not read: {documented - read}"


def test_links_stay_inside_the_repository():
    """A clone holds everything the docs link to (no ../shared/...)."""
    for doc in (ROOT / "README.md", ROOT / "docs" / "design.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name} links to {target}"


def test_readme_tool_commands_parse():
    """Every `python -m config_watch ...` line in README's code blocks is a valid command."""
    import shlex

    from config_watch._cli import build_parser

    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if "python -m config_watch" in line]
    assert len(commands) >= 10
    for line in commands:
        words = shlex.split(line.split("python -m config_watch", 1)[1], comments=True)
        build_parser().parse_args(words)  # argparse exits (fails the test) on a bad command
