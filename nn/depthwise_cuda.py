"""Depthwise convolution, and a convolution's bias + ReLU6 epilogue, as CUDA kernels on CuPy.

On the GPU the plain depthwise path of `nn.conv` (a multiply-add over the whole
batch per kernel tap) launches a few kernels per tap and passes over memory
once per tap; here each output pixel is one thread that reads its window and
writes once. The same loops as `conv_forward_naive` / `conv_backward_naive`:

    out[n, c, oy, ox] = b[c] + sum_{ki, kj} w[c, 0, ki, kj] * x[n, c, oy*s - top + ki, ox*s - left + kj]
    dx[n, c, iy, ix]  = sum over the (oy, ox, ki, kj) with oy*s + ki = iy + top and ox*s + kj = ix + left
                        of w[c, 0, ki, kj] * dout[n, c, oy, ox]
    dw[c, 0, ki, kj]  = sum_{n, oy, ox} dout[n, c, oy, ox] * x[n, c, oy*s - top + ki, ox*s - left + kj]

(pixels outside the image read as 0). Four ElementwiseKernels, one thread each per
- FORWARD: output pixel, with the bias and optionally ReLU6 applied before the one write;
- BACKWARD_DX: input pixel, gathering the output pixels whose windows covered it;
- BACKWARD_DW: (image, channel, block of output rows, tap), a dot product of dout
  and the tap's window over the block; the partial sums are then summed over
  images and blocks by one CuPy reduction;
- BIAS_RELU6: element of a conv's output, out = min(max(out + b, 0), 6) in place:
  the epilogue of `nn.conv.conv_relu6_inference` for the non-depthwise convs
  (one pass instead of a bias pass and a clip pass).
The kernels are module-level `nn.backend.KernelSpec`s (in_params, out_params,
operation, name) that `backend.elementwise_kernel` builds into CuPy kernels, so tests
hand the very same C++ to the CPU harness (tests/cuda_on_cpu.py: g++ on the CPU,
and nvcc for sm_90).

Index arithmetic is 32-bit: integer / and % are much slower in 64 bits on a
GPU, so the kernels are used only when every array has fewer than 2**31
elements (`forward_applies` / `backward_applies`; larger ones take the plain
path), and dx walks only the taps that hit its pixel instead of testing every
tap with a % per tap.

OFF BY DEFAULT: this code has not yet run on a GPU (issue 17). It is used only
when `nn.backend.use_gpu_kernels(True)` (or NN_GPU_KERNELS=1) and the arrays are
CuPy, float32 or float64, all of one dtype; tests/test_nn_depthwise_cuda.py
compares it with the plain path on CuPy (benchmarks/gpu_check.sh runs it), and
tests/test_nn_depthwise_cuda_on_cpu.py runs every kernel's C++ on the CPU.
Shapes: x (N, C, H, W), w (C, 1, HH, WW), b (C,) or None, pads (top, bottom, left, right).
"""
import numpy

from . import backend
from .backend import KernelSpec

__all__ = ["KERNELS", "FORWARD", "BACKWARD_DX", "BACKWARD_DW", "BIAS_RELU6",
           "forward_applies", "backward_applies", "epilogue_applies",
           "depthwise_forward", "depthwise_backward", "bias_relu6_"]

# Every array handed to a kernel (and every array it writes) has fewer elements than this.
INDEX_LIMIT = 2 ** 31
# BACKWARD_DW: output pixels summed by one thread (whole rows; at least one row).
DW_PIXELS_PER_THREAD = 256

_GEOMETRY = ("int32 channels, int32 height, int32 width, int32 kh, int32 kw, int32 stride, int32 top, "
             "int32 left, int32 h_out, int32 w_out")

FORWARD = KernelSpec("raw T x, raw T w, raw T b, bool has_bias, bool relu6, " + _GEOMETRY, "T out", """
    const int index = (int)i;                         // < 2**31: see forward_applies
    const int ox = index % w_out, oy = (index / w_out) % h_out;
    const int row = index / (w_out * h_out);          // image * channels + channel
    const int ch = row % channels;
    const int y0 = oy * stride - top, x0 = ox * stride - left;     // the window's corner (may be outside)
    T acc = has_bias ? b[ch] : (T)0;
    // the taps whose pixel lies inside the image (the others read zero padding)
    for (int ki = max(0, -y0); ki < min(kh, height - y0); ++ki) {
        for (int kj = max(0, -x0); kj < min(kw, width - x0); ++kj) {
            acc += w[(ch * kh + ki) * kw + kj] * x[(row * height + y0 + ki) * width + x0 + kj];
        }
    }
    if (relu6) acc = acc < (T)0 ? (T)0 : (acc > (T)6 ? (T)6 : acc);    // NaN stays NaN, as in xp.clip
    out = acc;
""", "nn_depthwise_forward")

