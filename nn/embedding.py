"""Word embedding: the lookup of a vector per word id, and its backward pass (a scatter-add)."""
from . import backend
from .dense import _check_float, _check_ndim, _check_shape

__all__ = ["word_embedding_forward", "word_embedding_backward"]


def word_embedding_forward(x, W):
    """Look up the vector of every word: out[n, t] = W[x[n, t]].

    Inputs:
    - x: integer word indices, shape (N, T), each in [0, V)
    - W: word vectors, shape (V, D)
    Returns:
    - out: (N, T, D)
    - cache: (x, W) for the backward pass
    """
    op = "word_embedding_forward"
    xp = backend.get_array_module(x, W, op=op)
    if getattr(x, "dtype", None) is None or x.dtype.kind not in "iu":
        raise TypeError(f"{op}: word indices x must be an integer array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    _check_ndim(op, "x", x, 2, "(N, T)")
    _check_ndim(op, "W", W, 2, "(V, D)")
    _check_float(op, W=W)
    vocab_size = W.shape[0]
    if bool(((x < 0) | (x >= vocab_size)).any()):     # one device sync on CuPy, not two
        raise ValueError(f"{op}: word indices must lie in [0, {vocab_size}), got values in "
                         f"[{int(x.min())}, {int(x.max())}]")
    out = xp.take(W, x, axis=0)
    return out, (x, W)


def word_embedding_backward(dout, cache):
    """Backward pass of `word_embedding_forward`.

    Inputs:
    - dout: upstream gradient, shape (N, T, D)
    - cache: from the forward pass
    Returns:
    - dW: gradient of the word vectors, shape (V, D); a word used k times gets
      the sum of its k upstream gradients (a scatter-add)
    """
    x, W = cache
    xp = backend.get_array_module(dout, W, op="word_embedding_backward")
    _check_shape("word_embedding_backward", "dout", dout, x.shape + (W.shape[1],))
    dW = xp.zeros_like(W)
    backend.scatter_add(dW, x.reshape(-1), dout.reshape(-1, W.shape[1]))
    return dW
