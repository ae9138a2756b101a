"""Run the body of a CuPy ElementwiseKernel on the CPU, and compile it for the GPU with nvcc.

Our CUDA kernels (nn.depthwise_cuda, nn.attention_cuda, nn.lstm_cell) are
CuPy ElementwiseKernels written down as `nn.backend.KernelSpec`s (in_params,
out_params, operation, name): a list of input and output parameters and a few
lines of C++ run once per index `i`. Without a GPU CuPy cannot run them, but
the C++ itself can be checked here, from the very same spec:

- `ElementwiseOnCPU(spec)` wraps the operation in the same loop CuPy
  generates (`for i: const T x = x[i]; T &out = out[i]; <operation>`),
  compiles it with g++ and calls it through ctypes on NumPy arrays, so a test
  can compare the kernel's arithmetic with the plain NumPy path on the CPU.
  Arguments follow CuPy's rules for what we use: `raw` arrays are flat
  C-contiguous buffers indexed by the body; the other arrays are broadcast
  together and read/written at index `i`; Python numbers are scalars; the type
  placeholder `T` takes the dtype of the first array bound to it; outputs are
  passed in (as CuPy allows) or allocated. `cpu_elementwise_kernel(spec)`
  keeps one per spec: monkeypatched over `nn.backend.elementwise_kernel`, it
  makes a module's CuPy path run on NumPy arrays.
- `nvcc_compile_errors(spec)` compiles the same loop as a `__global__`
  function for the H100/H200 architecture (sm_90) with no host headers (NVRTC,
  which CuPy uses, has none) and returns nvcc's errors, or "" when it
  compiles.

What this does not check: CuPy's own generated code around the body, and
anything about speed. The kernels stay off by default until a GPU run has
passed their CuPy tests.
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy

__all__ = ["gxx_available", "nvcc_available", "ElementwiseOnCPU", "cpu_elementwise_kernel", "nvcc_compile_errors",
           "parse_params"]

_CONCRETE = {
    "bool": (numpy.bool_, "bool"), "int8": (numpy.int8, "signed char"), "int16": (numpy.int16, "short"),
    "int32": (numpy.int32, "int"), "int64": (numpy.int64, "long long"), "uint8": (numpy.uint8, "unsigned char"),
    "uint32": (numpy.uint32, "unsigned int"), "uint64": (numpy.uint64, "unsigned long long"),
    "float32": (numpy.float32, "float"), "float64": (numpy.float64, "double"),
}
_C_NAME = {numpy.dtype(dtype): c_name for dtype, c_name in _CONCRETE.values()}

# What g++ needs to read device code: CUDA's math functions are overloaded for
# float and double in the global namespace; atomicAdd is a plain add here (one thread).
_CPU_PRELUDE = """
#include <cmath>
#include <cstddef>
#include <algorithm>
using std::min; using std::max; using std::tanh; using std::exp; using std::log; using std::sqrt;
using std::fabs; using std::floor; using std::ceil;
template <typename U> U atomicAdd(U* address, U value) { U old = *address; *address += value; return old; }
"""

_cache_dir = None


def gxx_available():
    return shutil.which("g++") is not None


def nvcc_available():
    return shutil.which("nvcc") is not None


def parse_params(params):
    """CuPy's parameter string -> [(is_raw, type_name, name)], e.g. "raw T x, int64 n"."""
    parsed = []
    for part in (p.strip() for p in params.split(",") if p.strip()):
        words = part.split()
        is_raw = words[0] == "raw"
        if is_raw:
            words = words[1:]
        if len(words) != 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[1]):
            raise ValueError(f"cannot read the kernel parameter {part!r}")
        parsed.append((is_raw, words[0], words[1]))
    return parsed


def _loop_source(in_params, out_params, operation, c_types, device):
    """The C++ of CuPy's loop around `operation`; c_types maps type names (T, ...) to C types."""
    args, loads = [], []
    for role, params in (("in", in_params), ("out", out_params)):
        for is_raw, type_name, name in params:
            c_type = c_types[type_name]
            if is_raw:
                args.append(f"{c_type}* {name}")
            elif role == "in":
                args.append(f"const {c_type}* _p_{name}")
                loads.append(f"const {c_type} {name} = _p_{name}[_b_{name} ? i : 0];")
                args.append(f"bool _b_{name}")
            else:
                args.append(f"{c_type}* _p_{name}")
                loads.append(f"{c_type} &{name} = _p_{name}[i];")
    typedefs = "".join(f"typedef {c} {t};\n" for t, c in c_types.items() if t not in _CONCRETE)
    signature = ", ".join(["ptrdiff_t _n"] + args)
    body = "\n        ".join(loads) + "\n        {\n" + operation + "\n        }"
    if device:
        return (typedefs + f'extern "C" __global__ void _kernel({signature}) {{\n'
                "    for (ptrdiff_t i = blockIdx.x * (ptrdiff_t)blockDim.x + threadIdx.x; i < _n;\n"
                "         i += (ptrdiff_t)blockDim.x * gridDim.x) {\n"
                f"        {body}\n    }}\n}}\n")
    return (_CPU_PRELUDE + typedefs + f'extern "C" void _kernel({signature}) {{\n'
            "    for (ptrdiff_t i = 0; i < _n; ++i) {\n"
            f"        {body}\n    }}\n}}\n")


def _build_dir():
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = tempfile.mkdtemp(prefix="cuda_on_cpu_")
    return _cache_dir


