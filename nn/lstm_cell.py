"""The elementwise part of one LSTM step, forward and backward, for `nn.recurrent`'s fast paths.

Written in place into preallocated arrays. On NumPy it is a handful of
in-place ufunc calls; on CuPy, where each call is a GPU kernel launch that
costs more than the arithmetic at these sizes, the same math is one fused
kernel per direction (`FORWARD_KERNEL`, `BACKWARD_KERNEL`: KernelSpecs that
`nn.backend.elementwise_kernel` builds). Tests check both paths against
`nn.recurrent`'s readable step functions, and CuPy against NumPy;
tests/test_nn_lstm_cell_on_cpu.py runs the kernels' C++ on the CPU through
tests/cuda_on_cpu.py against the NumPy path and compiles it with nvcc.

Gates are laid out in blocks of H: input, forget, output, g (see `nn.recurrent`).
"""
from . import backend
from .backend import KernelSpec

__all__ = ["cell_forward", "cell_backward", "FORWARD_KERNEL", "BACKWARD_KERNEL"]

_CELL_FORWARD_CODE = """
    const ptrdiff_t n = i / H, j = i % H, col = n * 4 * H + j;   // (n, j) of block i
    const T in_gate = (tanh((xw[col] + recurrent[col]) * (T)0.5) + 1) * (T)0.5;
    const T forget = (tanh((xw[col + H] + recurrent[col + H]) * (T)0.5) + 1) * (T)0.5;
    const T out_gate = (tanh((xw[col + 2 * H] + recurrent[col + 2 * H]) * (T)0.5) + 1) * (T)0.5;
    const T g = tanh(xw[col + 3 * H] + recurrent[col + 3 * H]);
    const T c = in_gate * g + (has_prev_c ? forget * prev_c[i] : (T)0);
    const T tanh_c = tanh(c);
    gates[col] = in_gate; gates[col + H] = forget; gates[col + 2 * H] = out_gate; gates[col + 3 * H] = g;
    next_c[i] = c;
    tanh_next_c[i] = tanh_c;
    next_h[i] = out_gate * tanh_c;
"""

_CELL_BACKWARD_CODE = """
    const ptrdiff_t n = i / H, j = i % H, col = n * 4 * H + j;
    const T in_gate = gates[col], forget = gates[col + H], out_gate = gates[col + 2 * H], g = gates[col + 3 * H];
    const T tanh_c = tanh_next_c[i], d_h = dnext_h[i];
    const T dc = dnext_c[i] + d_h * out_gate * (1 - tanh_c * tanh_c);
    da[col] = dc * g * in_gate * (1 - in_gate);
    da[col + H] = has_prev_c ? dc * prev_c[i] * forget * (1 - forget) : (T)0;
    da[col + 2 * H] = d_h * tanh_c * out_gate * (1 - out_gate);
    da[col + 3 * H] = dc * in_gate * (1 - g * g);
    dprev_c[i] = dc * forget;
"""

# The kernels, built by backend.elementwise_kernel (and run on the CPU by the tests' harness).
# One thread per (n, j) of the (N, H) state, launched with size=N*H; every array is raw.
FORWARD_KERNEL = KernelSpec(
    in_params="raw T xw, raw T recurrent, raw T prev_c, bool has_prev_c, int64 H",
    out_params="raw T gates, raw T next_c, raw T tanh_next_c, raw T next_h",
    operation=_CELL_FORWARD_CODE, name="nn_lstm_cell_forward")
BACKWARD_KERNEL = KernelSpec(
    in_params="raw T dnext_h, raw T dnext_c, raw T gates, raw T tanh_next_c, raw T prev_c, "
              "bool has_prev_c, int64 H",
    out_params="raw T da, raw T dprev_c",
    operation=_CELL_BACKWARD_CODE, name="nn_lstm_cell_backward")


def cell_forward(xp, xw, recurrent, prev_c, gates, next_c, tanh_next_c, next_h):
    """Elementwise part of one LSTM step, into preallocated C-contiguous arrays.

    gates <- activations of a = xw + recurrent (i, f, o sigmoid; g tanh), all (N, 4H)
    (gates may be xw itself); next_c <- f * prev_c + i * g (prev_c None means 0);
    tanh_next_c <- tanh(next_c); next_h <- o * tanh_next_c, all (N, H).
    """
    N, H = next_c.shape
    if backend.is_cupy_array(gates):
        backend.elementwise_kernel(FORWARD_KERNEL)(
            xw, recurrent, next_c if prev_c is None else prev_c, prev_c is not None, H,
            gates, next_c, tanh_next_c, next_h, size=N * H)
        return
    xp.add(xw, recurrent, out=gates)
    ifo = gates[:, :3 * H]                        # sigmoid(a) = (1 + tanh(a / 2)) / 2 for i, f, o
    ifo *= 0.5                                    # (overflow-free, and one tanh pass over
    xp.tanh(gates, out=gates)                     #  all 4H gates, g = tanh(a) included)
    ifo += 1
    ifo *= 0.5
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    xp.multiply(i, g, out=next_c)
    if prev_c is not None:
        next_c += f * prev_c
    xp.tanh(next_c, out=tanh_next_c)
    xp.multiply(o, tanh_next_c, out=next_h)


def cell_backward(xp, dnext_h, dnext_c, gates, tanh_next_c, prev_c, da, dprev_c):
    """Backward of `cell_forward`: da (N, 4H) <- d loss / d a, dprev_c (N, H) <- d loss / d prev_c.

    dnext_h, dnext_c: gradients of next_h and next_c, (N, H); prev_c None means 0.
    dprev_c may be dnext_c itself (updated in place). Arrays C-contiguous.
    """
    N, H = tanh_next_c.shape
    if backend.is_cupy_array(gates):
        backend.elementwise_kernel(BACKWARD_KERNEL)(
            dnext_h, dnext_c, gates, tanh_next_c, tanh_next_c if prev_c is None else prev_c,
            prev_c is not None, H, da, dprev_c, size=N * H)
        return
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    di, df, do, dg = da[:, :H], da[:, H:2 * H], da[:, 2 * H:3 * H], da[:, 3 * H:]
    dc = xp.multiply(tanh_next_c, tanh_next_c)    # dc = dnext_c + dh * o * (1 - tanh(c)^2)
    xp.subtract(1, dc, out=dc)
    dc *= o
    dc *= dnext_h
    dc += dnext_c
    xp.multiply(dnext_h, tanh_next_c, out=do)     # h = o * tanh(c)
    xp.multiply(dc, g, out=di)                    # c = f * prev_c + i * g
    if prev_c is not None:
        xp.multiply(dc, prev_c, out=df)
    else:
        df[...] = 0
    xp.multiply(dc, i, out=dg)
    xp.multiply(dc, f, out=dprev_c)
    ifo = gates[:, :3 * H]                        # sigmoid' = s (1 - s)
    sigmoid_grad = xp.subtract(1, ifo)
    sigmoid_grad *= ifo
    da[:, :3 * H] *= sigmoid_grad
    tanh_grad = xp.multiply(g, g)                 # tanh' = 1 - tanh^2
    xp.subtract(1, tanh_grad, out=tanh_grad)
    dg *= tanh_grad
