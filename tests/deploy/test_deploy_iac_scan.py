"""checkov over terraform/, offline: no failed check, and every skipped check is named
in the Terraform beside the resource with its reason (`#checkov:skip=ID:reason`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy_support import REPO, TERRAFORM

# Checks this configuration skips on purpose; the reasons are in the .tf files.
EXPECTED_SKIPS = {
    ("CKV_GCP_37", "google_compute_disk.etcd_data[0]"),  # customer-supplied disk keys
    ("CKV_GCP_38", "google_compute_instance.etcd[0]"),  # customer-supplied boot disk key
    ("CKV_GCP_38", "google_compute_instance.processor"),  # the same, for the processor VM
    ("CKV_GCP_62", "google_storage_bucket.source"),  # bucket usage logs
    ("CKV_GCP_62", "google_storage_bucket.etcd_backups"),
    ("CKV_GCP_124", "google_cloudfunctions2_function.gateway"),  # public ingress
}


def checkov_path() -> Path:
    return Path(os.environ.get("CHECKOV", REPO / ".venv-scan" / "bin" / "checkov"))


def scan(directory: Path) -> dict:
    checkov = checkov_path()
    if not (checkov.is_file() and os.access(checkov, os.X_OK)):
        pytest.fail(f"checkov not found at {checkov}: run `make .venv-scan/.installed-stamp` "
                    "(make test does) or set CHECKOV", pytrace=False)
    result = subprocess.run(
        [str(checkov), "-d", str(directory), "--framework", "terraform", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def report():
    return scan(TERRAFORM)


def test_no_check_fails(report):
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] >= 40, report["summary"]


def test_every_skip_is_expected_and_gives_a_reason(report):
    skipped = report["results"]["skipped_checks"]
    assert {(c["check_id"], c["resource"]) for c in skipped} == EXPECTED_SKIPS
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 30, f"{check['check_id']} on {check['resource']} has no real reason"


def test_scan_catches_a_bad_bucket(tmp_path):
    # Guards against a scanner run that passes everything.
    (tmp_path / "main.tf").write_text(
        'resource "google_storage_bucket" "open" {\n  name = "x"\n  location = "US"\n}\n')
    report = scan(tmp_path)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_GCP_29" in failed, failed  # uniform bucket-level access
