"""Shared test fixtures.

`xp` runs a test once per backend: NumPy always, CuPy when it imports and a
GPU is visible (otherwise that run is skipped with the reason).
"""
import os
from pathlib import Path

# One BLAS thread for the suite: the tests use small arrays, and on a busy
# machine OpenBLAS's spinning worker threads made some tests 10-25x slower
# (measured: the lesson tests took 7 min instead of 43 s under load).
# Set before NumPy is first imported; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy  # noqa: E402
import pytest  # noqa: E402

import nn.gradcheck  # noqa: E402
from nn import backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

_BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=_BACKENDS)
def xp(request):
    """The array module of one backend, switched on for the test's duration."""
    previous = backend.name()
    if request.param == "cupy" and not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    module = backend.use(request.param)
    yield module
    backend.use(previous)


@pytest.fixture(autouse=True)
def _restore_backend_state():
    """Each test starts on the environment's backend and default dtype."""
    name = backend.name()
    dtype = backend.default_float()
    yield
    backend.use(name)
    backend.set_default_float(dtype)


@pytest.fixture
def cupy():
    """CuPy, switched on for the test's duration (skipped without a GPU): for tests that
    compare CuPy paths with each other (the kernels on and off), not with NumPy."""
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    previous = backend.name()
    yield backend.use("cupy")
    backend.use(previous)


def load_benchmark(name):
    """benchmarks/<name>.py as a module (the folder is no package: its scripts run from the command line)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flickr8k_dir():
    """The real Flickr8k copy: $FLICKR8K_DIR, else ../shared/flickr8k (None if absent)."""
    env = os.environ.get("FLICKR8K_DIR")
    path = Path(env) if env else ROOT.parent / "shared" / "flickr8k"
    return path if path.is_dir() else None


@pytest.fixture
def flickr8k():
    path = flickr8k_dir()
    if path is None:
        pytest.skip("Flickr8k not found: set FLICKR8K_DIR or place it at ../shared/flickr8k")
    return path


def as_xp(xp, array, dtype=numpy.float64):
    """A NumPy array moved to the backend of `xp` with the given dtype."""
    return xp.asarray(numpy.asarray(array, dtype=dtype))


# ---- worst relative error per test, for the closing notes of gradient-check runs
#
# Set GRADCHECK_REPORT=FILE to get, after the run, a table of the largest
# value `rel_error` returned inside each test (one row per test and backend).
# Wrapping happens here, before the test modules import `rel_error`.
_worst_errors = {}
_current_test = {"id": None}
_original_rel_error = nn.gradcheck.rel_error


def _recording_rel_error(a, b, floor=1e-8):
    err = _original_rel_error(a, b, floor)
    key = _current_test["id"]
    if key is not None:
        _worst_errors[key] = max(err, _worst_errors.get(key, 0.0))
    return err


nn.gradcheck.rel_error = _recording_rel_error


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _current_test["id"] = item.nodeid
    yield
    _current_test["id"] = None


# ---- one line per reason for what was skipped, instead of one line per test
#
# setup.cfg's addopts use -rfE (failures and errors only); this hook prints the
# skips grouped by reason, e.g. "217 skipped: CuPy is not installed or no GPU is visible".
def skip_summary(reports):
    """Lines 'N skipped: reason', most frequent first, from pytest's skipped reports."""
    counts = {}
    for report in reports:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
        counts[reason] = counts.get(reason, 0) + 1
    return [f"{n} skipped: {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def pytest_terminal_summary(terminalreporter):
    lines = skip_summary(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.write_sep("-", "what was skipped, and why")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    path = os.environ.get("GRADCHECK_REPORT")
    if not path or not _worst_errors:
        return
    lines = [f"{err:.2e}  {test}" for test, err in sorted(_worst_errors.items())]
    Path(path).write_text("worst rel_error  test\n" + "\n".join(lines) + "\n")
