"""2-D convolution (NCHW) with stride, symmetric or TensorFlow "same" padding, and groups.

`conv_forward` computes the same thing three ways (all vectorised; the only
Python loops run over the HH * WW kernel taps, and over chunks of images or
blocks of rows):

- stride 1: im2col from shifted slices. Flatten each zero-padded channel
  into one long row of length (Hp + 1) * Wp (an extra zero row lets the last
  tap's slice run WW - 1 past the padded image). Output pixel (h, w) then sits at flat
  position p = h * Wp + w, and kernel tap (i, j) reads input position
  p + i * Wp + j: for every output pixel at once that is ONE contiguous
  slice of the flat row, starting at i * Wp + j. So im2col is HH * WW plain
  slice copies, and the conv is one matrix product (per group, batched over
  a chunk of images):
      out[n, g] = w.reshape(G, F/G, C/G * HH * WW)[g] @ cols[n, g],
      cols[n, (c, i, j), p] = flat[n, c, i*Wp + j + p]   (c within group g)
  The output is computed on an H_out x Wp grid; its last Wp - W_out columns
  straddle a row end and are cut off. An unpadded 1x1 conv copies nothing:
  its cols are x itself. It runs a chunk of images at a time (the columns
  are 9x the input for a 3x3 kernel: about 1 MB of them per chunk on NumPy,
  up to 1 GB on CuPy), and on NumPy the copies are split over the CPU
  threads between the matrix products.
- stride > 1: im2col. Every receptive field is copied into a column of
  `cols` (one strided slice per kernel tap), so the convolution becomes one
  matrix product per group, batched over images: out[n, g] = w[g] @ cols[n, g].
  The backward pass is the same product transposed; col2im adds each tap's
  slice back into the padded input gradient.
- depthwise (groups == C == F): each channel has its own kernel, so there is
  no matrix product to make: the output is the sum over taps of a shifted
  input slice times that tap's per-channel weight (elementwise
  multiply-accumulate). Slices are contiguous as in the stride-1 path; a
  stride-s conv first splits the padded input into its s * s "phase" images
  (every s-th pixel), in which it becomes a stride-1 conv. Small maps (up to
  28x28) are done in a batch-last layout instead, where rows are longer. On
  NumPy the work is done in cache-sized blocks spread over a few threads,
  since elementwise NumPy is otherwise single-threaded and memory-bound.
  On CuPy, with `nn.backend.use_gpu_kernels(True)`, it runs as CUDA kernels
  instead (nn/depthwise_cuda.py, off by default until tested on a GPU).

`conv_relu6_inference` is a conv followed by ReLU6, for inference; with the CUDA
kernels on, its bias and ReLU6 take no pass of their own after a depthwise conv
and one pass together after the others.

`conv_forward_naive` and `conv_backward_naive` are the obvious loop versions,
slow, kept for teaching and as the reference the fast paths are tested
against. They come first in this file (section "reference"); the fast
machinery follows (section "fast paths").

One op, one file, although a long one: the three paths share the geometry
and padding code, the chunk and thread helpers and the work-size constants
below (which tests change to reach every path), and `conv_forward` /
`conv_backward` choose between them.

Shapes: x (N, C, H, W), w (F, C // groups, HH, WW), b (F,) or None,
out (N, F, H_out, W_out) with H_out = (H + pad_top + pad_bottom - HH) // stride + 1
(rows that a stride leaves over are ignored, as in PyTorch).
"""
import concurrent.futures
import os

import numpy

from . import depthwise_cuda
from .backend import get_array_module
from .dense import _check_float, _check_ndim, _is_int

__all__ = [
    "conv_forward", "conv_backward", "conv_relu6_inference", "conv_forward_naive", "conv_backward_naive",
    "same_padding",
]


