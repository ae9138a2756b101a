"""Numerical gradient checking: the proof that a hand-written backward is right.

A backward pass is checked against centered finite differences

    df/dx_i ~= (f(x + h e_i) - f(x - h e_i)) / (2h)

computed in float64. Works on NumPy and CuPy arrays alike (iterates with
`numpy.ndindex`, copies every output before differencing because ops may
return views or reuse buffers).

For tensors too large to difference element by element there is a
directional check: pick one random direction v for all inputs together and
compare (f(x + hv) - f(x - hv)) / 2h with sum_i <grad_i, v_i>.
"""
import numpy

from . import backend

__all__ = [
    "rel_error", "eval_numerical_gradient", "eval_numerical_gradient_array",
    "directional_gradient_check",
]


def rel_error(a, b, floor=1e-8):
    """Largest elementwise relative error max(|a-b| / max(floor, |a|+|b|)).

    Entries with |a|+|b| below `floor` are held to |a-b| / floor, an absolute
    tolerance: a numerical gradient's rounding error (about eps * |f| / h per
    entry) would dominate their relative error. The default 1e-8 is CS231n's;
    a check of a whole model with a large loss may justify a larger floor.
    """
    errors = rel_errors(a, b, floor, op="rel_error")
    return float(errors.max()) if errors.size else 0.0


def rel_errors(a, b, floor=1e-8, op="rel_errors"):
    """Each entry's relative error |a-b| / max(floor, |a|+|b|), a float64 NumPy array of a's shape
    (to find where the worst one is; `rel_error` is its maximum)."""
    a = backend.to_numpy(a).astype(numpy.float64)
    b = backend.to_numpy(b).astype(numpy.float64)
    if a.shape != b.shape:
        raise ValueError(f"{op}: shapes differ, {a.shape} vs {b.shape}")
    return numpy.abs(a - b) / numpy.maximum(floor, numpy.abs(a) + numpy.abs(b))


def eval_numerical_gradient(f, x, h=1e-5):
    """Numerical gradient of a scalar function f at x (x is perturbed in place).

    Inputs:
    - f: callable taking no arguments (it reads x) and returning a float
    - x: float64 array of any shape (NumPy or CuPy)
    Returns: grad, array like x
    """
    xp = backend.get_array_module(x)
    grad = xp.zeros_like(x)
    for ix in numpy.ndindex(*x.shape):
        old = float(x[ix])
        x[ix] = old + h
        fplus = float(f())
        x[ix] = old - h
        fminus = float(f())
        x[ix] = old
        grad[ix] = (fplus - fminus) / (2 * h)
    return grad


def eval_numerical_gradient_array(f, x, dout, h=1e-5):
    """Numerical gradient of sum(f(x) * dout) for an array-valued f.

    Inputs:
    - f: callable f(x) -> array (it may also read x directly)
    - x: float64 array of any shape, perturbed in place and restored
    - dout: upstream gradient, same shape as f(x)
    Returns: grad, array like x
    """
    xp = backend.get_array_module(x, dout)
    grad = xp.zeros_like(x)
    for ix in numpy.ndindex(*x.shape):
        old = float(x[ix])
        x[ix] = old + h
        pos = f(x).copy()
        x[ix] = old - h
        neg = f(x).copy()
        x[ix] = old
        grad[ix] = float(xp.sum((pos - neg) * dout)) / (2 * h)
    return grad


def directional_gradient_check(f, inputs, grads, h=1e-5, seed=0):
    """Compare analytic gradients with a finite difference along one random direction.

    Inputs:
    - f: callable taking no arguments, returning a scalar loss computed from `inputs`
    - inputs: list of float64 arrays that f reads (perturbed in place and restored)
    - grads: list of analytic gradients d loss / d input, same shapes as inputs
    Returns: (numeric, analytic, relative error) of the directional derivative
    """
    xp = backend.get_array_module(*inputs)
    gen = numpy.random.default_rng(seed)
    directions = [xp.asarray(gen.standard_normal(x.shape)) for x in inputs]
    saved = [x.copy() for x in inputs]            # restored exactly (x + hv - 2hv + hv may round)
    for x, v in zip(inputs, directions):
        x += h * v
    fplus = float(f())
    for x, s, v in zip(inputs, saved, directions):
        xp.subtract(s, h * v, out=x)
    fminus = float(f())
    for x, s in zip(inputs, saved):
        x[...] = s
    numeric = (fplus - fminus) / (2 * h)
    analytic = float(sum(float(xp.sum(g * v)) for g, v in zip(grads, directions)))
    err = abs(numeric - analytic) / max(1e-8, abs(numeric) + abs(analytic))
    return numeric, analytic, err
