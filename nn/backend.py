"""The one backend switch: NumPy on the CPU or CuPy on an NVIDIA GPU.

Everything in `nn` and `captioning` asks this module which array library to
use; no other module imports CuPy. Three ways set the same switch:

    nn.backend.use("cupy")            # in code, at any time
    NN_BACKEND=cupy python ...        # environment variable, read on first use
    python -m captioning ... --backend cupy   # every command line

Ops do not consult the switch for their inputs: they work on whatever arrays
they are given (`get_array_module(*arrays)`), and refuse a NumPy/CuPy mix with
a clear error instead of copying silently. The switch decides where NEW arrays
are made: parameters, random numbers, data batches (`xp()`, `asarray`, `rng`).

The hand-written CUDA kernels (nn.depthwise_cuda, nn.attention_cuda,
nn.lstm_cell) are module data, `KernelSpec`s, compiled here by
`elementwise_kernel` once per spec.

dtype policy: nothing here hard-codes float32. Layers keep the dtype they are
given (float32 for training, float64 for gradient checks); `default_float()`
is the dtype new parameters get and can be changed with `set_default_float`.
"""
import collections
import os

import numpy

__all__ = [
    "BackendError", "use", "name", "xp", "get_array_module", "is_cupy_array",
    "to_numpy", "asarray", "on_device_of", "rng", "scatter_add", "default_float",
    "set_default_float", "cupy_available", "synchronize", "use_gpu_kernels", "gpu_kernels_enabled",
    "device_memory_free", "KernelSpec", "elementwise_kernel",
]

CUPY_INSTALL_HELP = (
    "CuPy is needed for --backend cupy / NN_BACKEND=cupy. Install the wheel that "
    "matches your CUDA toolkit: `pip install cupy-cuda12x` for CUDA 12.x or "
    "`pip install cupy-cuda13x` for CUDA 13.x (or `pip install -e .[gpu]`), on a "
    "machine with an NVIDIA GPU and driver. Use --backend numpy to run on the CPU."
)


class BackendError(RuntimeError):
    """Raised when the requested backend cannot be used here."""


_state = {"name": None, "xp": None, "default_float": numpy.float32, "gpu_kernels": None}


def _import_cupy():
    """Import CuPy and check a GPU is visible; raise BackendError otherwise."""
    try:
        import cupy  # the only CuPy import in the project
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise BackendError(f"{CUPY_INSTALL_HELP} (import cupy failed: {exc})") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendError(f"{CUPY_INSTALL_HELP} (no usable GPU: {exc})") from exc
    if count < 1:
        raise BackendError(f"{CUPY_INSTALL_HELP} (no GPU is visible)")
    return cupy


def use(backend_name):
    """Switch the backend to "numpy" or "cupy"; returns the array module.

    Can be called at any time. Arrays made before the switch stay where they
    are: move a model with its `to_backend()` method.
    """
    key = str(backend_name).strip().lower()
    if key in ("numpy", "np", "cpu"):
        _state["name"], _state["xp"] = "numpy", numpy
    elif key in ("cupy", "cp", "gpu", "cuda"):
        _state["name"], _state["xp"] = "cupy", _import_cupy()
    else:
        raise ValueError(f"unknown backend {backend_name!r}: choose 'numpy' or 'cupy'")
    return _state["xp"]


def _ensure_initialised():
    if _state["xp"] is None:
        requested = os.environ.get("NN_BACKEND", "numpy") or "numpy"
        try:
            use(requested)
        except ValueError:
            raise BackendError(f"NN_BACKEND={requested!r} is not a backend: set it to numpy or cupy, "
                               "or unset it") from None


def name():
    """The current backend's name: "numpy" or "cupy"."""
    _ensure_initialised()
    return _state["name"]


def xp():
    """The current array module (numpy or cupy): where new arrays are made."""
    _ensure_initialised()
    return _state["xp"]


def cupy_available():
    """True when CuPy imports and a GPU is visible (never raises)."""
    try:
        _import_cupy()
        return True
    except BackendError:
        return False


def is_cupy_array(x):
    # Checked by type name so that this works without importing CuPy.
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays, op=None):
    """The array module (numpy or cupy) of the given arrays.

    None and scalars (Python's or NumPy's, e.g. numpy.float32(0.5), which CuPy
    arrays combine with as Python numbers) are ignored. Raises TypeError naming `op` when
    NumPy and CuPy arrays are mixed: a silent copy would hide a slow bug.
    With no arrays at all, returns the current backend's module.
    """
    kinds = set()
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool, complex, numpy.generic)):
            continue
        kinds.add("cupy" if is_cupy_array(a) else "numpy")
    if len(kinds) > 1:
        where = f"{op}: " if op else ""
        raise TypeError(
            f"{where}NumPy and CuPy arrays mixed in one call; move them to one backend "
            "first (nn.backend.asarray / to_numpy, or model.to_backend())")
    if kinds == {"cupy"}:
        if _state["name"] == "cupy":
            return _state["xp"]
        return _import_cupy()
    if kinds == {"numpy"}:
        return numpy
    return xp()


