"""The CUDA kernels of nn.depthwise_cuda (off by default) against the plain path, on CuPy.

On CuPy (skipped where no GPU is visible) the kernels must give what the plain
path gives: the depthwise conv forward and backward for every depthwise
geometry of test_nn_conv (strides 1 to 3, TensorFlow "same" pads, 5x5, no
bias) and two larger maps, in float64 and float32, and on an EfficientNet-sized
map; `conv_relu6_inference` (ReLU6 inside the depthwise kernel, the bias + ReLU6
kernel after the other convs), also through the whole EfficientNet encoder; and
the plain backward when dout has another dtype. On NumPy the switch changes
nothing. The same kernels' C++ runs on the CPU in tests/test_nn_depthwise_cuda_on_cpu.py.
"""
import numpy
import pytest

from conftest import as_xp
from nn import backend
from nn.conv import conv_backward, conv_forward, conv_relu6_inference
from nn.gradcheck import rel_error
from test_nn_conv import CONFIGS, DEPTHWISE, DEPTHWISE_IDS, make

# Bigger maps than test_nn_conv's: several BACKWARD_DW blocks of rows at the default
# DW_PIXELS_PER_THREAD (40x40 outputs: 6 rows per thread, the last block 4 rows), and an
# EfficientNet-style 5x5 stride-2 "same" layer.
LARGER = [(2, 4, 40, 40, 4, 3, 1, 1, 4, True), (1, 3, 33, 31, 3, 5, 2, (1, 2, 1, 1), 3, True)]
GEOMETRIES = DEPTHWISE + LARGER
GEOMETRY_IDS = DEPTHWISE_IDS + ["k3-s1-pad1-40x40", "k5-s2-pad(1,2,1,1)-33x31"]
NOT_DEPTHWISE = [c for c in CONFIGS if c not in DEPTHWISE and c[9]][:4]     # with bias: the epilogue kernel
NOT_DEPTHWISE_IDS = [f"k{c[5]}-s{c[6]}-g{c[8]}" for c in NOT_DEPTHWISE]


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


def assert_same_results(plain, fast, dtype, names=("out", "dx", "dw", "db")):
    """The (out, dx, dw, db) of `_both_paths`, kernels off and on, agree (db None on both without a bias)."""
    for name, p, f in zip(names, plain, fast):
        if p is None:
            assert f is None, name
        else:
            assert_close(f, p, dtype, name)


def assert_close(fast, plain, dtype, name):
    """float64: relative error 1e-12; float32: max difference 1e-5 of the largest value (the kernels
    sum in another order, with fused multiply-adds on the GPU)."""
    assert fast.dtype == plain.dtype and fast.shape == plain.shape, name
    if dtype is numpy.float64:
        assert rel_error(fast, plain) < 1e-12, name
    else:
        assert float(abs(fast - plain).max()) <= 1e-5 * float(abs(plain).max()), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("config", GEOMETRIES, ids=GEOMETRY_IDS)
def test_kernels_equal_the_plain_path_on_cupy(cupy, kernels_switch, config, dtype):
    x, w, b, param = make(cupy, config, seed=3, dtype=dtype)
    plain, fast = _both_paths(x, w, b, param, kernels_switch)
    assert plain[-1] == "depthwise" and fast[-1] == "depthwise_cuda"
    assert_same_results(plain, fast, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("config", GEOMETRIES + NOT_DEPTHWISE, ids=GEOMETRY_IDS + NOT_DEPTHWISE_IDS)
def test_relu6_inference_kernels_equal_the_plain_path_on_cupy(cupy, kernels_switch, config, dtype):
    x, w, b, param = make(cupy, config, seed=5, dtype=dtype)
    x *= 3      # outputs beyond [0, 6] on both sides
    kernels_switch(False)
    plain = conv_relu6_inference(x, w, b, param)
    assert bool((plain == 0).any()) and bool((plain == 6).any())
    kernels_switch(True)
    assert_close(conv_relu6_inference(x, w, b, param), plain, dtype, "relu6(conv + b)")


@pytest.mark.gpu
def test_dout_of_another_dtype_takes_the_plain_backward_on_cupy(cupy, kernels_switch):
    x, w, b, param = make(cupy, DEPTHWISE[2], seed=7)                      # float64
    out, cache = conv_forward(x, w, b, param)
    dout = as_xp(cupy, numpy.random.default_rng(8).standard_normal(tuple(out.shape)), numpy.float32)
    kernels_switch(False)
    plain = conv_backward(dout, conv_forward(x, w, b, param)[1])
    kernels_switch(True)
    out, cache = conv_forward(x, w, b, param)
    assert cache[0] == "depthwise_cuda"
    for p, f in zip(plain, conv_backward(dout, cache)):
        assert f.dtype == numpy.float32 and float(abs(f - p).max()) <= 1e-6 * float(abs(p).max())


@pytest.mark.gpu
def test_encoder_with_the_fused_kernels_on_cupy(cupy, kernels_switch):
    from captioning.encoders.efficientnet import EfficientNetLite0
    from test_encoder_efficientnet import _random_state_dict
    model = EfficientNetLite0(_random_state_dict(4)).to_backend()
    images = as_xp(cupy, numpy.random.default_rng(5).standard_normal((2, 3, 64, 48)), numpy.float32)
    kernels_switch(False)
    plain = model.feature_map(images)
    kernels_switch(True)
    fast = model.feature_map(images)
    assert float(abs(fast - plain).max()) <= 1e-5 * float(abs(plain).max())


@pytest.mark.gpu
def test_kernels_on_an_efficientnet_sized_map(cupy, kernels_switch):
    config = (4, 96, 56, 56, 96, 5, 2, (1, 2, 1, 2), 96, False)    # a 5x5 stride-2 "same" layer
    x, w, b, param = make(cupy, config, seed=4, dtype=numpy.float32)
    plain, fast = _both_paths(x, w, b, param, kernels_switch)
    assert fast[-1] == "depthwise_cuda"
    assert_same_results(plain, fast, numpy.float32, names=("out", "dx", "dw"))
