"""The CUDA kernels of nn.depthwise_cuda, run on the CPU: their C++ against the plain NumPy path.

No GPU is needed: tests/cuda_on_cpu.py compiles each kernel's C++ (the very
`KernelSpec` text CuPy compiles) with g++ and runs it on NumPy arrays, and the
fixture `cpu_kernels` points `nn.backend.elementwise_kernel` at those CPU
builds, so `conv_forward` / `conv_backward` / `conv_relu6_inference` take the
kernel path exactly as on CuPy (dispatch, argument lists, dw reduction,
fallbacks). nvcc compiles the same text for the H100/H200 (sm_90), float and
double. Skipped without g++ (nvcc) respectively. The CuPy side is
tests/test_nn_depthwise_cuda.py.
"""
import numpy
import pytest

import captioning.encoders.efficientnet as effnet
from cuda_on_cpu import cpu_elementwise_kernel, gxx_available, nvcc_available, nvcc_compile_errors
from nn import backend, depthwise_cuda
from nn.conv import conv_backward, conv_forward, conv_relu6_inference
from test_encoder_efficientnet import _random_state_dict
from test_nn_conv import DEPTHWISE, make
from test_nn_depthwise_cuda import (GEOMETRIES, GEOMETRY_IDS, LARGER, NOT_DEPTHWISE, NOT_DEPTHWISE_IDS,
                                    _both_paths, assert_close, assert_same_results)

@pytest.fixture
def cpu_kernels(monkeypatch):
    """The kernels switched on and run by g++ on NumPy arrays (skipped without g++)."""
    if not gxx_available():
        pytest.skip("g++ is not installed")
    monkeypatch.setattr(backend, "elementwise_kernel", cpu_elementwise_kernel)
    monkeypatch.setattr(depthwise_cuda, "_on_kernel_device", lambda xp: True)
    before = backend.gpu_kernels_enabled()
    backend.use_gpu_kernels(True)
    yield backend.use_gpu_kernels
    backend.use_gpu_kernels(before)


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("rows_per_thread", ["default", 2])
@pytest.mark.parametrize("config", GEOMETRIES, ids=GEOMETRY_IDS)
def test_kernels_equal_the_plain_path(cpu_kernels, monkeypatch, config, rows_per_thread, dtype):
    x, w, b, param = make(numpy, config, seed=3, dtype=dtype)
    if rows_per_thread == 2:    # BACKWARD_DW with 2 output rows per thread (the last block short when odd)
        w_out = conv_forward(x, w, b, param)[0].shape[3]
        monkeypatch.setattr(depthwise_cuda, "DW_PIXELS_PER_THREAD", 2 * w_out)
    plain, fast = _both_paths(x, w, b, param, cpu_kernels)
    assert plain[-1] == "depthwise" and fast[-1] == "depthwise_cuda"
    assert_same_results(plain, fast, dtype)


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("config", GEOMETRIES, ids=GEOMETRY_IDS)
def test_depthwise_relu6_in_the_forward_kernel(cpu_kernels, config, dtype):
    x, w, b, param = make(numpy, config, seed=5, dtype=dtype)
    x *= 3      # outputs well beyond [0, 6] on both sides: both clips are exercised
    cpu_kernels(False)
    plain = conv_relu6_inference(x, w, b, param)
    assert numpy.array_equal(plain, numpy.clip(conv_forward(x, w, b, param)[0], 0, 6))
    assert (plain == 0).any() and (plain == 6).any() and ((plain > 0) & (plain < 6)).any()
    cpu_kernels(True)
    assert_close(conv_relu6_inference(x, w, b, param), plain, dtype, "relu6(out)")


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("config", NOT_DEPTHWISE, ids=NOT_DEPTHWISE_IDS)
def test_bias_relu6_epilogue_after_a_bias_free_conv(cpu_kernels, monkeypatch, config, dtype):
    x, w, b, param = make(numpy, config, seed=6, dtype=dtype)
    x *= 3
    calls = []
    fused = depthwise_cuda.bias_relu6_
    monkeypatch.setattr(depthwise_cuda, "bias_relu6_", lambda out, b: calls.append(1) or fused(out, b))
    cpu_kernels(False)
    plain = conv_relu6_inference(x, w, b, param)
    assert not calls and (plain == 0).any() and (plain == 6).any()
    cpu_kernels(True)
    assert_close(conv_relu6_inference(x, w, b, param), plain, dtype, "relu6(out + b)")
    assert calls == [1]


