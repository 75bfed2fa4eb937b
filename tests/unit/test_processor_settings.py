"""The processor's settings: defaults, bounds, and errors that name the setting."""

from __future__ import annotations

import pytest

from config_watch import SettingsError
from processor import ProcessorSettings


def test_defaults():
    s = ProcessorSettings.from_env({})
    assert (s.port, s.max_body_bytes, s.queue_limit, s.drain_seconds, s.token) == (8081, 1 << 20, 256, 30, None)


def test_values_from_the_environment():
    s = ProcessorSettings.from_env({"PROCESSOR_PORT": "9000", "PROCESSOR_MAX_BODY_BYTES": "10",
                                    "PROCESSOR_QUEUE_LIMIT": "3", "PROCESSOR_DRAIN_SECONDS": "0",
                                    "PROCESSOR_TOKEN": "t" * 32, "PROCESSOR_HOST": "0.0.0.0"})
    assert (s.host, s.port, s.max_body_bytes, s.queue_limit, s.drain_seconds) == ("0.0.0.0", 9000, 10, 3, 0)
    assert "t" * 32 not in repr(s)


@pytest.mark.parametrize("name,raw", [
    ("PROCESSOR_PORT", "0"), ("PROCESSOR_PORT", "70000"), ("PROCESSOR_PORT", "http"),
    ("PROCESSOR_MAX_BODY_BYTES", "0"), ("PROCESSOR_QUEUE_LIMIT", "-1"), ("PROCESSOR_QUEUE_LIMIT", "5000"),
    ("PROCESSOR_DRAIN_SECONDS", "1.5"), ("PROCESSOR_DRAIN_SECONDS", "-3"),
    ("PROCESSOR_TOKEN", "short"), ("PROCESSOR_TOKEN", " " + "t" * 20),
    ("CONFIG_SERVICE", "api-gateway"),
])
def test_bad_values_are_refused_by_name(name, raw):
    with pytest.raises(SettingsError, match=name):
        ProcessorSettings.from_env({name: raw})
