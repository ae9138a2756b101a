"""2-D convolution (NCHW) with stride, symmetric or TensorFlow "same" padding, and groups.

Three ways to compute the same thing, chosen by `conv_forward`:

- im2col + matrix product (the general path). Every receptive field is copied
  into a column of `cols`, so the convolution becomes one matrix product per
  group (batched over the images): out[n, g] = w[g] @ cols[n, g]. The copy is
  made with one strided slice per kernel tap (HH * WW slices), never a loop
  over pixels. The backward pass is the same product transposed, and col2im
  adds each tap's slice back into the padded input gradient.
- 1x1 kernels with no padding: the input already IS the column matrix
  (a reshape, no copy).
- depthwise (groups == C == F): each channel is convolved with its own
  kernel, so there is nothing to multiply as a matrix. The output is the sum,
  over the HH * WW kernel taps, of a shifted input slice times that tap's
  per-channel weight: elementwise multiply-accumulate, no im2col copy.

`conv_forward_naive` is the obvious loop version, slow, kept for teaching and
as the reference the fast paths are tested against.

Shapes: x (N, C, H, W), w (F, C // groups, HH, WW), b (F,) or None,
out (N, F, H_out, W_out) with H_out = (H + pad_top + pad_bottom - HH) // stride + 1
(rows that a stride leaves over are ignored, as in PyTorch).
"""
import math

from .backend import get_array_module
from .dense import _check_float, _check_ndim

__all__ = [
    "conv_forward", "conv_backward", "conv_forward_naive", "same_padding",
]