class ElementwiseOnCPU:
    """A CuPy ElementwiseKernel's operation compiled with g++ and run on NumPy arrays (module docstring)."""

    def __init__(self, spec):
        """spec: a KernelSpec (in_params, out_params, operation, name), as nn.backend compiles it."""
        self.in_params = parse_params(spec.in_params)
        self.out_params = parse_params(spec.out_params)
        self.operation = spec.operation
        self.name = spec.name
        self._libraries = {}

    def _c_types(self, values):
        """Type placeholder -> C type, from the dtypes of the arrays bound to it."""
        c_types = {}
        for (is_raw, type_name, name), value in zip(self.in_params + self.out_params, values):
            if type_name in _CONCRETE:
                c_types[type_name] = _CONCRETE[type_name][1]
            elif type_name not in c_types and isinstance(value, numpy.ndarray):
                c_types[type_name] = _C_NAME[value.dtype]
        for is_raw, type_name, name in self.in_params + self.out_params:
            if type_name not in c_types:
                raise TypeError(f"{self.name}: no array fixes the type {type_name} (of {name})")
        return c_types

    def _library(self, c_types):
        key = tuple(sorted(c_types.items()))
        if key not in self._libraries:
            source = _loop_source(self.in_params, self.out_params, self.operation, c_types, device=False)
            digest = hashlib.sha1(source.encode()).hexdigest()[:16]
            path = os.path.join(_build_dir(), f"{self.name}_{digest}.so")
            if not os.path.exists(path):
                cpp = path[:-3] + ".cpp"
                with open(cpp, "w") as f:
                    f.write(source)
                result = subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", path, cpp],
                                        capture_output=True, text=True)
                if result.returncode:
                    raise RuntimeError(f"{self.name}: g++ failed on the kernel:\n{result.stderr}\n{source}")
            self._libraries[key] = ctypes.CDLL(path)._kernel
        return self._libraries[key]

    def __call__(self, *args, size=None):
        """Run over the broadcast shape of the non-raw arrays (or `size` when all are raw); return the outputs."""
        n_in, n_out = len(self.in_params), len(self.out_params)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"{self.name}: {n_in} inputs (and optionally {n_out} outputs), got {len(args)}")
        params = self.in_params + self.out_params
        values = list(args)
        c_types = self._c_types(values)
        dtypes = {t: numpy.dtype(next(d for d, c in _CONCRETE.values() if c == c_name))
                  for t, c_name in c_types.items()}
        elementwise = [numpy.asarray(v) for (raw, _, _), v in zip(params, values)
                       if not raw and isinstance(v, numpy.ndarray)]
        shape = numpy.broadcast_shapes(*(a.shape for a in elementwise)) if elementwise else None
        if shape is None:
            if size is None:
                raise TypeError(f"{self.name}: every array is raw, so pass size=")
            shape = (size,)
        if len(values) == n_in:
            values += [numpy.empty(shape, dtype=dtypes[t]) for _, t, _ in self.out_params]
        count = int(numpy.prod(shape)) if size is None else size
        c_args, keep = [ctypes.c_ssize_t(count)], []
        for index, ((is_raw, type_name, name), value) in enumerate(zip(params, values)):
            output = index >= n_in
            if isinstance(value, numpy.ndarray):
                if value.dtype != dtypes[type_name]:
                    raise TypeError(f"{self.name}: {name} is {value.dtype}, expected {dtypes[type_name]}")
                if output:
                    if not value.flags.c_contiguous or (not is_raw and value.shape != shape):
                        raise ValueError(f"{self.name}: output {name} must be C-contiguous of shape {shape}")
                    array = value
                elif is_raw:
                    array = numpy.ascontiguousarray(value)
                else:
                    array = numpy.ascontiguousarray(numpy.broadcast_to(value, shape))
                keep.append(array)
                c_args.append(array.ctypes.data_as(ctypes.c_void_p))
                if not is_raw and not output:
                    c_args.append(ctypes.c_bool(True))
            else:                       # a Python number: one value for every i
                if is_raw:
                    raise TypeError(f"{self.name}: raw parameter {name} needs an array")
                scalar = numpy.array([value], dtype=dtypes[type_name])
                keep.append(scalar)
                c_args.append(scalar.ctypes.data_as(ctypes.c_void_p))
                c_args.append(ctypes.c_bool(False))
        self._library(c_types)(*c_args)
        outputs = values[n_in:]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


_cpu_kernels = {}      # KernelSpec -> its ElementwiseOnCPU, for the whole test run


def cpu_elementwise_kernel(spec):
    """`nn.backend.elementwise_kernel` on the CPU: the spec's ElementwiseOnCPU, built once per spec."""
    if spec not in _cpu_kernels:
        _cpu_kernels[spec] = ElementwiseOnCPU(spec)
    return _cpu_kernels[spec]


def nvcc_compile_errors(spec, type_values=("float", "double"), arch="sm_90"):
    """Compile a KernelSpec's loop as CUDA for each type of T; nvcc's error text, or "" when all compile."""
    in_parsed, out_parsed = parse_params(spec.in_params), parse_params(spec.out_params)
    placeholders = sorted({t for _, t, _ in in_parsed + out_parsed if t not in _CONCRETE})
    errors = []
    for c_type in type_values:
        c_types = {t: _CONCRETE[t][1] for _, t, _ in in_parsed + out_parsed if t in _CONCRETE}
        c_types.update({t: c_type for t in placeholders})
        source = "typedef long ptrdiff_t;\n" + _loop_source(in_parsed, out_parsed, spec.operation, c_types, device=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.cu")
            with open(path, "w") as f:
                f.write(source)
            # -cubin: device code only, through ptxas (a third of the time of -c, which also builds host code)
            result = subprocess.run(["nvcc", f"-arch={arch}", "-cubin", path, "-o", os.path.join(tmp, "kernel.cubin")],
                                    capture_output=True, text=True)
        if result.returncode:
            errors.append(f"T = {c_type}:\n{result.stderr}")
    return "\n".join(errors)
