"""The CPU harness for our CUDA kernels' C++ (tests/cuda_on_cpu.py) does what CuPy does with it.

Skipped where g++ (or, for the compile checks, nvcc) is missing.
"""
import numpy
import pytest

from cuda_on_cpu import (ElementwiseOnCPU, cpu_elementwise_kernel, gxx_available, nvcc_available,
                         nvcc_compile_errors, parse_params)
from nn.backend import KernelSpec

needs_gxx = pytest.mark.skipif(not gxx_available(), reason="g++ is not installed")
needs_nvcc = pytest.mark.skipif(not nvcc_available(), reason="nvcc (the CUDA toolkit) is not installed")


def test_parse_params_reads_raw_types_and_names():
    assert parse_params("raw T x, int64 n,T y") == [(True, "T", "x"), (False, "int64", "n"), (False, "T", "y")]
    with pytest.raises(ValueError, match="cannot read"):
        parse_params("raw T")


@needs_gxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_elementwise_broadcasts_like_cupy_and_keeps_the_dtype(dtype):
    rng = numpy.random.default_rng(0)
    p = rng.standard_normal((2, 4, 5)).astype(dtype)
    h = rng.standard_normal((2, 1, 5)).astype(dtype)
    kernel = ElementwiseOnCPU(KernelSpec("T p, T h, T scale", "T a", "a = scale * tanh(p + h);", "tanh_add"))
    out = kernel(p, h, 0.5)
    assert out.dtype == dtype and out.shape == (2, 4, 5)
    numpy.testing.assert_allclose(out, 0.5 * numpy.tanh(p + h), rtol=1e-6)
    given = numpy.zeros_like(p)
    assert kernel(p, h, 2.0, given) is given and numpy.allclose(given, 2 * numpy.tanh(p + h), rtol=1e-6)


@needs_gxx
def test_raw_arrays_are_indexed_by_the_body_and_size_sets_the_loop():
    kernel = ElementwiseOnCPU(KernelSpec(
        "raw T x, int64 width", "raw T row_sums",
        "T s = 0; for (ptrdiff_t j = 0; j < width; ++j) s += x[i * width + j]; row_sums[i] = s;", "row_sums"))
    x = numpy.arange(12.0).reshape(3, 4)
    sums = numpy.zeros(3)
    kernel(x, 4, sums, size=3)
    assert sums.tolist() == [6.0, 22.0, 38.0]
    with pytest.raises(TypeError, match="size="):
        kernel(x, 4, sums)


@needs_gxx
def test_a_wrong_body_gives_wrong_numbers_and_bad_cpp_is_reported():
    x = numpy.linspace(-1, 1, 7)
    assert not numpy.allclose(ElementwiseOnCPU(KernelSpec("T x", "T y", "y = x * x * x;", "cube"))(x), x * x)
    with pytest.raises(RuntimeError, match="g\\+\\+ failed"):
        ElementwiseOnCPU(KernelSpec("T x", "T y", "y = x +;", "broken"))(x)
    with pytest.raises(TypeError, match="expected float64"):
        ElementwiseOnCPU(KernelSpec("T x, T z", "T y", "y = x + z;", "mixed"))(x, x.astype(numpy.float32))


def test_cpu_elementwise_kernel_builds_one_harness_per_spec():
    spec = KernelSpec("T x", "T y", "y = 2 * x;", "double_it")
    kernel = cpu_elementwise_kernel(spec)
    assert kernel.name == "double_it" and kernel.operation == spec.operation
    assert cpu_elementwise_kernel(KernelSpec(*spec)) is kernel          # an equal spec: the same build
    assert cpu_elementwise_kernel(spec._replace(operation="y = 3 * x;")) is not kernel


@needs_nvcc
def test_nvcc_accepts_device_code_and_reports_what_only_the_gpu_compiler_rejects():
    assert nvcc_compile_errors(KernelSpec("T x", "T y", "y = min(x, (T)6) + tanh(x);", "clip_tanh")) == ""
    # min(float, int) is ambiguous among CUDA's overloads (g++ would not say the same thing)
    errors = nvcc_compile_errors(KernelSpec("T x", "T y", "y = min(x, 0);", "ambiguous"), type_values=("float",))
    assert "more than one instance of overloaded function" in errors