def same_padding(in_size, kernel, stride):
    """TensorFlow "same" padding along one axis: returns (before, after).

    The output has ceil(in_size / stride) positions; the padding needed for
    that is split with the odd pixel AFTER (bottom/right), as TensorFlow does.
    For a (top, bottom, left, right) conv pad use
    `same_padding(H, HH, s) + same_padding(W, WW, s)`.
    """
    out_size = -(-in_size // stride)
    total = max((out_size - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


def _conv_geometry(op, x, w, b, conv_param):
    """Validate the inputs; return stride, (top, bottom, left, right), groups, H_out, W_out."""
    xp = get_array_module(x, w, b, op=op)
    _check_float(op, x=x, w=w, b=b)
    _check_ndim(op, "x", x, 4, "(N, C, H, W)")
    _check_ndim(op, "w", w, 4, "(F, C // groups, HH, WW)")
    n, c, h, wd = x.shape
    f, cg, hh, ww = w.shape
    stride = conv_param.get("stride", 1)
    pad = conv_param.get("pad", 0)
    groups = conv_param.get("groups", 1)
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{op}: stride must be a positive int, got {stride!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if isinstance(pad, int):
        pads = (pad, pad, pad, pad)
    elif isinstance(pad, (tuple, list)) and len(pad) == 4:
        pads = tuple(pad)
    else:
        raise ValueError(f"{op}: pad must be an int or a (top, bottom, left, right) tuple, got {pad!r}")
    if not all(isinstance(p, int) and p >= 0 for p in pads):
        raise ValueError(f"{op}: pad values must be non-negative ints, got {pad!r}")
    if c % groups or f % groups:
        raise ValueError(f"{op}: groups={groups} must divide both input channels C={c} "
                         f"and filters F={f}")
    if cg != c // groups:
        raise ValueError(f"{op}: w must have shape (F, C // groups, HH, WW) = "
                         f"({f}, {c // groups}, HH, WW) for x {tuple(x.shape)} and groups={groups}, "
                         f"got {tuple(w.shape)}")
    if b is not None and tuple(b.shape) != (f,):
        raise ValueError(f"{op}: b must have shape ({f},) or be None, got {tuple(b.shape)}")
    top, bottom, left, right = pads
    h_padded, w_padded = h + top + bottom, wd + left + right
    if h_padded < hh or w_padded < ww:
        raise ValueError(f"{op}: a {hh}x{ww} kernel does not fit the padded input "
                         f"{h_padded}x{w_padded} (x {tuple(x.shape)}, pad {pads})")
    h_out = (h_padded - hh) // stride + 1
    w_out = (w_padded - ww) // stride + 1
    return xp, stride, pads, groups, h_out, w_out


def _pad(xp, x, pads):
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _tap(a, i, j, h_out, w_out, stride):
    """The (N, C, h_out, w_out) slice of a padded array seen by kernel tap (i, j)."""
    return a[:, :, i:i + stride * (h_out - 1) + 1:stride, j:j + stride * (w_out - 1) + 1:stride]


# ---------------------------------------------------------------- reference

def conv_forward_naive(x, w, b, conv_param):
    """Convolution with explicit loops: slow, obviously correct (for teaching and tests).

    Inputs:
    - x: (N, C, H, W) input
    - w: (F, C // groups, HH, WW) filters; filter f sees the input channels of its group
    - b: (F,) biases, or None
    - conv_param: dict with 'stride' (int, default 1), 'pad' (int, or a
      (top, bottom, left, right) tuple; default 0) and 'groups' (default 1)
    Returns:
    - out: (N, F, H_out, W_out)
    - cache: (x, w, b, conv_param)
    """
    xp, stride, pads, groups, h_out, w_out = _conv_geometry("conv_forward_naive", x, w, b, conv_param)
    n_images, f_count = x.shape[0], w.shape[0]
    c_per_group, hh, ww = w.shape[1:]
    f_per_group = f_count // groups
    x_padded = _pad(xp, x, pads)
    out = xp.zeros((n_images, f_count, h_out, w_out), dtype=x.dtype)
    for n in range(n_images):
        for f in range(f_count):
            first_channel = (f // f_per_group) * c_per_group
            for i in range(h_out):
                for j in range(w_out):
                    field = x_padded[n, first_channel:first_channel + c_per_group,
                                     i * stride:i * stride + hh, j * stride:j * stride + ww]
                    out[n, f, i, j] = xp.sum(field * w[f]) + (0 if b is None else b[f])
    return out, (x, w, b, conv_param)


# ---------------------------------------------------------------- fast paths

def conv_forward(x, w, b, conv_param):
    """Convolution, vectorised (im2col + matrix product; 1x1 and depthwise shortcuts).

    Inputs:
    - x: (N, C, H, W) input
    - w: (F, C // groups, HH, WW) filters; groups == C == F is a depthwise conv
    - b: (F,) biases, or None (no bias, e.g. before a batchnorm)
    - conv_param: dict with keys
      - 'stride': int, default 1
      - 'pad': int (all four sides), or (top, bottom, left, right) for
        TensorFlow "same" padding (see `same_padding`); default 0
      - 'groups': int dividing C and F, default 1
    Returns:
    - out: (N, F, H_out, W_out), H_out = (H + top + bottom - HH) // stride + 1,
      W_out = (W + left + right - WW) // stride + 1; same dtype as x
    - cache: for `conv_backward`
    """
    xp, stride, pads, groups, h_out, w_out = _conv_geometry("conv_forward", x, w, b, conv_param)
    n, c, _, _ = x.shape
    f, c_per_group, hh, ww = w.shape
    geometry = (x.shape, stride, pads, groups, h_out, w_out)

    if groups == c == f and c_per_group == 1:
        # Depthwise: sum over kernel taps of (input slice) * (per-channel weight).
        x_padded = _pad(xp, x, pads)
        out = xp.zeros((n, f, h_out, w_out), dtype=x.dtype)
        product = xp.empty_like(out)
        for i in range(hh):
            for j in range(ww):
                xp.multiply(_tap(x_padded, i, j, h_out, w_out, stride),
                            w[:, 0, i, j].reshape(1, c, 1, 1), out=product)
                out += product
        path, saved = "depthwise", x_padded
    else:
        if hh == ww == 1 and not any(pads):
            # 1x1 kernel: each pixel is already a column (a copy only when strided).
            x_used = x if stride == 1 else x[:, :, ::stride, ::stride]
            cols = x_used.reshape(n, groups, c_per_group, h_out * w_out)
        else:
            # im2col: cols[n, c, i, j, :, :] = the input slice seen by tap (i, j).
            x_padded = _pad(xp, x, pads)
            cols = xp.empty((n, c, hh, ww, h_out, w_out), dtype=x.dtype)
            for i in range(hh):
                for j in range(ww):
                    cols[:, :, i, j] = _tap(x_padded, i, j, h_out, w_out, stride)
            cols = cols.reshape(n, groups, c_per_group * hh * ww, h_out * w_out)
        # One matrix product per group, batched over images:
        # (G, F/G, K) @ (N, G, K, L) -> (N, G, F/G, L), already in NCHW order.
        w_grouped = w.reshape(groups, f // groups, c_per_group * hh * ww)
        out = (w_grouped @ cols).reshape(n, f, h_out, w_out)
        path, saved = "im2col", cols
    if b is not None:
        out += b.reshape(1, f, 1, 1)
    return out, (path, saved, w, b is not None, geometry)


def conv_backward(dout, cache):
    """Backward pass of `conv_forward` (also accepts the cache of `conv_forward_naive`).

    Inputs:
    - dout: (N, F, H_out, W_out) upstream gradient
    - cache: from the forward pass
    Returns:
    - dx: (N, C, H, W)
    - dw: (F, C // groups, HH, WW)
    - db: (F,), or None when the forward pass had no bias
    """
    if len(cache) == 4:  # from conv_forward_naive: recompute the fast forward's cache
        x, w, b, conv_param = cache
        _, cache = conv_forward(x, w, b, conv_param)
    path, saved, w, has_bias, geometry = cache
    x_shape, stride, pads, groups, h_out, w_out = geometry
    xp = get_array_module(dout, w, op="conv_backward")
    n, c, h, wd = x_shape
    f, c_per_group, hh, ww = w.shape
    if tuple(dout.shape) != (n, f, h_out, w_out):
        raise ValueError(f"conv_backward: dout must have shape {(n, f, h_out, w_out)}, "
                         f"got {tuple(dout.shape)}")
    top, bottom, left, right = pads
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    dx_padded = xp.zeros((n, c, h + top + bottom, wd + left + right), dtype=dout.dtype)

    if path == "depthwise":
        x_padded = saved
        dw = xp.empty_like(w)
        for i in range(hh):
            for j in range(ww):
                # out[n,c] += w[c,i,j] * tap  =>  dw[c,i,j] = sum(dout * tap), dtap += w[c,i,j] * dout
                dw[:, 0, i, j] = xp.einsum("nchw,nchw->c", dout, _tap(x_padded, i, j, h_out, w_out, stride))
                _tap(dx_padded, i, j, h_out, w_out, stride)[...] += dout * w[:, 0, i, j].reshape(1, c, 1, 1)
    else:
        cols = saved
        k = c_per_group * hh * ww
        dout_grouped = dout.reshape(n, groups, f // groups, h_out * w_out)
        w_grouped = w.reshape(groups, f // groups, k)
        # out = w @ cols  =>  dw = sum over images of dout @ cols^T, dcols = w^T @ dout.
        dw = (dout_grouped @ cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)
        dcols = w_grouped.swapaxes(-1, -2) @ dout_grouped
        if hh == ww == 1 and not any(pads):
            if stride == 1:
                return dcols.reshape(n, c, h, wd), dw, db
            dx_padded[:, :, ::stride, ::stride] = dcols.reshape(n, c, h_out, w_out)
        else:
            # col2im: add every tap's slice back where it was read from.
            dcols = dcols.reshape(n, c, hh, ww, h_out, w_out)
            for i in range(hh):
                for j in range(ww):
                    _tap(dx_padded, i, j, h_out, w_out, stride)[...] += dcols[:, :, i, j]
    dx = dx_padded[:, :, top:top + h, left:left + wd]
    return dx, dw, db
