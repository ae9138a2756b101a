"""nn picks its BLAS thread count from the load average on a busy machine (nn/_threads.py)."""
import os

import pytest

from nn import _threads


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.0, None), (2, 0.4, None),          # idle: the library's own default
    (2, 0.6, 1), (2, 1.0, 1), (2, 3.9, 1),   # a busy core of two: one thread
    (16, 4.0, 12), (16, 40.0, 1), (1, 2.0, 1),
])
def test_threads_for_load(cores, load, expected):
    assert _threads.threads_for_load(cores, load) == expected


def _clear_thread_variables(monkeypatch):
    for name in _threads.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_busy_machine_gets_the_free_cores(monkeypatch):
    _clear_thread_variables(monkeypatch)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    monkeypatch.setattr(_threads, "usable_cores", lambda: 4)
    assert _threads.choose_blas_threads() == 1
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"


def test_idle_machine_and_explicit_settings_are_left_alone(monkeypatch):
    _clear_thread_variables(monkeypatch)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert _threads.choose_blas_threads() is None and "OPENBLAS_NUM_THREADS" not in os.environ
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert _threads.choose_blas_threads() is None and "OPENBLAS_NUM_THREADS" not in os.environ
