"""The fused LSTM cell kernels of nn.lstm_cell (on by default on CuPy), checked without a GPU.

tests/cuda_on_cpu.py runs each kernel's C++ body on the CPU in CuPy's loop;
it must give what the NumPy path of `cell_forward` / `cell_backward` gives, in
float32 and float64, with and without prev_c, also when the outputs overwrite
the inputs as `lstm_forward` (gates = xw) and `lstm_backward` (dprev_c =
dnext_c) call it. nvcc must compile both bodies for the H100/H200 (sm_90).
Skipped where g++ / nvcc are missing.
"""
import numpy
import pytest

from cuda_on_cpu import ElementwiseOnCPU, gxx_available, nvcc_available, nvcc_compile_errors
from nn import lstm_cell

needs_gxx = pytest.mark.skipif(not gxx_available(), reason="g++ is not installed")
needs_nvcc = pytest.mark.skipif(not nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")

N, H = 3, 5
# The kernel and the ufuncs round in different orders (and tanh is not the same libm
# function), so they agree to a few units in the last place, not bit for bit.
RTOL = {numpy.float32: 1e-5, numpy.float64: 1e-13}


def _close(actual, expected, dtype, name):
    assert actual.dtype == expected.dtype == dtype, name
    numpy.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=name)


def _forward_inputs(dtype, seed):
    gen = numpy.random.default_rng(seed)
    xw = (2 * gen.standard_normal((N, 4 * H))).astype(dtype)
    recurrent = gen.standard_normal((N, 4 * H)).astype(dtype)
    prev_c = (2 * gen.standard_normal((N, H))).astype(dtype)
    return xw, recurrent, prev_c


def _numpy_forward(xw, recurrent, prev_c):
    gates = numpy.empty_like(xw)
    next_c, tanh_next_c, next_h = (numpy.empty((N, H), dtype=xw.dtype) for _ in range(3))
    lstm_cell.cell_forward(numpy, xw, recurrent, prev_c, gates, next_c, tanh_next_c, next_h)
    return gates, next_c, tanh_next_c, next_h


def _kernel_forward(kernel, xw, recurrent, prev_c, gates=None):
    """The kernel called as cell_forward calls it on CuPy (prev_c None: next_c stands in, unread)."""
    gates = numpy.empty_like(xw) if gates is None else gates
    next_c, tanh_next_c, next_h = (numpy.full((N, H), numpy.nan, dtype=xw.dtype) for _ in range(3))
    kernel(xw, recurrent, next_c if prev_c is None else prev_c, prev_c is not None, H,
           gates, next_c, tanh_next_c, next_h, size=N * H)
    return gates, next_c, tanh_next_c, next_h


@needs_gxx
@pytest.mark.parametrize("with_prev_c", [True, False], ids=["prev_c", "no_prev_c"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_forward_kernel_equals_the_numpy_cell(dtype, with_prev_c):
    xw, recurrent, prev_c = _forward_inputs(dtype, seed=1)
    prev_c = prev_c if with_prev_c else None
    kernel = ElementwiseOnCPU(lstm_cell.FORWARD_KERNEL)
    expected = _numpy_forward(xw.copy(), recurrent, prev_c)
    for name, actual, want in zip(("gates", "next_c", "tanh_next_c", "next_h"),
                                  _kernel_forward(kernel, xw, recurrent, prev_c), expected):
        _close(actual, want, dtype, name)
    # lstm_forward activates the gates in the projection's own memory: gates is xw
    in_place = xw.copy()
    outputs = _kernel_forward(kernel, in_place, recurrent, prev_c, gates=in_place)
    assert outputs[0] is in_place
    for name, actual, want in zip(("gates", "next_c", "tanh_next_c", "next_h"), outputs, expected):
        _close(actual, want, dtype, name + " (in place)")


@needs_gxx
@pytest.mark.parametrize("with_prev_c", [True, False], ids=["prev_c", "no_prev_c"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_backward_kernel_equals_the_numpy_cell(dtype, with_prev_c):
    xw, recurrent, prev_c = _forward_inputs(dtype, seed=2)
    prev_c = prev_c if with_prev_c else None
    gates, _, tanh_next_c, _ = _numpy_forward(xw, recurrent, prev_c)
    gen = numpy.random.default_rng(3)
    dnext_h, dnext_c = (gen.standard_normal((N, H)).astype(dtype) for _ in range(2))

    da, dprev_c = numpy.empty_like(gates), numpy.empty((N, H), dtype=dtype)
    lstm_cell.cell_backward(numpy, dnext_h, dnext_c, gates, tanh_next_c, prev_c, da, dprev_c)

    kernel = ElementwiseOnCPU(lstm_cell.BACKWARD_KERNEL)
    # lstm_backward passes dnext_c as dprev_c too (updated in place): do the same
    dc = dnext_c.copy()
    da_kernel = numpy.full_like(gates, numpy.nan)
    kernel(dnext_h, dc, gates, tanh_next_c, tanh_next_c if prev_c is None else prev_c, prev_c is not None,
           H, da_kernel, dc, size=N * H)
    _close(da_kernel, da, dtype, "da")
    _close(dc, dprev_c, dtype, "dprev_c")
    if prev_c is None:
        assert (da_kernel[:, H:2 * H] == 0).all()          # no prev_c: the forget gate gets no gradient


@needs_nvcc
@pytest.mark.parametrize("spec", ["FORWARD_KERNEL", "BACKWARD_KERNEL"])
def test_nvcc_compiles_the_cell_kernels_for_sm90(spec):
    assert nvcc_compile_errors(getattr(lstm_cell, spec)) == ""
