"""The short chaos run (`make chaos` runs the long one)."""

from __future__ import annotations

from tools.chaos import run_chaos


def test_short_chaos_run_loses_no_update(tmp_path, capsys):
    lines: list[str] = []
    report = run_chaos(seconds=10, min_changes=300, base_dir=str(tmp_path / "cluster"), log=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(lines + report.lines()))
    assert report.changes >= 300
    assert sum(report.faults.values()) >= 5, report.faults
    assert report.revisions_went_backwards == 0
    assert report.updates_lost == 0, (lines, report.mismatches)