BACKWARD_DX = KernelSpec("raw T dout, raw T w, " + _GEOMETRY, "T dx", """
    const int index = (int)i;                         // < 2**31: see backward_applies
    const int ix = index % width, iy = (index / width) % height;
    const int row = index / (width * height);         // image * channels + channel
    const int ch = row % channels;
    // Output row oy read input row iy through kernel row ki = iy + top - oy * stride, so only the ki
    // of one residue mod stride hit iy: start at the last output row that can reach iy and step
    // oy down (ki up by stride) while the tap is inside the kernel. One division per axis per
    // thread, instead of a % and a / per tap.
    const int ty = iy + top, tx = ix + left;
    const int oy_last = min(ty / stride, h_out - 1), ox_last = min(tx / stride, w_out - 1);
    T acc = 0;
    for (int oy = oy_last, ki = ty - oy_last * stride; oy >= 0 && ki < kh; --oy, ki += stride) {
        for (int ox = ox_last, kj = tx - ox_last * stride; ox >= 0 && kj < kw; --ox, kj += stride) {
            acc += w[(ch * kh + ki) * kw + kj] * dout[(row * h_out + oy) * w_out + ox];
        }
    }
    dx = acc;
""", "nn_depthwise_backward_dx")

BACKWARD_DW = KernelSpec("raw T dout, raw T x, int32 rows_per_thread, int32 blocks, " + _GEOMETRY, "T partial", """
    // partial has shape (N, C, blocks, kh * kw): the tap varies fastest, so neighbouring threads read
    // neighbouring pixels of x and the same dout.
    const int index = (int)i;                         // < 2**31: see backward_applies
    const int tap = index % (kh * kw), ki = tap / kw, kj = tap % kw;
    const int block = (index / (kh * kw)) % blocks;
    const int row = index / (kh * kw * blocks);       // image * channels + channel
    const int oy_end = min(h_out, (block + 1) * rows_per_thread);
    T acc = 0;
    for (int oy = block * rows_per_thread; oy < oy_end; ++oy) {
        const int iy = oy * stride - top + ki;
        if (iy < 0 || iy >= height) continue;
        for (int ox = 0; ox < w_out; ++ox) {
            const int ix = ox * stride - left + kj;
            if (ix < 0 || ix >= width) continue;
            acc += dout[(row * h_out + oy) * w_out + ox] * x[(row * height + iy) * width + ix];
        }
    }
    partial = acc;
""", "nn_depthwise_backward_dw")

BIAS_RELU6 = KernelSpec("T b", "T out", """
    const T v = out + b;                              // out is read and written in place
    out = v < (T)0 ? (T)0 : (v > (T)6 ? (T)6 : v);   // NaN stays NaN, as in xp.clip
""", "nn_bias_relu6")

KERNELS = (FORWARD, BACKWARD_DX, BACKWARD_DW, BIAS_RELU6)


def _on_kernel_device(xp):
    """The kernels run on CuPy arrays. (The CPU tests point this, and `backend.elementwise_kernel`, at g++.)"""
    return xp is not numpy


def _usable(xp, arrays, written=0):
    """Switched on, CuPy, one float dtype for all `arrays` (None skipped), and every array and
    `written` (elements of the largest array the kernel writes) under INDEX_LIMIT."""
    arrays = [a for a in arrays if a is not None]
    if not (_on_kernel_device(xp) and backend.gpu_kernels_enabled()):
        return False
    dtypes = {numpy.dtype(a.dtype) for a in arrays}
    return (len(dtypes) == 1 and dtypes <= {numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)}
            and max([written] + [a.size for a in arrays]) < INDEX_LIMIT)


