"""Depthwise convolution as CUDA kernels on CuPy: one GPU thread per output (or input) pixel.

On the GPU the plain depthwise path of `nn.conv` (a multiply-add over the whole
batch per kernel tap) launches a few kernels per tap and passes over memory
once per tap; here each output pixel is one thread that reads its window and
writes once (and, backward, each input pixel one thread that gathers the
output pixels whose windows covered it). The same loops as
`conv_forward_naive`, in C:

    out[n, c, oy, ox] = b[c] + sum_{ki, kj} w[c, 0, ki, kj] * x[n, c, oy*s - top + ki, ox*s - left + kj]
    dx[n, c, iy, ix]  = sum over the (ki, kj) with (iy + top - ki) and (ix + left - kj) multiples of s
                        of w[c, 0, ki, kj] * dout[n, c, (iy + top - ki) / s, (ix + left - kj) / s]

(pixels outside the image read as 0). dw stays plain CuPy: one product and
sum over (N, H_out, W_out) per tap.

OFF BY DEFAULT: this code has not yet run on a GPU (issue 17). It is used only
when `nn.backend.use_gpu_kernels(True)` (or NN_GPU_KERNELS=1) and the arrays are
CuPy float32/float64; tests/test_nn_depthwise_cuda.py compares it with the
plain path on CuPy, and benchmarks/gpu_check.sh runs those tests.
Shapes: x (N, C, H, W), w (C, 1, HH, WW), b (C,) or None, pads (top, bottom, left, right).
"""
import numpy

from . import backend

__all__ = ["applies", "depthwise_forward", "depthwise_backward"]

_GEOMETRY = ("int64 channels, int64 height, int64 width, int64 kh, int64 kw, int64 stride, int64 top, "
             "int64 left, int64 h_out, int64 w_out")

_FORWARD_CODE = """
    const ptrdiff_t ox = i % w_out, oy = (i / w_out) % h_out;
    const ptrdiff_t row = i / (w_out * h_out);            // image * channels + channel
    const ptrdiff_t ch = row % channels;
    T acc = has_bias ? b[ch] : (T)0;
    for (ptrdiff_t ki = 0; ki < kh; ++ki) {
        const ptrdiff_t iy = oy * stride - top + ki;
        if (iy < 0 || iy >= height) continue;
        for (ptrdiff_t kj = 0; kj < kw; ++kj) {
            const ptrdiff_t ix = ox * stride - left + kj;
            if (ix < 0 || ix >= width) continue;
            acc += w[(ch * kh + ki) * kw + kj] * x[(row * height + iy) * width + ix];
        }
    }
    out = acc;
"""

_BACKWARD_DX_CODE = """
    const ptrdiff_t ix = i % width, iy = (i / width) % height;
    const ptrdiff_t row = i / (width * height);                    // image * channels + channel
    const ptrdiff_t ch = row % channels;
    T acc = 0;
    for (ptrdiff_t ki = 0; ki < kh; ++ki) {
        const ptrdiff_t ty = iy + top - ki;               // = oy * stride for the output row that read iy
        if (ty < 0 || ty % stride != 0 || ty / stride >= h_out) continue;
        for (ptrdiff_t kj = 0; kj < kw; ++kj) {
            const ptrdiff_t tx = ix + left - kj;
            if (tx < 0 || tx % stride != 0 || tx / stride >= w_out) continue;
            acc += w[(ch * kh + ki) * kw + kj] * dout[(row * h_out + ty / stride) * w_out + tx / stride];
        }
    }
    dx = acc;
"""

_kernels = {}


def _compiled(xp):
    """The two ElementwiseKernels, compiled on first use (T is float or double)."""
    if not _kernels:
        _kernels["forward"] = xp.ElementwiseKernel(
            "raw T x, raw T w, raw T b, bool has_bias, " + _GEOMETRY, "T out",
            _FORWARD_CODE, "nn_depthwise_forward")
        _kernels["dx"] = xp.ElementwiseKernel(
            "raw T dout, raw T w, " + _GEOMETRY, "T dx", _BACKWARD_DX_CODE, "nn_depthwise_backward_dx")
    return _kernels


def applies(xp, x):
    """Use the kernels for this input? Only when switched on and for CuPy float32/float64 arrays."""
    return (xp is not numpy and backend.gpu_kernels_enabled()
            and numpy.dtype(x.dtype) in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)))


def _geometry_args(x_shape, w_shape, pads, stride, h_out, w_out):
    _, c, h, wd = x_shape
    return (c, h, wd, w_shape[2], w_shape[3], stride, pads[0], pads[2], h_out, w_out)


def depthwise_forward(x, w, b, pads, stride, h_out, w_out):
    """out (N, C, H_out, W_out) of the depthwise conv (module docstring), on CuPy."""
    xp = backend.get_array_module(x, w, op="depthwise_forward")
    x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
    out = xp.empty((x.shape[0], x.shape[1], h_out, w_out), dtype=x.dtype)
    bias = w if b is None else xp.ascontiguousarray(b)      # not read when has_bias is False
    _compiled(xp)["forward"](x, w, bias, b is not None,
                             *_geometry_args(x.shape, w.shape, pads, stride, h_out, w_out), out)
    return out


def depthwise_backward(dout, x, w, pads, stride, h_out, w_out):
    """(dx (N, C, H, W), dw (C, 1, HH, WW)) of the depthwise conv, on CuPy."""
    from .conv import _pad, _tap
    xp = backend.get_array_module(dout, x, w, op="depthwise_backward")
    dout, w = xp.ascontiguousarray(dout), xp.ascontiguousarray(w)
    dx = xp.empty(x.shape, dtype=dout.dtype)
    _compiled(xp)["dx"](dout, w, *_geometry_args(x.shape, w.shape, pads, stride, h_out, w_out), dx)
    padded = _pad(xp, x, pads)
    hh, ww = w.shape[2:]
    dw = xp.empty(w.shape, dtype=dout.dtype)
    for ki in range(hh):
        for kj in range(ww):
            dw[:, 0, ki, kj] = (dout * _tap(padded, ki, kj, h_out, w_out, stride)).sum(axis=(0, 2, 3))
    return dx, dw
