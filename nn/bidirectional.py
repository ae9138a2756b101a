"""A bidirectional ReLU RNN over masked (variable-length) sequences.

Karpathy & Fei-Fei (2015) encode a sentence with a bidirectional RNN: one
recurrence reads the words left to right, the other right to left, so every
word's vector knows its context on both sides:

    hf_t = m_t * relu(x_t + hf_{t-1} Wf + bf)      hf_{-1} = 0   (left to right)
    hb_t = m_t * relu(x_t + hb_{t+1} Wb + bb)      hb_T    = 0   (right to left)

x_t is the already projected input of step t (the paper's e_t = f(W_e W_w I_t
+ b_e)); m_t is 1 on a real word and 0 on padding. Sentences are padded on
the right, so the right-to-left recurrence of a short sentence must start at
its LAST REAL word from zero: multiplying by m_t keeps the padded steps at 0.

Shapes (CS231n): N sequences, T steps, H units. Time-major inside for
contiguous steps, like nn.recurrent.
"""
from . import backend
from .dense import _check_float, _check_ndim, _check_shape

__all__ = ["birnn_relu_forward", "birnn_relu_backward"]


def _check_inputs(op, x, mask, Wf, bf, Wb, bb):
    _check_ndim(op, "x", x, 3, "(N, T, H)")
    N, T, H = x.shape
    _check_shape(op, "mask", mask, (N, T))
    for name, w in (("Wf", Wf), ("Wb", Wb)):
        _check_shape(op, name, w, (H, H))
    for name, b in (("bf", bf), ("bb", bb)):
        _check_shape(op, name, b, (H,))
    _check_float(op, x=x, Wf=Wf, bf=bf, Wb=Wb, bb=bb)


def _run(xp, x_tm, mask_tm, W, b, steps):
    """One direction. x_tm (T, N, H), mask_tm (T, N, 1); steps: the t in reading order.
    Returns h (T, N, H) and gate (T, N, H) = m_t * [pre-activation > 0]."""
    h = xp.zeros_like(x_tm)
    gate = xp.zeros_like(x_tm)
    prev = xp.zeros_like(x_tm[0])
    for t in steps:
        a = x_tm[t] + prev @ W + b
        gate[t] = (a > 0) * mask_tm[t]
        h[t] = a * gate[t]
        prev = h[t]
    return h, gate


def birnn_relu_forward(x, mask, Wf, bf, Wb, bb):
    """Forward pass of the bidirectional ReLU RNN (equations in the module docstring).

    Inputs:
    - x: (N, T, H) input of each step (already projected to H)
    - mask: (N, T), 1 for real steps, 0 for padding (right-padded; any dtype)
    - Wf, Wb: (H, H) recurrent weights of the left-to-right / right-to-left pass
    - bf, bb: (H,) their biases
    Returns:
    - hf, hb: (N, T, H) hidden states of the two directions (0 on padding)
    - cache: for birnn_relu_backward
    """
    op = "birnn_relu_forward"
    xp = backend.get_array_module(x, Wf, Wb, op=op)
    _check_inputs(op, x, mask, Wf, bf, Wb, bb)
    T = x.shape[1]
    x_tm = xp.ascontiguousarray(x.transpose(1, 0, 2))
    mask_tm = xp.asarray(mask, dtype=x.dtype).T[:, :, None]
    hf, gate_f = _run(xp, x_tm, mask_tm, Wf, bf, range(T))
    hb, gate_b = _run(xp, x_tm, mask_tm, Wb, bb, range(T - 1, -1, -1))
    cache = (Wf, Wb, hf, hb, gate_f, gate_b)
    return hf.transpose(1, 0, 2), hb.transpose(1, 0, 2), cache


def _run_backward(xp, dh_tm, h, gate, W, steps, offset):
    """Backpropagate one direction through `steps` (reverse reading order); step t read
    the state of step t + offset (-1: left to right, +1: right to left).
    Returns da (T, N, H), the gradient of each step's pre-activation, and dW."""
    T = dh_tm.shape[0]
    da = xp.zeros_like(dh_tm)
    dW = xp.zeros_like(W)
    carry = xp.zeros_like(dh_tm[0])          # d loss / d h_t through the step that read h_t
    for t in steps:
        da[t] = (dh_tm[t] + carry) * gate[t]
        if 0 <= t + offset < T:
            dW += h[t + offset].T @ da[t]
            carry = da[t] @ W.T
    return da, dW


def birnn_relu_backward(dhf, dhb, cache):
    """Backward pass of birnn_relu_forward.

    Inputs:
    - dhf, dhb: (N, T, H) upstream gradients of hf and hb (None counts as zeros)
    - cache: from the forward pass
    Returns: dx (N, T, H), dWf (H, H), dbf (H,), dWb (H, H), dbb (H,)
    """
    Wf, Wb, hf, hb, gate_f, gate_b = cache
    xp = backend.get_array_module(hf, op="birnn_relu_backward")
    T = hf.shape[0]

    def time_major(d):
        if d is None:
            return xp.zeros_like(hf)
        _check_shape("birnn_relu_backward", "dh", d, (hf.shape[1], T, hf.shape[2]))
        return xp.ascontiguousarray(d.transpose(1, 0, 2))
    da_f, dWf = _run_backward(xp, time_major(dhf), hf, gate_f, Wf, range(T - 1, -1, -1), -1)
    da_b, dWb = _run_backward(xp, time_major(dhb), hb, gate_b, Wb, range(T), +1)
    dx = (da_f + da_b).transpose(1, 0, 2)
    return dx, dWf, da_f.sum(axis=(0, 1)), dWb, da_b.sum(axis=(0, 1))