def test_dout_of_another_dtype_takes_the_plain_backward(cpu_kernels):
    # The kernels bind one type T for dout, x and w; the plain path computes in dout's dtype.
    x, w, b, param = make(numpy, DEPTHWISE[2], seed=7)
    dout32 = numpy.random.default_rng(8).standard_normal(conv_forward(x, w, b, param)[0].shape).astype(numpy.float32)
    cpu_kernels(False)
    plain = conv_backward(dout32, conv_forward(x, w, b, param)[1])
    cpu_kernels(True)
    out, cache = conv_forward(x, w, b, param)
    assert cache[0] == "depthwise_cuda"
    fast = conv_backward(dout32, cache)
    for p, f in zip(plain, fast):
        assert f.dtype == numpy.float32 and numpy.array_equal(f, p)
    _, stride, pads, _, h_out, w_out = cache[4]
    with pytest.raises(TypeError, match="expected float32"):     # what the kernel itself would do
        depthwise_cuda.depthwise_backward(dout32, x, w, pads, stride, h_out, w_out)


def test_arrays_too_large_for_32_bit_indices_take_the_plain_path(cpu_kernels, monkeypatch):
    x, w, b, param = make(numpy, LARGER[0], seed=9)
    out, cache = conv_forward(x, w, b, param)
    assert cache[0] == "depthwise_cuda"
    monkeypatch.setattr(depthwise_cuda, "INDEX_LIMIT", x.size)       # x itself no longer fits
    assert conv_forward(x, w, b, param)[1][0] == "depthwise"
    dout = numpy.ones_like(out)
    calls = []
    monkeypatch.setattr(depthwise_cuda, "depthwise_backward", lambda *args: calls.append(1))
    dx, dw, db = conv_backward(dout, cache)           # the kernels' forward, the plain backward
    assert not calls and dx.shape == x.shape and dw.shape == w.shape


def _conv_bn_before_fusing(self, x, unit, relu6):
    """EfficientNetLite0._conv_bn as it was before conv_relu6_inference, for folded batchnorm (the default):
    the reference the encoder's plain path must equal bit for bit."""
    k, stride = unit["kernel"], unit["stride"]
    pad = same_padding_pair(x, k, stride) if self.tf_same_padding else k // 2
    out, _ = conv_forward(x, unit["w"], unit["b"], {"stride": stride, "pad": pad, "groups": unit["groups"]})
    if relu6:
        numpy.clip(out, 0, 6, out=out)
    return out


def same_padding_pair(x, k, stride):
    return effnet.same_padding(x.shape[2], k, stride) + effnet.same_padding(x.shape[3], k, stride)


@pytest.fixture(scope="module")
def small_encoder():
    return effnet.EfficientNetLite0(_random_state_dict(4)), numpy.random.default_rng(5).standard_normal(
        (2, 3, 40, 36)).astype(numpy.float32)


def test_encoder_without_kernels_is_bit_identical_to_before(small_encoder, monkeypatch):
    model, images = small_encoder
    now = model.feature_map(images)
    backend.use_gpu_kernels(True)       # NumPy arrays never take the kernels
    try:
        switched = model.feature_map(images)
    finally:
        backend.use_gpu_kernels(False)
    monkeypatch.setattr(effnet.EfficientNetLite0, "_conv_bn", _conv_bn_before_fusing)
    before = model.feature_map(images)
    assert numpy.array_equal(now, before) and numpy.array_equal(switched, before)


def test_encoder_with_the_fused_kernels(small_encoder, cpu_kernels, monkeypatch):
    model, images = small_encoder
    calls = []
    fused = depthwise_cuda.depthwise_forward
    monkeypatch.setattr(depthwise_cuda, "depthwise_forward",
                        lambda *a, **k: calls.append(k.get("relu6")) or fused(*a, **k))
    fast = model.feature_map(images)
    cpu_kernels(False)
    plain = model.feature_map(images)
    assert calls.count(True) == 16                   # every block's depthwise conv, ReLU6 in the kernel
    assert float(abs(fast - plain).max()) <= 1e-5 * float(abs(plain).max())


@pytest.mark.skipif(not nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("spec", depthwise_cuda.KERNELS, ids=[s.name for s in depthwise_cuda.KERNELS])
def test_every_kernel_compiles_for_the_gpu(spec):
    assert nvcc_compile_errors(spec, type_values=("float", "double")) == ""
