"""Which etcd releases answer progress requests in stream order (etcd-io/etcd#15220, #17507)."""

import pytest

from config_watch._etcd import ordered_progress


@pytest.mark.parametrize("version, ordered", [
    ("3.5.1", False), ("3.5.7", False), ("3.5.8", False), ("3.5.12", False),
    ("3.5.13", True), ("3.5.27", True),
    ("3.4.23", False), ("3.4.30", False), ("3.4.31", True), ("3.4.37", True),
    ("3.3.27", False), ("3.6.0", True), ("3.7.3", True), ("4.0.0", True),
    ("3.6.0-rc.1", True), ("3.5.13-alpha.0", True),
])
def test_release_boundaries(version, ordered):
    assert ordered_progress(version) is ordered


@pytest.mark.parametrize("version", ["", "3.5", "unknown", "v3.5.9", "3.x.1"])
def test_unreadable_versions_are_taken_as_unordered(version):
    assert ordered_progress(version) is False
