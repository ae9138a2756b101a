"""Max, average and global average pooling over NCHW images.

Windows are pool_height x pool_width, moved by `stride`; rows and columns a
stride leaves over at the bottom/right are ignored (as in PyTorch). Windows
may overlap (stride < pool size).

Vectorised two ways, never looping over pixels:
- average pooling with non-overlapping windows that tile the image (stride ==
  pool size, sizes divisible): reshape (N, C, H, W) -> (N, C, H/ph, ph, W/pw, pw)
  and reduce over the two window axes, no copy;
- max pooling, and average pooling otherwise: loop over the ph * pw positions
  inside the window, each a strided slice of the whole batch (the same trick
  as im2col in conv.py).

Max pooling sends the gradient of each window to its FIRST largest entry
only (ties are common after a ReLU: sending it to every tied entry would
multiply it).
"""
from .backend import get_array_module
from .dense import _check_float, _check_ndim, _is_int

__all__ = [
    "max_pool_forward", "max_pool_backward",
    "avg_pool_forward", "avg_pool_backward",
    "global_avg_pool_forward", "global_avg_pool_backward",
]


def _pool_geometry(op, x, pool_param):
    """Validate; return xp, pool_height, pool_width, stride, H_out, W_out."""
    xp = get_array_module(x, op=op)
    _check_float(op, x=x)
    _check_ndim(op, "x", x, 4, "(N, C, H, W)")
    missing = [k for k in ("pool_height", "pool_width", "stride") if k not in pool_param]
    if missing:
        raise ValueError(f"{op}: pool_param needs keys pool_height, pool_width, stride; missing {missing}")
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    for key, value in (("pool_height", ph), ("pool_width", pw), ("stride", stride)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{op}: {key} must be a positive int, got {value!r}")
    ph, pw, stride = int(ph), int(pw), int(stride)
    h, w = x.shape[2:]
    if ph > h or pw > w:
        raise ValueError(f"{op}: a {ph}x{pw} pooling window does not fit the input {h}x{w} "
                         f"(x {tuple(x.shape)})")
    return xp, ph, pw, stride, (h - ph) // stride + 1, (w - pw) // stride + 1


def _tiles(x, ph, pw, stride):
    """True when the windows tile the image exactly (reshape trick applies)."""
    return stride == ph == pw and x.shape[2] % ph == 0 and x.shape[3] % pw == 0


def _tap(a, i, j, h_out, w_out, stride):
    """The (N, C, h_out, w_out) slice of `a` holding window position (i, j) of every window."""
    return a[:, :, i:i + stride * (h_out - 1) + 1:stride, j:j + stride * (w_out - 1) + 1:stride]


def max_pool_forward(x, pool_param):
    """Max pooling.

    Inputs:
    - x: (N, C, H, W)
    - pool_param: dict with 'pool_height', 'pool_width', 'stride' (ints)
    Returns:
    - out: (N, C, H_out, W_out), H_out = (H - pool_height) // stride + 1,
      W_out = (W - pool_width) // stride + 1
    - cache: (x, out, pool geometry)
    """
    xp, ph, pw, stride, h_out, w_out = _pool_geometry("max_pool_forward", x, pool_param)
    # Always the window-position loop, even when windows tile the image: NumPy's
    # .max over the reshaped window axes is ~36x slower than ph * pw maximum
    # calls on strided slices (2x2 pooling of (32, 16, 64, 64): 77 ms vs 2 ms).
    out = _tap(x, 0, 0, h_out, w_out, stride).copy()
    for i in range(ph):
        for j in range(pw):
            xp.maximum(out, _tap(x, i, j, h_out, w_out, stride), out=out)
    return out, (x, out, (ph, pw, stride, h_out, w_out))


def max_pool_backward(dout, cache):
    """Backward pass of `max_pool_forward`: each window's gradient goes to its first maximum.

    Inputs:
    - dout: (N, C, H_out, W_out) upstream gradient
    - cache: from the forward pass
    Returns:
    - dx: (N, C, H, W)
    """
    x, out, (ph, pw, stride, h_out, w_out) = cache
    xp = get_array_module(dout, x, op="max_pool_backward")
    dx = xp.zeros_like(x)
    not_routed = xp.ones(out.shape, dtype=bool)     # windows whose maximum is still unclaimed
    for i in range(ph):
        for j in range(pw):
            winner = (_tap(x, i, j, h_out, w_out, stride) == out) & not_routed
            not_routed &= ~winner
            _tap(dx, i, j, h_out, w_out, stride)[...] += dout * winner
    return dx


def avg_pool_forward(x, pool_param):
    """Average pooling.

    Inputs:
    - x: (N, C, H, W)
    - pool_param: dict with 'pool_height', 'pool_width', 'stride' (ints)
    Returns:
    - out: (N, C, H_out, W_out), sizes as in `max_pool_forward`
    - cache: (x shape, pool geometry)
    """
    xp, ph, pw, stride, h_out, w_out = _pool_geometry("avg_pool_forward", x, pool_param)
    n, c, h, w = x.shape
    if _tiles(x, ph, pw, stride):
        out = x.reshape(n, c, h_out, ph, w_out, pw).mean(axis=(3, 5))
    else:
        out = xp.zeros((n, c, h_out, w_out), dtype=x.dtype)
        for i in range(ph):
            for j in range(pw):
                out += _tap(x, i, j, h_out, w_out, stride)
        out /= ph * pw
    return out, (x.shape, (ph, pw, stride, h_out, w_out))


def avg_pool_backward(dout, cache):
    """Backward pass of `avg_pool_forward`: each window entry gets dout / (ph * pw).

    Inputs:
    - dout: (N, C, H_out, W_out) upstream gradient
    - cache: from the forward pass
    Returns:
    - dx: (N, C, H, W)
    """
    x_shape, (ph, pw, stride, h_out, w_out) = cache
    xp = get_array_module(dout, op="avg_pool_backward")
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    share = dout / (ph * pw)
    for i in range(ph):
        for j in range(pw):
            _tap(dx, i, j, h_out, w_out, stride)[...] += share
    return dx


def global_avg_pool_forward(x):
    """Mean over all pixels of each channel (e.g. 7x7x1280 -> 1280 in EfficientNet).

    Inputs:
    - x: (N, C, H, W)
    Returns:
    - out: (N, C)
    - cache: x shape
    """
    get_array_module(x, op="global_avg_pool_forward")
    _check_float("global_avg_pool_forward", x=x)
    _check_ndim("global_avg_pool_forward", "x", x, 4, "(N, C, H, W)")
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(dout, cache):
    """Backward pass of `global_avg_pool_forward`: every pixel gets dout / (H * W).

    Inputs:
    - dout: (N, C) upstream gradient
    - cache: x shape
    Returns:
    - dx: (N, C, H, W)
    """
    x_shape = cache
    xp = get_array_module(dout, op="global_avg_pool_backward")
    if tuple(dout.shape) != tuple(x_shape[:2]):
        raise ValueError(f"global_avg_pool_backward: dout must have shape {tuple(x_shape[:2])}, "
                         f"got {tuple(dout.shape)}")
    dx = xp.empty(x_shape, dtype=dout.dtype)
    dx[...] = (dout / (x_shape[2] * x_shape[3]))[:, :, None, None]
    return dx
