"""The fused attention kernels (nn.attention_cuda, off by default) against the plain path, on CuPy.

Skipped where no GPU is visible (tests/test_nn_attention_cuda_on_cpu.py checks
the kernels' C++ on the CPU). With the kernels switched on, an attention step
forward and backward at caption size, with and without dalpha, the gate
forward and backward, and a whole Show, Attend and Tell training step must
give what the plain CuPy path gives, and must actually have run the kernels.
"""
import numpy
import pytest

from nn import attention, attention_cuda, backend
from captioning.models import build


class _Switch:
    """Calling it switches the CUDA kernels on or off; .calls lists the fused functions run."""

    def __init__(self):
        self.calls = []

    def __call__(self, on):
        backend.use_gpu_kernels(on)


@pytest.fixture
def kernels_switch(monkeypatch):
    before = backend.gpu_kernels_enabled()
    switch = _Switch()
    for name in ("tanh_add", "softmax_rows", "softmax_backward_rows", "dprojected", "gate_forward",
                 "gate_backward"):
        function = getattr(attention_cuda, name)
        monkeypatch.setattr(attention_cuda, name,
                            lambda *args, _f=function, _n=name: switch.calls.append(_n) or _f(*args))
    yield switch
    backend.use_gpu_kernels(before)


def _close(fast, plain, dtype, name):
    """Equal up to rounding, measured against the largest value: the kernels sum in another order
    (and fuse multiply-adds on the GPU), and entries near 0 come from sums that cancel."""
    assert fast.dtype == plain.dtype == dtype, name
    tolerance = 1e-12 if dtype is numpy.float64 else 1e-5
    assert float(abs(fast - plain).max()) <= tolerance * float(abs(plain).max()), name


@pytest.mark.gpu
@pytest.mark.parametrize("with_dalpha", [True, False], ids=["dalpha", "no_dalpha"])
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_attention_step_kernels_equal_the_plain_path_on_cupy(cupy, kernels_switch, dtype, with_dalpha):
    N, L, D, H, A = 64, 49, 1280, 512, 256                          # the caption model's sizes
    gen = numpy.random.default_rng(7)

    def randn(*shape, scale=1.0):
        return cupy.asarray((gen.standard_normal(shape) * scale).astype(dtype))
    inputs = dict(features=randn(N, L, D), projected=randn(N, L, A), h=randn(N, H),
                  W_hidden=randn(H, A, scale=0.05), w_score=randn(A, scale=0.1))
    dcontext, dalpha = randn(N, D), (randn(N, L) if with_dalpha else None)
    results = []
    for on in (False, True):
        kernels_switch(on)
        context, alpha, cache = attention.attention_step_forward(**inputs)
        results.append((context, alpha) + attention.attention_step_backward(dcontext, dalpha, cache))
    assert kernels_switch.calls == ["tanh_add", "softmax_rows", "softmax_backward_rows", "dprojected"]
    names = ("context", "alpha", "dfeatures", "dprojected", "dh", "dW_hidden", "dw_score")
    for name, plain, fast in zip(names, *results):
        _close(fast, plain, dtype, name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_gate_kernels_equal_the_plain_path_on_cupy(cupy, kernels_switch, dtype):
    N, D, H = 64, 1280, 512
    gen = numpy.random.default_rng(9)
    context, h, dgated = (cupy.asarray(gen.standard_normal(shape).astype(dtype))
                          for shape in ((N, D), (N, H), (N, D)))
    W_beta = cupy.asarray((0.1 * gen.standard_normal((H, 1))).astype(dtype))
    b_beta = cupy.asarray(numpy.array([0.5], dtype=dtype))
    results = []
    for on in (False, True):
        kernels_switch(on)
        out = cupy.zeros((3, N, D), dtype=dtype)                         # gated into one step of a buffer
        gated, cache = attention.attention_gate_forward(context, h, W_beta, b_beta, out=out[1])
        assert float(abs(out[0]).max()) == 0 and float(abs(out[1] - gated).max()) == 0
        results.append((gated, cache[3]) + attention.attention_gate_backward(dgated, cache))
    assert kernels_switch.calls == ["gate_forward", "gate_backward"]
    for name, plain, fast in zip(("gated", "beta", "dcontext", "dh", "dW_beta", "db_beta"), *results):
        _close(fast, plain, dtype, name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_show_attend_tell_train_step_with_kernels_on_cupy(cupy, kernels_switch, dtype):
    config = {"model": "attention", "vocab_size": 50, "feature_dim": 64, "wordvec_dim": 16, "hidden_dim": 32,
              "attention_dim": 24, "dropout": 0.0, "doubly_stochastic": 1.0}
    gen = numpy.random.default_rng(8)
    features = cupy.asarray(gen.standard_normal((8, 49, 64)).astype(dtype))
    captions = gen.integers(3, 50, size=(8, 11))
    captions[:, 0], captions[2, 6], captions[2, 7:] = 1, 2, 0            # <START>, <END>, <NULL>
    captions = cupy.asarray(captions)
    model = build(config, seed=3, dtype=dtype).to_backend()
    results = []
    for on in (False, True):
        kernels_switch(on)
        results.append(model.forward_backward(features, captions, feature_grad=True))
    for name in ("tanh_add", "dprojected", "gate_forward", "gate_backward"):
        assert kernels_switch.calls.count(name) == 10, name              # every one of the 10 steps
    (plain_loss, plain_grads, plain_dfeatures), (loss, grads, dfeatures) = results
    assert abs(loss - plain_loss) <= (1e-12 if dtype is numpy.float64 else 1e-5) * abs(plain_loss)
    for name in plain_grads:
        _close(grads[name], plain_grads[name], dtype, name)
    _close(dfeatures, plain_dfeatures, dtype, "dfeatures")
