import numpy
import pytest

from nn import backend
from nn.gradcheck import rel_error, rel_errors, eval_numerical_gradient, eval_numerical_gradient_array, directional_gradient_check


def test_use_switches_at_run_time():
    assert backend.use("numpy") is numpy
    assert backend.name() == "numpy"
    assert backend.xp() is numpy


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        backend.use("tensorflow")


def test_cupy_missing_says_how_to_install():
    if backend.cupy_available():
        pytest.skip("CuPy is usable here")
    with pytest.raises(backend.BackendError, match="pip install cupy-cuda1"):
        backend.use("cupy")


def test_env_variable_sets_the_backend(monkeypatch):
    monkeypatch.setenv("NN_BACKEND", "numpy")
    monkeypatch.setitem(backend._state, "xp", None)
    assert backend.name() == "numpy"
    monkeypatch.setenv("NN_BACKEND", "bogus")
    monkeypatch.setitem(backend._state, "xp", None)
    with pytest.raises(backend.BackendError, match="NN_BACKEND='bogus' is not a backend"):
        backend.xp()
    backend.use("numpy")


def test_get_array_module_refuses_a_mix(xp):
    if xp is numpy:
        pytest.skip("a mix needs CuPy")
    with pytest.raises(TypeError, match="affine_forward: NumPy and CuPy arrays mixed"):
        backend.get_array_module(numpy.zeros(2), xp.zeros(2), op="affine_forward")


def test_get_array_module_and_to_numpy(xp):
    a = xp.arange(3.0)
    assert backend.get_array_module(a, None, 2.0) is xp
    assert backend.get_array_module(a, numpy.float32(2.0), numpy.int64(3)) is xp   # scalars, not arrays
    out = backend.to_numpy(a)
    assert isinstance(out, numpy.ndarray) and out.tolist() == [0.0, 1.0, 2.0]
    b = backend.asarray([1, 2], dtype=numpy.float64)
    assert backend.get_array_module(b) is xp and b.dtype == numpy.float64


def test_on_device_of_follows_the_other_array(xp):
    host = numpy.arange(3.0)
    here = xp.arange(2.0)
    moved = backend.on_device_of(host, here)
    assert backend.get_array_module(moved) is xp and backend.to_numpy(moved).tolist() == [0.0, 1.0, 2.0]
    assert backend.on_device_of(here, here) is here                  # already there: no copy
    assert backend.get_array_module(backend.on_device_of(here, host)) is numpy


class _RecordingDevice:
    """Stands in for CuPy in `backend.asarray`: records the dtype in which each host array crosses
    to the device (cupy.asarray(x, dtype) casts on the host, then copies)."""

    def __init__(self):
        self.received = []

    def asarray(self, x, dtype=None):
        crossing = numpy.array(x, dtype=dtype)
        self.received.append(crossing.dtype)
        return crossing


def test_asarray_sends_the_narrower_dtype_to_the_gpu(monkeypatch):
    device = _RecordingDevice()
    monkeypatch.setattr(backend, "xp", lambda: device)
    half = numpy.random.default_rng(0).standard_normal((4, 3)).astype(numpy.float16)
    widened = backend.asarray(half, dtype=numpy.float32)       # the feature cache: cast on the GPU
    assert device.received == [numpy.float16]
    assert widened.dtype == numpy.float32 and (widened == half.astype(numpy.float32)).all()
    narrowed = backend.asarray(half.astype(numpy.float64), dtype=numpy.float32)   # cast on the host
    assert device.received[-1] == numpy.float32 and (narrowed == widened).all()
    backend.asarray(half)                                      # no dtype: as it is
    assert device.received[-1] == numpy.float16


def test_rng_is_seeded_per_backend(xp):
    a = backend.to_numpy(backend.rng(3).standard_normal(5))
    b = backend.to_numpy(backend.rng(3).standard_normal(5))
    c = backend.to_numpy(backend.rng(4).standard_normal(5))
    assert numpy.array_equal(a, b) and not numpy.array_equal(a, c)


