"""Initial values of parameters, for `nn.layers` and the caption models alike, and
the checks every layer constructor makes of its arguments.

Weights are drawn from a normal distribution with standard deviation
1 / sqrt(fan_in) (fan_in = inputs feeding one output unit; this keeps
activations at roughly unit variance through a linear map, the scale
CS231n's captioning model uses), except convolutions, which use
sqrt(2 / fan_in) (He et al. 2015) because a ReLU-family activation follows
them, and word embeddings, which use EMBEDDING_STD. Biases start at zero,
batchnorm at gamma = 1, beta = 0.

Numbers are drawn by a NumPy generator on the CPU and then moved to the
current backend, so a seed gives the same initial model on NumPy and CuPy.
"""
import numpy

from . import backend

__all__ = ["EMBEDDING_STD", "generator", "normal", "fan_in_normal", "embedding_normal", "constant",
           "float_dtype", "positive_int", "pair"]

# Word vectors start small next to the unit-variance inputs a 1/sqrt(fan_in)
# layer expects, so that no word dominates the first LSTM inputs, but large
# enough to tell words apart.
EMBEDDING_STD = 0.1


def generator(seed, rng):
    """The generator a constructor draws from: `rng` if given, else NumPy's from `seed`."""
    if rng is not None and seed is not None:
        raise ValueError("give either seed= or rng=, not both")
    return rng if rng is not None else numpy.random.default_rng(seed)


def normal(gen, shape, std, dtype):
    """std * N(0, 1) samples of `shape`, as `dtype` on the current backend."""
    sample = gen.standard_normal(size=shape) * std
    return backend.asarray(sample, dtype=dtype)


def fan_in_normal(gen, shape, dtype, weight_scale=None):
    """A weight matrix (fan_in, fan_out) ~ N(0, 1 / fan_in), or N(0, weight_scale^2) when given."""
    if weight_scale is not None:
        return normal(gen, shape, weight_scale, dtype)
    sample = gen.standard_normal(size=shape) / numpy.sqrt(shape[0])
    return backend.asarray(sample, dtype=dtype)


def embedding_normal(gen, shape, dtype, weight_scale=None):
    """Word vectors (V, D) ~ N(0, EMBEDDING_STD^2), or N(0, weight_scale^2) when given."""
    return normal(gen, shape, EMBEDDING_STD if weight_scale is None else weight_scale, dtype)


def constant(shape, value, dtype):
    """An array of `shape` filled with `value`, as `dtype` on the current backend."""
    return backend.xp().full(shape, value, dtype=dtype)


def float_dtype(dtype):
    """`dtype` (default `backend.default_float()`) as a NumPy dtype; TypeError unless floating."""
    dtype = numpy.dtype(backend.default_float() if dtype is None else dtype)
    if dtype.kind != "f":
        raise TypeError(f"parameter dtype must be floating point, got {dtype}")
    return dtype


def positive_int(layer, name, value):
    """`value` as an int; ValueError naming `layer` and `name` unless it is a positive integer."""
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def pair(layer, name, value):
    """(a, b) from an int or a pair of positive ints (kernel sizes)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair, got {value!r}")
        return (positive_int(layer, name, value[0]), positive_int(layer, name, value[1]))
    value = positive_int(layer, name, value)
    return (value, value)