def to_numpy(x):
    """Return `x` as a NumPy array (copies from the GPU when needed)."""
    if is_cupy_array(x):
        return x.get()
    return numpy.asarray(x)


def asarray(x, dtype=None):
    """Return `x` as an array of the CURRENT backend (copying between devices), of `dtype` if given.

    A host array cast to a wider dtype on the way to the GPU crosses in its own
    dtype and is cast there: cupy.asarray(x, dtype) would cast on the CPU first
    and copy the wider array (a float16 feature batch: twice the bytes, and a
    slow float16 conversion on the CPU at every training step).
    """
    mod = xp()
    if mod is numpy:
        return numpy.asarray(to_numpy(x), dtype=dtype)
    if (dtype is not None and isinstance(x, numpy.ndarray)
            and x.dtype.itemsize < numpy.dtype(dtype).itemsize):
        return mod.asarray(x).astype(dtype)
    return mod.asarray(x, dtype=dtype)


def on_device_of(x, like):
    """`x` as an array of the same module (NumPy or CuPy) as `like`, whatever the
    current backend; `x` itself (no copy) when it is already there."""
    module = get_array_module(like)
    if get_array_module(x) is module:
        return x
    return module.asarray(to_numpy(x))


def rng(seed=None):
    """A seeded random Generator on the current backend.

    NumPy and CuPy generators give different numbers for the same seed; runs
    are reproducible on one backend.
    """
    return xp().random.default_rng(seed)


def scatter_add(target, indices, values):
    """target[indices] += values, accumulating repeated indices (in place).

    `np.add.at` on the CPU; on the GPU `cupy.add.at` (CuPy >= 13), falling back
    to `cupyx.scatter_add` on older CuPy (`cupy.scatter_add` no longer exists;
    `cupyx.scatter_add` is deprecated in CuPy 14). Used by the word-embedding
    backward pass.
    """
    mod = get_array_module(target, values, op="scatter_add")
    if mod is numpy or hasattr(mod.add, "at"):
        mod.add.at(target, indices, values)
    else:
        import cupyx  # part of CuPy; only reached when CuPy arrays are passed
        cupyx.scatter_add(target, indices, values)
    return target


def synchronize():
    """Wait for queued GPU work to finish (for honest timings); no-op on NumPy."""
    if _state["name"] == "cupy":
        _state["xp"].cuda.get_current_stream().synchronize()


def device_memory_free():
    """Bytes of free memory on the current GPU (CuPy backend), or None on NumPy."""
    if name() != "cupy":
        return None
    return int(_state["xp"].cuda.runtime.memGetInfo()[0])


# A CuPy ElementwiseKernel as data, under CuPy's own argument names: the kernel is
# cupy.ElementwiseKernel(**spec._asdict()). The tests hand the same spec to their CPU
# harness (tests/cuda_on_cpu.py), which runs its C++ with g++ and compiles it with nvcc.
KernelSpec = collections.namedtuple("KernelSpec", "in_params out_params operation name")

_elementwise_kernels = {}     # KernelSpec -> its cupy.ElementwiseKernel (a namedtuple is a dict key)


def elementwise_kernel(spec):
    """The cupy.ElementwiseKernel of a KernelSpec, built on first use and reused after.

    One object per spec serves every dtype: CuPy compiles the C++ at its first
    call for each type bound to T (float or double). Only for CuPy arrays.
    """
    kernel = _elementwise_kernels.get(spec)
    if kernel is None:
        kernel = _elementwise_kernels[spec] = _import_cupy().ElementwiseKernel(**spec._asdict())
    return kernel


def use_gpu_kernels(flag=True):
    """Switch the hand-written CUDA kernels (nn.depthwise_cuda, nn.attention_cuda) on or off for CuPy arrays.

    (The LSTM cell's fused kernels in nn.lstm_cell ran on an H100 and are always on for CuPy.)
    Beam search's top k by argmax passes on the GPU (captioning.decoding) waits for it too.

    Off by default: they have not yet run on a GPU (issue 17), and the plain CuPy
    path they replace is the reference their tests compare them with.
    NN_GPU_KERNELS=1 in the environment switches them on from the start.
    """
    _state["gpu_kernels"] = bool(flag)


def gpu_kernels_enabled():
    """True when `use_gpu_kernels(True)` or NN_GPU_KERNELS=1 asked for the CUDA kernels."""
    if _state["gpu_kernels"] is None:
        _state["gpu_kernels"] = os.environ.get("NN_GPU_KERNELS", "0").strip() == "1"
    return _state["gpu_kernels"]


def default_float():
    """The dtype given to newly created parameters (float32 unless changed)."""
    return _state["default_float"]


def set_default_float(dtype):
    """Set the dtype for new parameters, e.g. numpy.float64 for gradient checks."""
    dt = numpy.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"default float dtype must be a floating type, got {dt}")
    _state["default_float"] = dt.type