def test_scatter_add_accumulates_repeats(xp):
    target = xp.zeros((4, 2))
    backend.scatter_add(target, xp.asarray([1, 1, 3]), xp.ones((3, 2)))
    assert backend.to_numpy(target).tolist() == [[0, 0], [2, 2], [0, 0], [1, 1]]


def test_default_float_policy():
    assert backend.default_float() is numpy.float32
    backend.set_default_float(numpy.float64)
    assert backend.default_float() is numpy.float64
    with pytest.raises(TypeError):
        backend.set_default_float(numpy.int32)


def test_elementwise_kernel_builds_each_spec_once_with_cupys_argument_names(monkeypatch):
    built = []

    class FakeCupy:                                    # records what cupy.ElementwiseKernel would get
        @staticmethod
        def ElementwiseKernel(*args, **kwargs):
            built.append((args, kwargs))
            return object()
    monkeypatch.setattr(backend, "_import_cupy", lambda: FakeCupy)
    monkeypatch.setattr(backend, "_elementwise_kernels", {})
    spec = backend.KernelSpec("T x", "T y", "y = x + 1;", "add_one")
    kernel = backend.elementwise_kernel(spec)
    assert built == [((), {"in_params": "T x", "out_params": "T y", "operation": "y = x + 1;", "name": "add_one"})]
    assert backend.elementwise_kernel(backend.KernelSpec(*spec)) is kernel and len(built) == 1
    assert backend.elementwise_kernel(spec._replace(name="add_one_again")) is not kernel and len(built) == 2


def test_rel_error():
    assert rel_error(numpy.array([1.0]), numpy.array([1.0])) == 0.0
    assert abs(rel_error(numpy.array([1.0]), numpy.array([3.0])) - 0.5) < 1e-12
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(numpy.zeros(2), numpy.zeros(3))
    # entries below the floor are held to |a - b| / floor: rounding on a tiny entry stops counting
    gradient, rounded = numpy.array([1.0, 1e-5]), numpy.array([1.0, 1e-5 + 4e-10])
    assert rel_error(gradient, rounded) > 1e-5
    assert rel_error(gradient, rounded, floor=1e-4) == pytest.approx(4e-6)
    assert rel_error(gradient, gradient * [1.0001, 1.0], floor=1e-4) > 1e-5   # a real error still shows
    each = rel_errors(gradient, rounded, floor=1e-4)                          # per entry, where it peaks
    assert each.shape == (2,) and each[0] == 0.0 and each[1] == pytest.approx(4e-6)
    assert rel_error(numpy.zeros((0, 3)), numpy.zeros((0, 3))) == 0.0


def test_numerical_gradients_of_known_functions(xp):
    x = xp.asarray(numpy.array([[1.0, -2.0], [0.5, 3.0]]))
    g = eval_numerical_gradient(lambda: float(xp.sum(x ** 3)), x)
    assert rel_error(g, 3 * x ** 2) < 1e-8
    dout = xp.asarray(numpy.array([[1.0, 2.0], [3.0, 4.0]]))
    g = eval_numerical_gradient_array(lambda v: xp.sin(v), x, dout)
    assert rel_error(g, xp.cos(x) * dout) < 1e-8


def test_directional_check_catches_a_wrong_gradient(xp):
    x = xp.asarray(numpy.linspace(-1, 1, 12).reshape(3, 4))
    f = lambda: float(xp.sum(x ** 2))
    *_, good = directional_gradient_check(f, [x], [2 * x])
    *_, bad = directional_gradient_check(f, [x], [2.2 * x])
    assert good < 1e-8 and bad > 1e-3


def test_directional_check_restores_its_inputs_exactly(xp):
    x = xp.asarray(numpy.random.default_rng(0).standard_normal((50, 50)))
    before = x.copy()
    directional_gradient_check(lambda: float(xp.sum(xp.sin(x))), [x], [xp.cos(x)])
    assert bool((x == before).all())
