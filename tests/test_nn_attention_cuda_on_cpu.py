"""The fused attention kernels of nn.attention_cuda (off by default), checked without a GPU.

tests/cuda_on_cpu.py runs each kernel's C++ body on the CPU in CuPy's loop.
Here those CPU kernels stand in for the CuPy ones, and `nn.attention` is told
to take its fused branch on NumPy arrays: the step forward and backward, the
gate forward and backward, and a whole Show, Attend and Tell training step
(attention and gate at every step) must then give what the plain path
gives (float64 to 1e-12, float32 to float32 rounding), with and without the
direct gradient dalpha. nvcc must compile every body for sm_90. And on NumPy the
switch changes nothing: switched on, the plain path runs, bit for bit.
Skipped where g++ / nvcc are missing.
"""
import numpy
import pytest

from cuda_on_cpu import ElementwiseOnCPU, cpu_elementwise_kernel, gxx_available, nvcc_available, nvcc_compile_errors
from nn import attention, attention_cuda, backend
from nn.gradcheck import rel_error
from nn.losses import softmax
from captioning.models import build
from test_nn_attention_cuda import _close

needs_gxx = pytest.mark.skipif(not gxx_available(), reason="g++ is not installed")
needs_nvcc = pytest.mark.skipif(not nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")

SPECS = ["TANH_ADD_KERNEL", "SOFTMAX_ROWS_KERNEL", "SOFTMAX_BACKWARD_ROWS_KERNEL", "DPROJECTED_KERNEL",
         "GATE_FORWARD_KERNEL", "GATE_BACKWARD_KERNEL"]


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """nn.attention takes the fused branch on NumPy arrays, with the kernels' C++ run by g++."""
    calls = []

    def applies(xp, x):
        calls.append(xp)
        return True
    monkeypatch.setattr(backend, "elementwise_kernel", cpu_elementwise_kernel)
    monkeypatch.setattr(attention_cuda, "applies", applies)
    return calls


def _step_inputs(dtype, seed, N=3, L=7, D=5, H=4, A=6):
    gen = numpy.random.default_rng(seed)

    def randn(*shape, scale=1.0):
        return (gen.standard_normal(shape) * scale).astype(dtype)
    inputs = dict(features=randn(N, L, D), projected=randn(N, L, A), h=randn(N, H),
                  W_hidden=randn(H, A, scale=0.7), w_score=randn(A, scale=2.0))
    return inputs, randn(N, D), randn(N, L)


def _step(inputs, dcontext, dalpha):
    context, alpha, cache = attention.attention_step_forward(**inputs)
    return (context, alpha) + attention.attention_step_backward(dcontext, dalpha, cache)


STEP_OUTPUTS = ("context", "alpha", "dfeatures", "dprojected", "dh", "dW_hidden", "dw_score")


@needs_gxx
@pytest.mark.parametrize("with_dalpha", [True, False], ids=["dalpha", "no_dalpha"])
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_attention_step_through_the_kernels_equals_the_plain_path(kernels_on_cpu, monkeypatch, dtype,
                                                                   with_dalpha):
    inputs, dcontext, dalpha = _step_inputs(dtype, seed=4)
    dalpha = dalpha if with_dalpha else None
    fused = _step(inputs, dcontext, dalpha)
    assert len(kernels_on_cpu) == 2                                    # forward and backward asked
    monkeypatch.setattr(attention_cuda, "applies", lambda xp, x: False)
    plain = _step(inputs, dcontext, dalpha)
    for name, f, p in zip(STEP_OUTPUTS, fused, plain):
        _close(f, p, dtype, name)


@needs_gxx
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_gate_through_the_kernels_equals_the_plain_path(kernels_on_cpu, monkeypatch, dtype):
    gen = numpy.random.default_rng(9)
    context, h, dgated = (gen.standard_normal(shape).astype(dtype) for shape in ((4, 6), (4, 3), (4, 6)))
    W_beta = (3 * gen.standard_normal((3, 1))).astype(dtype)            # both signs of the sigmoid's input
    b_beta = numpy.array([0.5], dtype=dtype)

    def gate():
        out = numpy.full((2, 4, 6), numpy.nan, dtype=dtype)            # gated written into a step's buffer
        gated, cache = attention.attention_gate_forward(context, h, W_beta, b_beta, out=out[1])
        assert numpy.shares_memory(gated, out) and not numpy.isnan(out[1]).any()
        return (gated, cache[3]) + attention.attention_gate_backward(dgated, cache)
    fused = gate()
    assert len(kernels_on_cpu) == 2
    monkeypatch.setattr(attention_cuda, "applies", lambda xp, x: False)
    plain = gate()
    assert ((plain[1] < 0.5).any() and (plain[1] > 0.5).any())
    for name, f, p in zip(("gated", "beta", "dcontext", "dh", "dW_beta", "db_beta"), fused, plain):
        _close(f, p, dtype, name)


@needs_gxx
def test_softmax_rows_kernel_is_stable_and_rows_sum_to_one():
    # scores far beyond exp's range: the kernel subtracts each row's maximum first, as softmax does
    scores = numpy.array([[1000.0, 999.0, -1000.0], [-800.0, -801.0, -802.0], [0.0, 0.0, 0.0]])
    alpha = ElementwiseOnCPU(attention_cuda.SOFTMAX_ROWS_KERNEL)(scores, 3, numpy.empty_like(scores), size=3)
    assert numpy.isfinite(alpha).all()
    assert rel_error(alpha, softmax(scores, axis=1)) < 1e-14
    assert abs(alpha.sum(axis=1) - 1).max() < 1e-15


@needs_gxx
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_show_attend_tell_train_step_through_the_kernels_equals_the_plain_path(kernels_on_cpu, monkeypatch,
                                                                                dtype):
    """The caption model's steps (dalpha from the regulariser, no per-step dfeatures) take the kernels."""
    config = {"model": "attention", "vocab_size": 11, "feature_dim": 6, "wordvec_dim": 5, "hidden_dim": 7,
              "attention_dim": 4, "dropout": 0.0, "doubly_stochastic": 1.0}
    gen = numpy.random.default_rng(5)
    features = gen.standard_normal((3, 5, 6)).astype(dtype)
    captions = gen.integers(3, 11, size=(3, 6))
    captions[:, 0], captions[1, 3], captions[1, 4:] = 1, 2, 0           # <START>, <END>, <NULL>
    model = build(config, seed=2, dtype=dtype)
    fused = model.forward_backward(features, captions, feature_grad=True)
    assert len(kernels_on_cpu) == 4 * 5              # 5 steps: attention and gate, forward and backward
    monkeypatch.setattr(attention_cuda, "applies", lambda xp, x: False)
    plain = model.forward_backward(features, captions, feature_grad=True)
    assert abs(fused[0] - plain[0]) <= (1e-12 if dtype is numpy.float64 else 1e-5) * abs(plain[0])
    for name in plain[1]:
        _close(fused[1][name], plain[1][name], dtype, name)
    _close(fused[2], plain[2], dtype, "dfeatures")


def test_numpy_arrays_never_take_the_kernels(monkeypatch):
    before = backend.gpu_kernels_enabled()
    try:
        inputs, dcontext, dalpha = _step_inputs(numpy.float32, seed=6)
        backend.use_gpu_kernels(False)
        plain = _step(inputs, dcontext, dalpha)
        backend.use_gpu_kernels(True)
        assert not attention_cuda.applies(numpy, inputs["projected"])
        monkeypatch.setattr(backend, "elementwise_kernel", None)          # would raise if reached
        switched = _step(inputs, dcontext, dalpha)
    finally:
        backend.use_gpu_kernels(before)
    for name, s, p in zip(STEP_OUTPUTS, switched, plain):
        assert (s == p).all(), name


@needs_nvcc
@pytest.mark.parametrize("spec", SPECS)
def test_nvcc_compiles_the_attention_kernels_for_sm90(spec):
    assert nvcc_compile_errors(getattr(attention_cuda, spec)) == ""