def forward_applies(xp, x, w, b, h_out, w_out):
    """Run FORWARD for this depthwise conv? (x, w, b as in the module docstring; out is (N, C, h_out, w_out).)"""
    return _usable(xp, (x, w, b), x.shape[0] * x.shape[1] * h_out * w_out)


def backward_applies(xp, dout, x, w, h_out, w_out):
    """Run the backward kernels? Not when dout's dtype differs from x's and w's: the plain path then
    computes in dout's dtype (the kernels bind one type T for all of their arrays)."""
    hh, ww = w.shape[2:]
    partial = x.shape[0] * x.shape[1] * _dw_blocks(h_out, w_out)[1] * hh * ww
    return _usable(xp, (dout, x, w), partial)


def epilogue_applies(xp, x, b):
    """Run BIAS_RELU6 after a conv of x (N, C, H, W) with bias b (F,)? (Its output has x's dtype.)"""
    return _usable(xp, (x, b))


def _geometry_args(x_shape, w_shape, pads, stride, h_out, w_out):
    _, c, h, wd = x_shape
    return (c, h, wd, w_shape[2], w_shape[3], stride, pads[0], pads[2], h_out, w_out)


def _dw_blocks(h_out, w_out):
    """(output rows per BACKWARD_DW thread, blocks of rows per channel image).

    One thread per (image, channel, tap) summing all output pixels leaves the GPU
    nearly idle on the big early maps (batch 128, 32 channels, 3x3, 112x112
    outputs: 37k threads, each 12544 products in a row); one thread per output
    row would write partial sums larger than dout on the small late maps (7x7
    outputs, 5x5 kernel: 25 sums per row of 7 pixels). About
    DW_PIXELS_PER_THREAD pixels per thread gives 2M threads there, and a single
    block (partial sums of N * C * taps) for maps up to 16x16.
    """
    rows = max(1, min(h_out, DW_PIXELS_PER_THREAD // max(1, w_out)))
    return rows, -(-h_out // rows)


def depthwise_forward(x, w, b, pads, stride, h_out, w_out, relu6=False):
    """out (N, C, H_out, W_out) of the depthwise conv (module docstring), with min(max(out, 0), 6)
    applied when relu6 is True; for arrays where `forward_applies`."""
    xp = backend.get_array_module(x, w, b, op="depthwise_forward")
    x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
    out = xp.empty((x.shape[0], x.shape[1], h_out, w_out), dtype=x.dtype)
    bias = w if b is None else xp.ascontiguousarray(b)      # not read when has_bias is False
    backend.elementwise_kernel(FORWARD)(x, w, bias, b is not None, bool(relu6),
                                        *_geometry_args(x.shape, w.shape, pads, stride, h_out, w_out), out)
    return out


def depthwise_backward(dout, x, w, pads, stride, h_out, w_out):
    """(dx (N, C, H, W), dw (C, 1, HH, WW)) of the depthwise conv, for arrays where `backward_applies`."""
    xp = backend.get_array_module(dout, x, w, op="depthwise_backward")
    dout, x, w = xp.ascontiguousarray(dout), xp.ascontiguousarray(x), xp.ascontiguousarray(w)
    geometry = _geometry_args(x.shape, w.shape, pads, stride, h_out, w_out)
    dx = xp.empty(x.shape, dtype=dout.dtype)
    backend.elementwise_kernel(BACKWARD_DX)(dout, w, *geometry, dx)
    rows, blocks = _dw_blocks(h_out, w_out)
    hh, ww = w.shape[2:]
    partial = xp.empty((x.shape[0], x.shape[1], blocks, hh * ww), dtype=dout.dtype)
    backend.elementwise_kernel(BACKWARD_DW)(dout, x, rows, blocks, *geometry, partial)
    dw = partial.sum(axis=(0, 2)).reshape(w.shape)          # over images and blocks of rows
    return dx, dw


def bias_relu6_(out, b):
    """out = min(max(out + b, 0), 6) in place, in one pass; returns out.

    Inputs:
    - out: (N, F, H_out, W_out) a conv's output without its bias, C-contiguous
    - b: (F,) the bias
    for arrays where `epilogue_applies`.
    """
    backend.get_array_module(out, b, op="bias_relu6_")      # refuses a NumPy/CuPy mix
    backend.elementwise_kernel(BIAS_RELU6)(b.reshape(1, -1, 1, 1), out)
    return out