# Work sizes of the NumPy paths (tuned on a 2 MB-L2 Xeon; tests change them to
# exercise every path): buffer bytes per batch chunk of the stride-1 path, and
# output bytes per block of rows of the depthwise path.
CHUNK_BYTES = 1 << 20
BLOCK_BYTES = 1 << 18
# On CuPy a chunk is the whole batch, up to this many buffer bytes (the stride-1
# path's columns are 9x the input for a 3x3 kernel).
GPU_CHUNK_BYTES = 1 << 30
# Depthwise outputs of at most this many pixels per channel (28 x 28) use the
# batch-last layout (`_depthwise_forward_batch_last`): measured at EfficientNet's
# shapes, batch 32, it is faster up to 28 x 28 outputs (e.g. 5x5 on 28 x 28:
# 67 ms against 120) and slower from 56 x 56 (3x3 on 56 x 56: 86 ms against 60).
SMALL_MAP_PIXELS = 28 * 28
# Copies of fewer bytes than this are not split over threads (`_on_threads`).
PARALLEL_BYTES = 1 << 21


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
    if not _is_int(stride) or stride < 1:
        raise ValueError(f"{op}: stride must be a positive int, got {stride!r}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if _is_int(pad):
        pads = (pad, pad, pad, pad)
    elif isinstance(pad, (tuple, list)) and len(pad) == 4:
        pads = tuple(pad)
    else:
        raise ValueError(f"{op}: pad must be an int or a (top, bottom, left, right) tuple, got {pad!r}")
    if not all(_is_int(p) and p >= 0 for p in pads):
        raise ValueError(f"{op}: pad values must be non-negative ints, got {pad!r}")
    stride, groups, pads = int(stride), int(groups), tuple(int(p) for p in pads)
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

    The fast version computing the same thing is `conv_forward` (below, in
    "fast paths"); its gradients in loops are `conv_backward_naive`.

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


def conv_backward_naive(dout, cache):
    """Backward pass of `conv_forward_naive`, with the same explicit loops (slow, for teaching and tests).

    Each output pixel out[n, f, i, j] was sum(field * w[f]) + b[f] over one
    receptive field of the padded input, so its gradient dout[n, f, i, j]
    flows back to w[f] (times the field), to the field's pixels (times w[f])
    and to b[f]. The fast version is `conv_backward` (below).

    Inputs:
    - dout: (N, F, H_out, W_out) upstream gradient
    - cache: (x, w, b, conv_param) from `conv_forward_naive`
    Returns:
    - dx: (N, C, H, W)
    - dw: (F, C // groups, HH, WW)
    - db: (F,), or None when the forward pass had no bias
    """
    x, w, b, conv_param = cache
    xp, stride, pads, groups, h_out, w_out = _conv_geometry("conv_backward_naive", x, w, b, conv_param)
    n_images, f_count = x.shape[0], w.shape[0]
    if tuple(dout.shape) != (n_images, f_count, h_out, w_out):
        raise ValueError(f"conv_backward_naive: dout must have shape {(n_images, f_count, h_out, w_out)}, "
                         f"got {tuple(dout.shape)}")
    c_per_group, hh, ww = w.shape[1:]
    f_per_group = f_count // groups
    x_padded = _pad(xp, x, pads)
    dx_padded = xp.zeros_like(x_padded)
    dw = xp.zeros_like(w)
    for n in range(n_images):
        for f in range(f_count):
            channels = slice((f // f_per_group) * c_per_group, (f // f_per_group + 1) * c_per_group)
            for i in range(h_out):
                for j in range(w_out):
                    rows, cols = slice(i * stride, i * stride + hh), slice(j * stride, j * stride + ww)
                    dw[f] += x_padded[n, channels, rows, cols] * dout[n, f, i, j]
                    dx_padded[n, channels, rows, cols] += w[f] * dout[n, f, i, j]
    top, left = pads[0], pads[2]
    dx = dx_padded[:, :, top:top + x.shape[2], left:left + x.shape[3]]   # the padding's gradient is dropped
    return dx, dw, None if b is None else dout.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------- fast paths

def conv_forward(x, w, b, conv_param):
    """Convolution, vectorised (im2col from shifted slices for stride 1, strided im2col, or depthwise taps).

    It computes exactly the loops of `conv_forward_naive` (above, "reference").

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
    f, c_per_group = w.shape[:2]
    # The stride-1 and depthwise paths add the bias themselves, chunk by chunk
    # while the output is still in the CPU cache (one pass less over memory).
    if x.shape[0] == 0:     # an empty batch: nothing to compute on any path, on either backend
        out, saved, path = xp.zeros((0, f, h_out, w_out), dtype=x.dtype), None, "empty"
    elif _is_depthwise(x, w, groups) and depthwise_cuda.forward_applies(xp, x, w, b, h_out, w_out):
        out, saved = depthwise_cuda.depthwise_forward(x, w, b, pads, stride, h_out, w_out), x
        path = "depthwise_cuda"     # CUDA kernels, only when switched on (nn.backend.use_gpu_kernels)
    elif _is_depthwise(x, w, groups):
        out, saved = _depthwise_forward(xp, x, w, b, pads, stride, h_out, w_out)
        path = "depthwise"
    elif stride == 1:
        out, saved = _shifted_forward(xp, x, w, b, pads, groups, h_out, w_out)
        path = "shifted"
    else:
        out, saved = _im2col_forward(xp, x, w, pads, stride, groups, h_out, w_out)
        path = "im2col"
        if b is not None:
            out += b.reshape(1, f, 1, 1)
    return out, (path, saved, w, b is not None, (x.shape, stride, pads, groups, h_out, w_out))


def conv_backward(dout, cache):
    """Backward pass of `conv_forward` (also accepts the cache of `conv_forward_naive`).

    The same gradients in plain loops: `conv_backward_naive` (above, "reference").

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
    expected = (x_shape[0], w.shape[0], h_out, w_out)
    if tuple(dout.shape) != expected:
        raise ValueError(f"conv_backward: dout must have shape {expected}, got {tuple(dout.shape)}")
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    if path == "empty":
        dx, dw = xp.zeros(x_shape, dtype=dout.dtype), xp.zeros(w.shape, dtype=dout.dtype)
    elif path == "depthwise_cuda" and depthwise_cuda.backward_applies(xp, dout, saved, w, h_out, w_out):
        dx, dw = depthwise_cuda.depthwise_backward(dout, saved, w, pads, stride, h_out, w_out)
    elif path in ("depthwise", "depthwise_cuda"):
        # Also after the kernels' forward when they do not apply here (e.g. dout of another dtype
        # than w: the plain path computes in dout's dtype); both forward paths saved x.
        dx, dw = _depthwise_backward(xp, dout, saved, w, geometry)
    elif path == "shifted":
        dx, dw = _shifted_backward(xp, dout, saved, w, geometry)
    else:
        dx, dw = _im2col_backward(xp, dout, saved, w, geometry)
    return dx, dw, db


def conv_relu6_inference(x, w, b, conv_param):
    """ReLU6 of a convolution, for inference: out = min(max(conv(x, w) + b, 0), 6); no cache, no backward.

    What an eval-mode conv + folded batchnorm + ReLU6 unit of a MobileNet-style
    network computes (captioning's EfficientNet encoder). By default, and always
    on NumPy, it is exactly `conv_forward` followed by an in-place clip, one
    pass over the output more for the clip. With the CUDA kernels switched on
    (`nn.backend.use_gpu_kernels`) and CuPy arrays, the bias and the ReLU6 cost
    no pass of their own: a depthwise conv applies them in its kernel before its
    one write, and any other conv runs without its bias, then one elementwise
    kernel adds the bias and clips (instead of a bias pass and a clip pass).

    Inputs:
    - x: (N, C, H, W) input
    - w: (F, C // groups, HH, WW) filters
    - b: (F,) biases, or None
    - conv_param: as for `conv_forward` ('stride', 'pad', 'groups')
    Returns:
    - out: (N, F, H_out, W_out), values in [0, 6]; same dtype as x
    """
    xp, stride, pads, groups, h_out, w_out = _conv_geometry("conv_relu6_inference", x, w, b, conv_param)
    if x.shape[0] and _is_depthwise(x, w, groups) and depthwise_cuda.forward_applies(xp, x, w, b, h_out, w_out):
        return depthwise_cuda.depthwise_forward(x, w, b, pads, stride, h_out, w_out, relu6=True)
    if b is not None and x.shape[0] and depthwise_cuda.epilogue_applies(xp, x, b):
        out, _ = conv_forward(x, w, None, conv_param)
        return depthwise_cuda.bias_relu6_(out, b)
    out, _ = conv_forward(x, w, b, conv_param)
    xp.clip(out, 0, 6, out=out)             # in place: the conv output is a fresh array nobody else holds
    return out


def _is_depthwise(x, w, groups):
    """One filter per input channel, each seeing only its own channel (groups == C == F)."""
    return groups == x.shape[1] == w.shape[0] and w.shape[1] == 1


# ---- stride 1: im2col from shifted slices of the flat rows, one matrix product per chunk

def _batch_chunks(xp, n, bytes_per_image):
    """Slices of the batch to work on in turn, each at least one image. NumPy:
    images whose largest buffer (columns or output grid) totals about
    CHUNK_BYTES (1 MB), so small maps stay in the CPU cache; CuPy: the whole
    batch (fewer, larger kernel launches) unless that needs over GPU_CHUNK_BYTES."""
    budget = CHUNK_BYTES if xp is numpy else GPU_CHUNK_BYTES
    return _slices(n, max(1, budget // max(1, bytes_per_image)))


def _slices(size, step):
    """slice(0, step), slice(step, 2 * step), ... covering range(size)."""
    return [slice(first, min(first + step, size)) for first in range(0, size, step)]


class _Stride1Columns:
    """im2col for a stride-1 conv, one chunk of images at a time, from flat rows.

    Zero-pad an image and flatten each channel into one row of length
    (Hp + 1) * Wp. Output pixel (h, w) then sits at flat position
    p = h * Wp + w, and kernel tap (i, j) reads position p + i * Wp + j: the
    columns of tap t are ONE contiguous slice of each row,
    flat[c, starts[t] : starts[t] + length], with starts[t] = i * Wp + j and
    length = H_out * Wp (the output on an H_out x Wp grid; its last
    Wp - W_out columns straddle a row end and are cut off afterwards).

    What has to be copied depends on the kernel and the padding:
    - padded, or wider than 1: x is copied into zero-padded flat rows (a
      buffer made once; each chunk overwrites only its interior, so the
      border stays zero);
    - several taps: each tap's slice is copied into the columns buffer;
    - an unpadded 1x1 conv copies nothing: its columns are x itself.
    """

    def __init__(self, xp, x_shape, w_shape, pads, h_out, dtype):
        n, c, h, w = x_shape
        f, _, hh, ww = w_shape
        top, bottom, left, right = pads
        self.xp, self.pads, self.h, self.w = xp, pads, h, w
        self.width = w + left + right                                     # Wp
        self.length = h_out * self.width
        self.starts = [i * self.width + j for i in range(hh) for j in range(ww)]
        self.needs_padding = any(pads) or ww != 1
        self.one_tap = len(self.starts) == 1
        self.copies_nothing = self.one_tap and not self.needs_padding     # an unpadded 1x1 conv
        # Chunk size: the biggest per-image buffers are the columns (C * taps
        # rows of `length`) and the output grid (F rows). An unpadded 1x1 conv
        # on the GPU has neither to bound (its columns are x, its grid is the
        # output; NumPy still chunks it, to add the bias while in the CPU cache).
        self.row_bytes = self.length * numpy.dtype(dtype).itemsize
        buffer_rows = 0 if self.copies_nothing and xp is not numpy else max(c * len(self.starts), f)
        self.chunks = _batch_chunks(xp, n, buffer_rows * self.row_bytes)
        self.chunk = self.chunks[0].stop if self.chunks else 0
        # + 1: an extra zero row, so the last tap's slice may run WW - 1 past the padded image.
        self.flat = (xp.zeros((self.chunk, c, h + top + bottom + 1, self.width), dtype=dtype)
                     if self.needs_padding else None)
        self.cols = (None if self.one_tap
                     else xp.empty((self.chunk, c, len(self.starts), self.length), dtype=dtype))

    def columns(self, x, images):
        """(count, C * taps, length): the columns of x[images], rows ordered (channel, tap)."""
        c = x.shape[1]
        count = images.stop - images.start
        top, left = self.pads[0], self.pads[2]
        flat = (self.flat[:count].reshape(count, c, -1) if self.needs_padding
                else x[images].reshape(count, c, -1))

        def fill(channels):
            if self.needs_padding:
                self.flat[:count, channels, top:top + self.h, left:left + self.w] = x[images, channels]
            if not self.one_tap:
                for t, start in enumerate(self.starts):
                    self.cols[:count, channels, t] = flat[:, channels, start:start + self.length]

        if self.needs_padding or not self.one_tap:
            _on_threads(self.xp, fill, c, count * c * len(self.starts) * self.row_bytes)
        if self.one_tap:                          # its columns are a slice of the flat rows
            return flat[..., self.starts[0]:self.starts[0] + self.length]
        return self.cols[:count].reshape(count, -1, self.length)


def _shifted_forward(xp, x, w, b, pads, groups, h_out, w_out):
    n = x.shape[0]
    f = w.shape[0]
    im2col = _Stride1Columns(xp, x.shape, w.shape, pads, h_out, x.dtype)
    length, width = im2col.length, im2col.width
    w_matrix = w.reshape(groups, f // groups, -1)                        # (G, F/G, C/G * taps)
    out = xp.empty((n, f, h_out, w_out), dtype=x.dtype)
    # The output on the H_out x Wp grid; straight into `out` when Wp == W_out.
    grid = xp.empty((im2col.chunk, f, h_out, width), dtype=x.dtype) if width != w_out else None
    for images in im2col.chunks:
        count = images.stop - images.start
        columns = im2col.columns(x, images).reshape(count, groups, -1, length)
        total = out[images] if grid is None else grid[:count]
        xp.matmul(w_matrix, columns, out=total.reshape(count, groups, f // groups, length))

        def finish(filters):                      # bias, and drop the columns that straddle a row end
            part = total[:, filters]
            if grid is None:
                part += b[filters].reshape(1, -1, 1, 1)
            elif b is None:
                out[images, filters] = part[..., :w_out]
            else:                                 # both in one pass over the grid
                xp.add(part[..., :w_out], b[filters].reshape(1, -1, 1, 1), out=out[images, filters])

        if b is not None or grid is not None:
            _on_threads(xp, finish, f, count * f * im2col.row_bytes)
    return out, x


def _shifted_backward(xp, dout, x, w, geometry):
    x_shape, _, pads, groups, h_out, w_out = geometry
    n, c, h, wd = x_shape
    f = w.shape[0]
    top, left = pads[0], pads[2]
    im2col = _Stride1Columns(xp, x_shape, w.shape, pads, h_out, dout.dtype)
    length, width, starts = im2col.length, im2col.width, im2col.starts
    w_matrix = w.reshape(groups, f // groups, -1)                        # (G, F/G, K)
    # Summed as columns @ dout^T, the transpose of dw: that product reads the
    # big columns array in its own layout (measured faster than dout @ columns^T).
    dw_transposed = xp.zeros((groups, w_matrix.shape[2], f // groups), dtype=dout.dtype)
    dx = xp.empty(x_shape, dtype=dout.dtype)
    # dout on the forward's H_out x Wp grid; its cut-off columns stay zero.
    dgrid = xp.zeros((im2col.chunk, f, h_out, width), dtype=dout.dtype) if width != w_out else None
    if not im2col.copies_nothing:                                  # unpadded 1x1: columns = x
        dcols = xp.empty((im2col.chunk, c, len(starts), length), dtype=dout.dtype)
        # The gradient of the chunk's flat rows (col2im adds into it): padded
        # rows in a buffer, or unpadded, the rows of dx itself.
        dflat = xp.empty_like(im2col.flat) if im2col.needs_padding else None
    for images in im2col.chunks:
        count = images.stop - images.start

        def to_grid(filters):
            dgrid[:count, filters, :, :w_out] = dout[images, filters]

        if dgrid is not None:
            _on_threads(xp, to_grid, f, count * f * im2col.row_bytes)
        dout_grid = (dout[images] if dgrid is None else dgrid[:count]).reshape(
            count, groups, f // groups, length)
        columns = im2col.columns(x, images).reshape(count, groups, -1, length)
        # out = w @ columns  =>  dw^T = sum over images of columns @ dout^T, dcolumns = w^T @ dout.
        dw_transposed += (columns @ dout_grid.swapaxes(-1, -2)).sum(axis=0)
        w_transposed = w_matrix.swapaxes(-1, -2)
        if im2col.copies_nothing:
            xp.matmul(w_transposed, dout_grid, out=dx[images].reshape(count, groups, -1, length))
            continue
        dcolumns = dcols[:count]
        xp.matmul(w_transposed, dout_grid, out=dcolumns.reshape(count, groups, -1, length))

        def col2im(channels):                     # add each tap's columns back where they were read
            rows = (dx[images, channels].reshape(count, -1, h * wd) if dflat is None
                    else dflat[:count, channels].reshape(count, -1, dflat.shape[2] * width))
            # starts[0] == 0: tap 0 sets rows[:length], so only the rest starts from zero
            rows[..., :length] = dcolumns[:, channels, 0]
            rows[..., length:] = 0
            for t, start in enumerate(starts[1:], 1):
                rows[..., start:start + length] += dcolumns[:, channels, t]
            if dflat is not None:
                dx[images, channels] = dflat[:count, channels, top:top + h, left:left + wd]

        _on_threads(xp, col2im, c, count * c * len(starts) * im2col.row_bytes)
    return dx, dw_transposed.swapaxes(-1, -2).reshape(w.shape)


# ---- stride > 1: im2col + one matrix product per group

def _im2col_forward(xp, x, w, pads, stride, groups, h_out, w_out):
    n, c = x.shape[:2]
    f, c_per_group, hh, ww = w.shape
    x_padded = _pad(xp, x, pads)
    # cols[n, c, i, j] = the (H_out, W_out) input slice seen by kernel tap (i, j).
    cols = xp.empty((n, c, hh, ww, h_out, w_out), dtype=x.dtype)
    for i in range(hh):
        for j in range(ww):
            cols[:, :, i, j] = _tap(x_padded, i, j, h_out, w_out, stride)
    cols = cols.reshape(n, groups, c_per_group * hh * ww, h_out * w_out)
    # (G, F/G, K) @ (N, G, K, L) -> (N, G, F/G, L), already in NCHW order.
    w_grouped = w.reshape(groups, f // groups, c_per_group * hh * ww)
    out = (w_grouped @ cols).reshape(n, f, h_out, w_out)
    return out, cols


def _im2col_backward(xp, dout, cols, w, geometry):
    x_shape, stride, pads, groups, h_out, w_out = geometry
    n, c, h, wd = x_shape
    f, c_per_group, hh, ww = w.shape
    top, bottom, left, right = pads
    dout_grouped = dout.reshape(n, groups, f // groups, h_out * w_out)
    w_grouped = w.reshape(groups, f // groups, c_per_group * hh * ww)
    # out = w @ cols  =>  dw = sum over images of dout @ cols^T, dcols = w^T @ dout.
    # CuPy's batched matmul copies a transposed operand, so the smaller of cols
    # (C/G * hh * ww rows) and dout (F/G rows) is the one transposed: dout for
    # a 3x3 conv that keeps its channels (a ninth of cols), cols for
    # EfficientNet's stem (27 rows against 32).
    if cols.shape[-2] > dout_grouped.shape[-2]:
        # = sum of dout @ cols^T, computed as the transpose of sum of cols @ dout^T
        dw = (cols @ dout_grouped.swapaxes(-1, -2)).sum(axis=0).swapaxes(-1, -2)
    else:
        dw = (dout_grouped @ cols.swapaxes(-1, -2)).sum(axis=0)
    dw = xp.ascontiguousarray(dw).reshape(w.shape)       # laid out like w, whichever way it was computed
    dcols = (w_grouped.swapaxes(-1, -2) @ dout_grouped).reshape(n, c, hh, ww, h_out, w_out)
    # col2im: add every tap's slice back where it was read from.
    dx_padded = xp.zeros((n, c, h + top + bottom, wd + left + right), dtype=dout.dtype)
    for i in range(hh):
        for j in range(ww):
            _tap(dx_padded, i, j, h_out, w_out, stride)[...] += dcols[:, :, i, j]
    return dx_padded[:, :, top:top + h, left:left + wd], dw


# ---- depthwise: multiply-accumulate over the kernel taps

def _phases(xp, x, pads, stride):
    """x zero-padded and split into its stride x stride phase images, flattened.

    Phase (a, b) holds the padded pixels (stride * r + a, stride * q + b). A
    stride-s kernel tap (i, j) reads only phase (i % s, j % s), shifted by
    (i // s, j // s): in a phase image the strided conv becomes a stride-1
    conv, whose taps are contiguous slices of the flattened phase (as in
    `_Stride1Columns`). Stride 1 has a single phase: the padded image.
    Returns (phases (N, C, stride**2, (Hq + 1) * Wq), Wq) with Hq, Wq the
    phase size; the extra zero row lets the last taps' slices run past the end.
    """
    n, c, h, w = x.shape
    top, bottom, left, right = pads
    h_phase = -(-(h + top + bottom) // stride)
    w_phase = -(-(w + left + right) // stride)
    phases = xp.zeros((n, c, stride, stride, h_phase + 1, w_phase), dtype=x.dtype)
    for a, b, first_row, first_col, r, q in _phase_origins(pads, stride):
        part = x[:, :, first_row::stride, first_col::stride]
        phases[:, :, a, b, r:r + part.shape[2], q:q + part.shape[3]] = part
    return phases.reshape(n, c, stride * stride, (h_phase + 1) * w_phase), w_phase


def _phase_origins(pads, stride):
    """For each phase (a, b): (a, b, first_row, first_col, r, q).

    Padded pixel (stride * r + a, stride * q + b) is x pixel
    (stride * r + a - top, stride * q + b - left): phase (a, b) holds every
    stride-th pixel of x from (first_row, first_col) on, starting at its
    own row r and column q.
    """
    top, left = pads[0], pads[2]
    for a in range(stride):
        for b in range(stride):
            first_row, first_col = (a - top) % stride, (b - left) % stride
            yield a, b, first_row, first_col, (first_row + top) // stride, (first_col + left) // stride


def _phase_taps(w_shape, pads, stride, h_out, x_width):
    """Where each kernel tap reads in the flattened phases of `_phases`.

    Returns (w_phase, length, taps): the phase width Wq, the length H_out * Wq
    of the output computed on an H_out x Wq grid, and per tap (i, j) its
    (phase, start of its contiguous slice).
    """
    hh, ww = w_shape[2:]
    w_phase = -(-(x_width + pads[2] + pads[3]) // stride)
    taps = [((i % stride) * stride + j % stride, (i // stride) * w_phase + j // stride)
            for i in range(hh) for j in range(ww)]
    return w_phase, h_out * w_phase, taps


def _unphase(phases, pads, stride, w_phase, out):
    """The inverse of `_phases`: out (N, C, H, W) <- the x pixels held in phases
    (N, C, stride**2, (Hq + 1) * Wq). Every pixel of x lies in exactly one
    phase, so this is a copy, not a sum; the padding is dropped."""
    n, c = out.shape[:2]
    by_phase = phases.reshape(n, c, stride, stride, -1, w_phase)
    for a, b, first_row, first_col, r, q in _phase_origins(pads, stride):
        part = out[:, :, first_row::stride, first_col::stride]
        part[...] = by_phase[:, :, a, b, r:r + part.shape[2], q:q + part.shape[3]]


def _depthwise_forward(xp, x, w, b, pads, stride, h_out, w_out):
    if h_out * w_out <= SMALL_MAP_PIXELS:
        return _depthwise_forward_batch_last(xp, x, w, b, pads, stride, h_out, w_out)
    n, c, h, wd = x.shape
    hh, ww = w.shape[2:]
    w_phase, length, taps = _phase_taps(w.shape, pads, stride, h_out, wd)
    # The batch as N * C independent channel images ("rows"), each with its own kernel.
    x_rows = x.reshape(n * c, 1, h, wd)
    row_weights = xp.tile(w.reshape(c, hh * ww), (n, 1))      # (N * C, HH * WW)
    row_bias = None if b is None else xp.tile(b, n).reshape(n * c, 1)
    out = xp.empty((n * c, h_out, w_out), dtype=x.dtype)

    def accumulate(block):
        # The block's phase rows are built here, not for the whole batch up front:
        # a small buffer that stays in the CPU cache instead of a copy of all of x.
        source = _phases(xp, x_rows[block], pads, stride)[0][:, 0]   # (rows, s * s, flat phase)
        weights = row_weights[block]
        total = xp.empty((len(source), length), dtype=x.dtype)     # on the H_out x Wq grid
        part = xp.empty_like(total)
        for t, (phase, start) in enumerate(taps):
            window = source[:, phase, start:start + length]
            if t == 0:
                xp.multiply(window, weights[:, :1], out=total)
            else:
                total += xp.multiply(window, weights[:, t:t + 1], out=part)
        if row_bias is not None:
            total += row_bias[block]
        out[block] = total.reshape(-1, h_out, w_phase)[:, :, :w_out]   # drop the straddling columns

    _for_each_block(xp, accumulate, n * c, length * x.dtype.itemsize)
    return out.reshape(n, c, h_out, w_out), x


def _depthwise_forward_batch_last(xp, x, w, b, pads, stride, h_out, w_out):
    """Depthwise conv for small maps (outputs up to 28x28) in a (C, H, W, N) layout.

    On a small map the flat rows of `_depthwise_forward` are short and mostly
    padding. With the batch as the last axis, a tap's window of one channel is
    (H_out, W_out * N) with contiguous rows of W_out * N numbers, and nothing
    is computed on the padding. Each block of channels is transposed into
    that layout and back inside the block, so the copies are cache-sized and
    run on the thread pool too.
    """
    n, c, h, wd = x.shape
    hh, ww = w.shape[2:]
    top, bottom, left, right = pads
    h_phase = -(-(h + top + bottom) // stride)
    w_phase = -(-(wd + left + right) // stride)
    weights = w.reshape(c, hh * ww)
    out = xp.empty((n, c, h_out, w_out), dtype=x.dtype)

    def accumulate(block):
        channels = len(range(c)[block])
        padded = xp.zeros((channels, h_phase * stride, w_phase * stride, n), dtype=x.dtype)
        padded[:, top:top + h, left:left + wd, :] = x[:, block].transpose(1, 2, 3, 0)
        # Phase (a, b) = padded pixels (stride * r + a, stride * q + b), as in `_phases`.
        source = padded.reshape(channels, h_phase, stride, w_phase, stride, n).transpose(0, 2, 4, 1, 3, 5)
        source = xp.ascontiguousarray(source).reshape(channels, stride, stride, h_phase, w_phase * n)
        total = xp.empty((channels, h_out, w_out * n), dtype=x.dtype)
        part = xp.empty_like(total)
        for i in range(hh):
            for j in range(ww):
                r, q = i // stride, j // stride
                window = source[:, i % stride, j % stride, r:r + h_out, q * n:(q + w_out) * n]
                weight = weights[block, i * ww + j].reshape(-1, 1, 1)
                if i == j == 0:
                    xp.multiply(window, weight, out=total)
                else:
                    total += xp.multiply(window, weight, out=part)
        if b is not None:
            total += b[block].reshape(-1, 1, 1)
        out[:, block] = total.reshape(channels, h_out, w_out, n).transpose(3, 0, 1, 2)

    _for_each_block(xp, accumulate, c, h_out * w_out * n * x.dtype.itemsize)
    return out, x


def _cpu_threads():
    """Threads for NumPy elementwise work: as many as BLAS is told to use
    (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS), else one per CPU we may run on."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_pool = {}


def _run_blocks(work, blocks):
    """work(block) for every block, on the thread pool when there are several CPU threads."""
    threads = min(_cpu_threads(), len(blocks))
    if threads <= 1:
        for block in blocks:
            work(block)
        return
    if threads not in _pool:
        _pool[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="nn.conv")
    list(_pool[threads].map(work, blocks))          # waits for all; re-raises a block's error


def _on_threads(xp, work, size, work_bytes):
    """Call work(block) for slices covering range(size), one slice per CPU thread.

    For memory-bound copies between matrix products: on NumPy, splitting them
    over the threads BLAS uses makes them about 1.5x faster on 2 cores, and
    one block per thread keeps the pool's overhead (and the threads' wait for
    Python's GIL between NumPy calls) to one handoff per thread. A handoff
    costs about as much as copying a few hundred KB, so work that moves
    fewer than PARALLEL_BYTES (work_bytes, roughly) stays on the calling
    thread. CuPy: one call, all of range(size).
    """
    if xp is not numpy or work_bytes < PARALLEL_BYTES:
        work(slice(0, size))
        return
    _run_blocks(work, _slices(size, -(-size // min(size, _cpu_threads()))))


def _for_each_block(xp, work, rows, bytes_per_row):
    """Call work(block) for blocks of rows covering range(rows).

    CuPy: one block, all rows (the GPU parallelises it). NumPy: blocks of
    about 256 KB of output, so running sums stay in the CPU cache, run on a
    thread pool (NumPy releases the GIL inside ufuncs, so blocks really run
    in parallel: elementwise NumPy would otherwise use one core only).
    """
    if xp is not numpy:
        work(slice(0, rows))
        return
    # bytes_per_row is 0 for an empty batch
    _run_blocks(work, _slices(rows, max(1, BLOCK_BYTES // max(1, bytes_per_row))))


def _depthwise_backward(xp, dout, x, w, geometry):
    """Backward of `_depthwise_forward`, on the same flat phase rows, blocked and threaded.

    Forward: out_row = sum over taps t of weight[row, t] * window_t(row). So
    dw[row, t] = window_t(row) . dout_row (a dot product per row and tap), and
    dout_row * weight[row, t] is added back where window_t was read.
    """
    x_shape, stride, pads, _, h_out, w_out = geometry
    n, c, h, wd = x_shape
    hh, ww = w.shape[2:]
    w_phase, length, taps = _phase_taps(w.shape, pads, stride, h_out, wd)
    x_rows = x.reshape(n * c, 1, h, wd)
    dout_rows = dout.reshape(n * c, h_out, w_out)
    row_weights = xp.tile(w.reshape(c, hh * ww), (n, 1))      # (N * C, HH * WW)
    dx = xp.empty(x_shape, dtype=dout.dtype)
    dx_rows = dx.reshape(n * c, 1, h, wd)
    dw_rows = xp.empty((n * c, hh * ww), dtype=dout.dtype)

    def accumulate(block):
        source = _phases(xp, x_rows[block], pads, stride)[0][:, 0]   # as in the forward pass
        dsource = xp.zeros_like(source)
        # dout on the H_out x Wq grid of the forward pass, zero on the dropped columns.
        grad = xp.zeros((len(source), h_out, w_phase), dtype=dout.dtype)
        grad[:, :, :w_out] = dout_rows[block]
        grad = grad.reshape(len(source), length)
        weights, part = row_weights[block], xp.empty(grad.shape, dtype=grad.dtype)
        for t, (phase, start) in enumerate(taps):
            window = source[:, phase, start:start + length]
            dw_rows[block, t] = xp.einsum("rl,rl->r", window, grad)     # a dot product per row
            dsource[:, phase, start:start + length] += xp.multiply(grad, weights[:, t:t + 1], out=part)
        _unphase(dsource[:, None], pads, stride, w_phase, out=dx_rows[block])

    _for_each_block(xp, accumulate, n * c, length * dout.dtype.itemsize)
    dw = dw_rows.reshape(n, c, hh * ww).sum(axis=0).reshape(w.shape)   # over the images
    return dx, dw
