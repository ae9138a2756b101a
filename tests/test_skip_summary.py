"""The suite's closing summary groups skipped tests by reason (tests/conftest.py)."""
from types import SimpleNamespace

from conftest import skip_summary


def _skipped(reason):
    return SimpleNamespace(longrepr=("tests/test_x.py", 12, f"Skipped: {reason}"))


def test_skips_are_counted_per_reason_most_frequent_first():
    reports = [_skipped("no GPU"), _skipped("set FLICKR8K_DIR"), _skipped("no GPU"), _skipped("no GPU")]
    assert skip_summary(reports) == ["3 skipped: no GPU", "1 skipped: set FLICKR8K_DIR"]


def test_no_skips_no_lines():
    assert skip_summary([]) == []
