"""Fully connected layer (also at every time step of a sequence), elementwise activations and dropout.

Every op is a CS231n-style pair: `*_forward(...) -> (out, cache)` and
`*_backward(dout, cache) -> grads`. The ops work on NumPy or CuPy arrays (the
module is taken from the inputs) and keep the dtype they are given.
"""
import math
import numbers

from .backend import get_array_module

__all__ = [
    "affine_forward", "affine_backward",
    "relu_forward", "relu_backward",
    "relu6_forward", "relu6_backward",
    "sigmoid", "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "dropout_forward", "dropout_backward",
    "temporal_affine_forward", "temporal_affine_backward",
]


# ---------------------------------------------------------------- input checks
# Small helpers shared by the nn op modules (conv, pool, normalization import
# them): they turn a bad input into an error that names the op, the expected
# and the actual, instead of a broadcasting error from deep inside NumPy.

def _is_int(value):
    """A Python or NumPy integer (numpy.int64(2) counts; True does not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_ndim(op, name, array, ndim, layout):
    if getattr(array, "ndim", None) != ndim:
        actual = getattr(array, "shape", type(array).__name__)
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {actual}")


def _check_shape(op, name, array, expected):
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(array.shape)}")


def _check_float(op, **arrays):
    """All given arrays (None skipped) are floating point and of one dtype."""
    dtypes = {}
    for name, array in arrays.items():
        if array is None:
            continue
        dtype = getattr(array, "dtype", None)
        if dtype is None or dtype.kind != "f":
            raise TypeError(f"{op}: {name} must be a floating-point array, got "
                            f"{dtype if dtype is not None else type(array).__name__}")
        dtypes[name] = dtype
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: inputs must share one dtype (no silent promotion), got {listed}; "
                        "cast with .astype()")


# ---------------------------------------------------------------- affine

def affine_forward(x, w, b):
    """Fully connected layer: out = x.reshape(N, D) @ w + b.

    Inputs:
    - x: (N, d_1, ..., d_k) input; each example is flattened to D = d_1 * ... * d_k
    - w: (D, M) weights
    - b: (M,) biases
    Returns:
    - out: (N, M)
    - cache: (x, w) for the backward pass
    """
    get_array_module(x, w, b, op="affine_forward")
    _check_float("affine_forward", x=x, w=w, b=b)
    if getattr(x, "ndim", 0) < 1:
        raise ValueError("affine_forward: x must have a batch axis, shape (N, d_1, ..., d_k)")
    _check_ndim("affine_forward", "w", w, 2, "(D, M)")
    n = x.shape[0]
    d = math.prod(x.shape[1:])
    if w.shape[0] != d:
        raise ValueError(f"affine_forward: x of shape {x.shape} flattens to (N, {d}) but w has shape "
                         f"{w.shape}; expected w of shape ({d}, M)")
    _check_shape("affine_forward", "b", b, (w.shape[1],))
    out = x.reshape(n, d) @ w
    out += b
    return out, (x, w)


def affine_backward(dout, cache):
    """Backward pass of `affine_forward`.

    Inputs:
    - dout: (N, M) upstream gradient
    - cache: (x, w) from the forward pass
    Returns:
    - dx: (N, d_1, ..., d_k), same shape as x
    - dw: (D, M)
    - db: (M,)
    """
    x, w = cache
    x2d = x.reshape(x.shape[0], -1)
    dx = (dout @ w.T).reshape(x.shape)
    dw = x2d.T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


# ---------------------------------------------------------------- activations

def relu_forward(x):
    """Rectified linear unit, out = max(0, x).

    Inputs:
    - x: array of any shape
    Returns:
    - out: same shape as x
    - cache: x
    """
    xp = get_array_module(x, op="relu_forward")
    _check_float("relu_forward", x=x)
    return xp.maximum(x, 0), x


def relu_backward(dout, cache):
    """Backward pass of `relu_forward`: the gradient flows where x > 0.

    Inputs:
    - dout: upstream gradient, same shape as x
    - cache: x from the forward pass
    Returns:
    - dx: same shape as x
    """
    x = cache
    return dout * (x > 0)


def relu6_forward(x):
    """ReLU6 (MobileNet, EfficientNet-Lite): out = min(max(0, x), 6).

    Inputs:
    - x: array of any shape
    Returns:
    - out: same shape as x
    - cache: x
    """
    xp = get_array_module(x, op="relu6_forward")
    _check_float("relu6_forward", x=x)
    return xp.clip(x, 0, 6), x


def relu6_backward(dout, cache):
    """Backward pass of `relu6_forward`: the gradient flows where 0 < x < 6.

    Inputs:
    - dout: upstream gradient, same shape as x
    - cache: x from the forward pass
    Returns:
    - dx: same shape as x
    """
    x = cache
    return dout * ((x > 0) & (x < 6))


def sigmoid(x):
    """Numerically stable logistic function 1 / (1 + exp(-x)), any shape, keeps dtype.

    exp is only ever taken of -|x| <= 0, so it never overflows:
    for x >= 0, 1 / (1 + e^-x); for x < 0, e^x / (1 + e^x) (the same value).
    """
    xp = get_array_module(x, op="sigmoid")
    z = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))


def sigmoid_forward(x):
    """Logistic sigmoid.

    Inputs:
    - x: array of any shape
    Returns:
    - out: same shape as x, values in (0, 1)
    - cache: out (the derivative is out * (1 - out))
    """
    _check_float("sigmoid_forward", x=x)
    out = sigmoid(x)
    return out, out


def sigmoid_backward(dout, cache):
    """Backward pass of `sigmoid_forward`.

    Inputs:
    - dout: upstream gradient, same shape as x
    - cache: out from the forward pass
    Returns:
    - dx: same shape as x
    """
    out = cache
    return dout * out * (1 - out)


def tanh_forward(x):
    """Hyperbolic tangent.

    Inputs:
    - x: array of any shape
    Returns:
    - out: same shape as x, values in (-1, 1)
    - cache: out (the derivative is 1 - out**2)
    """
    xp = get_array_module(x, op="tanh_forward")
    _check_float("tanh_forward", x=x)
    out = xp.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    """Backward pass of `tanh_forward`.

    Inputs:
    - dout: upstream gradient, same shape as x
    - cache: out from the forward pass
    Returns:
    - dx: same shape as x
    """
    out = cache
    return dout * (1 - out * out)


# ---------------------------------------------------------------- dropout

def dropout_forward(x, dropout_param):
    """Inverted dropout.

    `p` is the probability of DROPPING a unit (the modern meaning, as in
    PyTorch's nn.Dropout(p); note that the CS231n assignment used p as the
    probability of keeping one). In training each unit is zeroed with
    probability p and the survivors are scaled by 1 / (1 - p), so that the
    expected activation is unchanged and test time needs no rescaling.

    Inputs:
    - x: array of any shape
    - dropout_param: dict with keys
      - p: drop probability, 0 <= p < 1
      - mode: 'train' (drop) or 'test' (identity)
      - seed: optional int; with a seed the mask is the same on every call
        (for gradient checks). The mask is drawn on the backend of x.
    Returns:
    - out: same shape as x
    - cache: (dropout_param, mask); mask is None in test mode
    """
    xp = get_array_module(x, op="dropout_forward")
    _check_float("dropout_forward", x=x)
    p = dropout_param.get("p", 0.5)
    mode = dropout_param.get("mode", "train")
    if not 0 <= p < 1:
        raise ValueError(f"dropout_forward: p is the drop probability and must be in [0, 1), got {p}")
    if mode not in ("train", "test"):
        raise ValueError(f"dropout_forward: mode must be 'train' or 'test', got {mode!r}")
    if mode == "test":
        return x, (dropout_param, None)
    gen = xp.random.default_rng(dropout_param.get("seed"))
    keep = gen.random(x.shape) >= p
    mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, (dropout_param, mask)


def dropout_backward(dout, cache):
    """Backward pass of `dropout_forward`.

    Inputs:
    - dout: upstream gradient, same shape as x
    - cache: (dropout_param, mask) from the forward pass
    Returns:
    - dx: same shape as x (dout * mask in training, dout at test time)
    """
    _, mask = cache
    if mask is None:
        return dout
    return dout * mask


# ---------------------------------------------------------------- temporal affine

def temporal_affine_forward(x, w, b):
    """The same affine layer applied at every time step: out[n, t] = x[n, t] w + b.

    Inputs:
    - x: (N, T, D)
    - w: (D, M)
    - b: (M,)
    Returns:
    - out: (N, T, M)
    - cache: (x, w) for the backward pass
    """
    op = "temporal_affine_forward"
    get_array_module(x, w, b, op=op)
    _check_float(op, x=x, w=w, b=b)
    _check_ndim(op, "x", x, 3, "(N, T, D)")
    _check_ndim(op, "w", w, 2, "(D, M)")
    N, T, D = x.shape
    _check_shape(op, "w", w, (D, w.shape[1]))
    _check_shape(op, "b", b, (w.shape[1],))
    out = (x.reshape(N * T, D) @ w).reshape(N, T, w.shape[1])
    out += b
    return out, (x, w)


def temporal_affine_backward(dout, cache):
    """Backward pass of `temporal_affine_forward`.

    Inputs:
    - dout: upstream gradient, shape (N, T, M)
    - cache: from the forward pass
    Returns a tuple of:
    - dx: (N, T, D)
    - dw: (D, M)
    - db: (M,)
    """
    x, w = cache
    N, T, D = x.shape
    M = w.shape[1]
    _check_shape("temporal_affine_backward", "dout", dout, (N, T, M))
    dout_flat = dout.reshape(N * T, M)
    dx = (dout_flat @ w.T).reshape(N, T, D)
    return dx, x.reshape(N * T, D).T @ dout_flat, dout_flat.sum(axis=0)
