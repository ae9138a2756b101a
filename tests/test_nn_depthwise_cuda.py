"""The depthwise CUDA kernels (nn.depthwise_cuda, off by default) against the plain path.

On CuPy (skipped where no GPU is visible) the kernels must give what the plain
depthwise path gives, forward and backward, for every depthwise geometry of
test_nn_conv (strides 1 to 3, TensorFlow "same" pads, 5x5, no bias), in
float64 and float32, and on an EfficientNet-sized map. On NumPy the switch changes nothing.
"""
import numpy
import pytest

from conftest import as_xp
from nn import backend
from nn.conv import conv_backward, conv_forward
from nn.gradcheck import rel_error
from test_nn_conv import DEPTHWISE, DEPTHWISE_IDS, make


@pytest.fixture
def cupy():
    """CuPy, switched on for the test's duration (skipped without a GPU)."""
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    previous = backend.name()
    yield backend.use("cupy")
    backend.use(previous)


@pytest.fixture
def kernels_switch():
    before = backend.gpu_kernels_enabled()
    yield backend.use_gpu_kernels
    backend.use_gpu_kernels(before)


def _both_paths(x, w, b, param, switch, seed=0):
    """(out, dx, dw, db, path) with the kernels off, then on."""
    xp = backend.get_array_module(x)
    results = []
    for on in (False, True):
        switch(on)
        out, cache = conv_forward(x, w, b, param)
        dout = as_xp(xp, numpy.random.default_rng(seed).standard_normal(tuple(out.shape)), x.dtype)
        results.append((out, *conv_backward(dout, cache), cache[0]))
    return results


def test_the_kernels_are_off_by_default_and_ignored_on_numpy(kernels_switch, monkeypatch):
    monkeypatch.delenv("NN_GPU_KERNELS", raising=False)
    backend._state["gpu_kernels"] = None
    assert backend.gpu_kernels_enabled() is False
    monkeypatch.setenv("NN_GPU_KERNELS", "1")
    backend._state["gpu_kernels"] = None
    assert backend.gpu_kernels_enabled() is True
    x, w, b, param = make(numpy, DEPTHWISE[0])
    plain, switched = _both_paths(x, w, b, param, kernels_switch)
    assert plain[-1] == switched[-1] == "depthwise"            # NumPy arrays never take the kernels
    assert all((p == s).all() for p, s in zip(plain[:3], switched[:3]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("config", DEPTHWISE, ids=DEPTHWISE_IDS)
def test_kernels_equal_the_plain_path_on_cupy(cupy, kernels_switch, config, dtype):
    x, w, b, param = make(cupy, config, seed=3, dtype=dtype)
    plain, fast = _both_paths(x, w, b, param, kernels_switch)
    assert plain[-1] == "depthwise" and fast[-1] == "depthwise_cuda"
    for name, p, f in zip(("out", "dx", "dw", "db"), plain, fast):
        if p is None:
            assert f is None
        elif dtype is numpy.float64:
            assert f.dtype == p.dtype and rel_error(f, p) < 1e-12, name
        else:   # float32: the kernel fuses multiply-adds, so compare against the largest value
            assert f.dtype == p.dtype and float(abs(f - p).max()) <= 1e-5 * float(abs(p).max()), name


@pytest.mark.gpu
def test_kernels_on_an_efficientnet_sized_map(cupy, kernels_switch):
    config = (4, 96, 56, 56, 96, 5, 2, (1, 2, 1, 2), 96, False)    # a 5x5 stride-2 "same" layer
    x, w, b, param = make(cupy, config, seed=4, dtype=numpy.float32)
    plain, fast = _both_paths(x, w, b, param, kernels_switch)
    assert fast[-1] == "depthwise_cuda"
    for name, p, f in zip(("out", "dx", "dw"), plain, fast):
        assert float(abs(f - p).max()) <= 1e-5 * float(abs(p).max()), name
