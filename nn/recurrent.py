"""Recurrent layers: a vanilla RNN and an LSTM, one step at a time and over whole sequences.

Shapes follow CS231n: N sequences in a minibatch, T time steps, D input
features, H hidden units, V words in the vocabulary. Sequences are batch-major,
(N, T, ...).

Two versions of each recurrence:
- the STEP functions (`rnn_step_forward`, `lstm_step_forward`, ...) are the
  readable reference: one time step, written as the equations read;
- the SEQUENCE functions (`rnn_forward`, `lstm_forward`, ...) are the fast
  path. They compute the input projection x_t Wx for all time steps at once in
  ONE large matrix product (only h_{t-1} Wh has to wait for the previous step),
  do the elementwise gate work in place in preallocated arrays, and in the
  backward pass collect the per-step gate gradients so that dx, dWx, dWh and db
  each come from one large matrix product at the end instead of T small ones.
  Internally they are time-major, (T, N, ...), so each step reads contiguous
  memory. Tests check that they equal a loop over the step functions.
The `lstm_step_*_from_projection` pair is a fast single step for decoders
whose input changes every step (attention): it shares the sequence path's
elementwise code, `nn.lstm_cell` (in-place ufuncs on NumPy, one fused GPU
kernel per step and direction on CuPy). Tests check both against the
readable step functions, and CuPy against NumPy.

The word embedding (`nn.embedding`) and the per-time-step affine layer
(`nn.dense`) that a recurrent language model needs live with their
concepts; they are importable from here too.

LSTM gates are laid out in blocks of H in the order input, forget, output, g
(the candidate cell value): a = x Wx + h Wh + b has shape (N, 4H) and
i = sigmoid(a[:, :H]), f = sigmoid(a[:, H:2H]), o = sigmoid(a[:, 2H:3H]),
g = tanh(a[:, 3H:]). (PyTorch orders them input, forget, g, output.)
"""
from . import backend
from .dense import (_check_float, _check_ndim, _check_shape, sigmoid, temporal_affine_backward,
                    temporal_affine_forward)
from .embedding import word_embedding_backward, word_embedding_forward
from .lstm_cell import cell_backward, cell_forward

__all__ = [
    "word_embedding_forward", "word_embedding_backward",
    "rnn_step_forward", "rnn_step_backward", "rnn_forward", "rnn_backward",
    "lstm_step_forward", "lstm_step_backward",
    "lstm_step_forward_from_projection", "lstm_step_backward_from_projection",
    "lstm_forward", "lstm_backward",
    "temporal_affine_forward", "temporal_affine_backward",
]


def _check_recurrent_params(op, Wx, Wh, b, D, gates):
    """Wx (D, gates*H), Wh (H, gates*H), b (gates*H,); returns H."""
    _check_ndim(op, "Wh", Wh, 2, f"(H, {gates}H)")
    H = Wh.shape[0]
    _check_shape(op, "Wh", Wh, (H, gates * H))
    _check_shape(op, "Wx", Wx, (D, gates * H))
    _check_shape(op, "b", b, (gates * H,))
    return H


# ---------------------------------------------------------------- vanilla RNN

def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """One time step of a vanilla RNN: next_h = tanh(x Wx + prev_h Wh + b).

    The readable reference; `rnn_forward` (below) is the fast path over a
    whole sequence and equals a loop of this function over t.

    Inputs:
    - x: input at this step, shape (N, D)
    - prev_h: hidden state of the previous step, shape (N, H)
    - Wx: input-to-hidden weights, shape (D, H)
    - Wh: hidden-to-hidden weights, shape (H, H)
    - b: biases, shape (H,)
    Returns:
    - next_h: (N, H)
    - cache: values needed by the backward pass
    """
    op = "rnn_step_forward"
    backend.get_array_module(x, prev_h, Wx, Wh, b, op=op)
    _check_float(op, x=x, prev_h=prev_h, Wx=Wx, Wh=Wh, b=b)
    _check_ndim(op, "x", x, 2, "(N, D)")
    H = _check_recurrent_params(op, Wx, Wh, b, x.shape[1], 1)
    _check_shape(op, "prev_h", prev_h, (x.shape[0], H))
    xp = backend.get_array_module(x)
    next_h = xp.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """Backward pass of `rnn_step_forward`.

    Backpropagation through time is a loop of this function from t = T-1
    down to 0, adding the dprev_h of step t + 1 to the loss's gradient of h_t;
    `rnn_backward` (below) is that loop, done faster.

    Inputs:
    - dnext_h: gradient of the loss with respect to next_h, shape (N, H)
    - cache: from the forward pass
    Returns a tuple of:
    - dx: (N, D)
    - dprev_h: (N, H)
    - dWx: (D, H)
    - dWh: (H, H)
    - db: (H,)
    """
    x, prev_h, Wx, Wh, next_h = cache
    _check_shape("rnn_step_backward", "dnext_h", dnext_h, next_h.shape)
    da = dnext_h * (1 - next_h * next_h)          # tanh'(a) = 1 - tanh(a)^2
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    """A vanilla RNN over a whole sequence (fast path: one input matrix product).

    Equal to a loop of `rnn_step_forward` (above, the readable reference) over t.

    Inputs:
    - x: input sequence, shape (N, T, D)
    - h0: initial hidden state, shape (N, H)
    - Wx: (D, H), Wh: (H, H), b: (H,) as in `rnn_step_forward`
    Returns:
    - h: hidden states of all time steps, shape (N, T, H)
    - cache: values needed by the backward pass
    """
    op = "rnn_forward"
    xp = backend.get_array_module(x, h0, Wx, Wh, b, op=op)
    _check_float(op, x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    _check_ndim(op, "x", x, 3, "(N, T, D)")
    N, T, D = x.shape
    H = _check_recurrent_params(op, Wx, Wh, b, D, 1)
    _check_shape(op, "h0", h0, (N, H))

    h = (x.reshape(N * T, D) @ Wx).reshape(N, T, H)   # x_t Wx for every t at once
    h += b
    prev_h = h0
    for t in range(T):
        h_t = h[:, t]                                 # a view: filled in place
        h_t += prev_h @ Wh
        xp.tanh(h_t, out=h_t)
        prev_h = h_t
    return h, (x, h0, Wx, Wh, h)


def rnn_backward(dh, cache):
    """Backward pass of `rnn_forward` (backpropagation through time).

    Equal to a loop of `rnn_step_backward` (above) from the last step back.

    Inputs:
    - dh: upstream gradients of all hidden states, shape (N, T, H)
      (each h_t also feeds h_{t+1}; that part is added here)
    - cache: from the forward pass
    Returns a tuple of:
    - dx: (N, T, D)
    - dh0: (N, H)
    - dWx: (D, H)
    - dWh: (H, H)
    - db: (H,)
    """
    x, h0, Wx, Wh, h = cache
    xp = backend.get_array_module(dh, h, op="rnn_backward")
    _check_shape("rnn_backward", "dh", dh, h.shape)
    N, T, D = x.shape
    H = h0.shape[1]

    da = xp.empty_like(h)                         # gradients of the pre-activations, all steps
    dprev_h = xp.zeros_like(h0)
    for t in reversed(range(T)):
        h_t = h[:, t]
        da_t = da[:, t]
        xp.add(dh[:, t], dprev_h, out=da_t)
        da_t *= 1 - h_t * h_t
        dprev_h = da_t @ Wh.T

    da_flat = da.reshape(N * T, H)
    prev_hs = xp.concatenate([h0[:, None, :], h[:, :-1]], axis=1).reshape(N * T, H)
    dx = (da_flat @ Wx.T).reshape(N, T, D)
    return dx, dprev_h, x.reshape(N * T, D).T @ da_flat, prev_hs.T @ da_flat, da_flat.sum(axis=0)


# ---------------------------------------------------------------- LSTM, one step

def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One time step of an LSTM (the readable reference).

    The fast paths are `lstm_forward` (a whole sequence) and
    `lstm_step_forward_from_projection` (one step), both below and tested
    equal to this function.

    a = x Wx + prev_h Wh + b, split into four blocks of H:
    i, f, o = sigmoid(input, forget, output blocks), g = tanh(last block);
    next_c = f * prev_c + i * g;  next_h = o * tanh(next_c).

    Inputs:
    - x: input at this step, shape (N, D)
    - prev_h: previous hidden state, shape (N, H)
    - prev_c: previous cell state, shape (N, H)
    - Wx: input-to-hidden weights, shape (D, 4H)
    - Wh: hidden-to-hidden weights, shape (H, 4H)
    - b: biases, shape (4H,)
    Returns a tuple of:
    - next_h: (N, H)
    - next_c: (N, H)
    - cache: values needed by the backward pass
    """
    op = "lstm_step_forward"
    xp = backend.get_array_module(x, prev_h, prev_c, Wx, Wh, b, op=op)
    _check_float(op, x=x, prev_h=prev_h, prev_c=prev_c, Wx=Wx, Wh=Wh, b=b)
    _check_ndim(op, "x", x, 2, "(N, D)")
    H = _check_recurrent_params(op, Wx, Wh, b, x.shape[1], 4)
    _check_shape(op, "prev_h", prev_h, (x.shape[0], H))
    _check_shape(op, "prev_c", prev_c, (x.shape[0], H))

    a = x @ Wx + prev_h @ Wh + b                  # gate pre-activations, (N, 4H)
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H:2 * H])
    o = sigmoid(a[:, 2 * H:3 * H])
    g = xp.tanh(a[:, 3 * H:])
    next_c = f * prev_c + i * g
    tanh_next_c = xp.tanh(next_c)
    next_h = o * tanh_next_c
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_next_c)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """Backward pass of `lstm_step_forward` (the readable reference).

    Backpropagation through time is a loop of this function from t = T-1
    down to 0, carrying dprev_h and dprev_c to the step before (lesson 8
    writes it out); `lstm_backward` (below) computes the same, faster.

    Inputs:
    - dnext_h: gradient with respect to next_h, shape (N, H)
    - dnext_c: gradient with respect to next_c, shape (N, H)
    - cache: from the forward pass
    Returns a tuple of:
    - dx: (N, D)
    - dprev_h: (N, H)
    - dprev_c: (N, H)
    - dWx: (D, 4H)
    - dWh: (H, 4H)
    - db: (4H,)
    """
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_next_c = cache
    xp = backend.get_array_module(dnext_h, dnext_c, x, op="lstm_step_backward")
    _check_shape("lstm_step_backward", "dnext_h", dnext_h, prev_h.shape)
    _check_shape("lstm_step_backward", "dnext_c", dnext_c, prev_h.shape)

    do = dnext_h * tanh_next_c
    dc = dnext_c + dnext_h * o * (1 - tanh_next_c * tanh_next_c)   # through next_h = o tanh(c)
    di, df, dg = dc * g, dc * prev_c, dc * i
    dprev_c = dc * f
    # Through the nonlinearities: sigmoid' = s (1 - s), tanh' = 1 - tanh^2.
    da = xp.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g * g)],
                        axis=1)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_step_forward_from_projection(xw, prev_h, prev_c, Wh):
    """One LSTM step whose input projection xw = x Wx + b is already computed (fast path).

    Useful when the input projection of many steps can be done in one matrix
    product beforehand (e.g. the word-embedding part of a decoder's input).
    The elementwise work is `nn.lstm_cell.cell_forward`: in-place ufuncs on NumPy, one
    fused kernel on CuPy. Same math as `lstm_step_forward` (tested equal).

    Inputs:
    - xw: input projection x Wx + b, shape (N, 4H)
    - prev_h: previous hidden state, shape (N, H)
    - prev_c: previous cell state, shape (N, H)
    - Wh: hidden-to-hidden weights, shape (H, 4H)
    Returns a tuple of:
    - next_h: (N, H)
    - next_c: (N, H)
    - cache: values needed by `lstm_step_backward_from_projection`
    """
    op = "lstm_step_forward_from_projection"
    xp = backend.get_array_module(xw, prev_h, prev_c, Wh, op=op)
    _check_float(op, xw=xw, prev_h=prev_h, prev_c=prev_c, Wh=Wh)
    _check_ndim(op, "prev_h", prev_h, 2, "(N, H)")
    N, H = prev_h.shape
    _check_shape(op, "prev_c", prev_c, (N, H))
    _check_shape(op, "Wh", Wh, (H, 4 * H))
    _check_shape(op, "xw", xw, (N, 4 * H))

    xw, prev_c = xp.ascontiguousarray(xw), xp.ascontiguousarray(prev_c)
    gates = xp.empty_like(xw)                     # activated i, f, o, g
    next_c, tanh_next_c, next_h = (xp.empty_like(prev_c) for _ in range(3))
    cell_forward(xp, xw, prev_h @ Wh, prev_c, gates, next_c, tanh_next_c, next_h)
    return next_h, next_c, (prev_h, prev_c, Wh, gates, tanh_next_c)


def lstm_step_backward_from_projection(dnext_h, dnext_c, cache):
    """Backward pass of `lstm_step_forward_from_projection`.

    Inputs:
    - dnext_h: gradient with respect to next_h, shape (N, H)
    - dnext_c: gradient with respect to next_c, shape (N, H)
    - cache: from the forward pass
    Returns a tuple of:
    - dxw: gradient of the input projection, shape (N, 4H) (also the gradient
      of the pre-activations a; db = dxw.sum(axis=0))
    - dprev_h: (N, H)
    - dprev_c: (N, H)
    - dWh: (H, 4H)
    """
    prev_h, prev_c, Wh, gates, tanh_next_c = cache
    op = "lstm_step_backward_from_projection"
    xp = backend.get_array_module(dnext_h, dnext_c, prev_h, op=op)
    _check_shape(op, "dnext_h", dnext_h, prev_h.shape)
    _check_shape(op, "dnext_c", dnext_c, prev_h.shape)

    da, dprev_c = xp.empty_like(gates), xp.empty_like(prev_c)
    cell_backward(xp, xp.ascontiguousarray(dnext_h), xp.ascontiguousarray(dnext_c), gates,
                   tanh_next_c, prev_c, da, dprev_c)
    return da, da @ Wh.T, dprev_c, prev_h.T @ da


# ---------------------------------------------------------------- LSTM, whole sequence

def lstm_forward(x, h0, Wx, Wh, b):
    """An LSTM over a whole sequence, with initial cell state c0 = 0 (fast path).

    Equal to a loop of `lstm_step_forward` (above, the readable reference) over t.

    The input projection x_t Wx + b of all T steps is one (T*N, D) x (D, 4H)
    matrix product; the gates are then activated in place in that same array.
    Internally the arrays are time-major, (T, N, ...), so that each step works
    on contiguous memory; the result is returned batch-major.

    Inputs:
    - x: input sequence, shape (N, T, D)
    - h0: initial hidden state, shape (N, H)
    - Wx: (D, 4H), Wh: (H, 4H), b: (4H,), gates ordered input, forget, output, g
    Returns:
    - h: hidden states of all time steps, shape (N, T, H)
    - cache: values needed by the backward pass
    """
    op = "lstm_forward"
    xp = backend.get_array_module(x, h0, Wx, Wh, b, op=op)
    _check_float(op, x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    _check_ndim(op, "x", x, 3, "(N, T, D)")
    N, T, D = x.shape
    H = _check_recurrent_params(op, Wx, Wh, b, D, 4)
    _check_shape(op, "h0", h0, (N, H))

    x_steps = xp.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, D)   # time-major rows
    gates = (x_steps @ Wx).reshape(T, N, 4 * H)   # x_t Wx for every t in one product
    gates += b
    hs = xp.empty((T + 1, N, H), dtype=x.dtype)   # hs[0] = h0, hs[t + 1] = h_t
    hs[0] = h0
    c = xp.empty((T, N, H), dtype=x.dtype)        # cell states
    tanh_c = xp.empty((T, N, H), dtype=x.dtype)
    recurrent = xp.empty((N, 4 * H), dtype=x.dtype)
    for t in range(T):
        xp.matmul(hs[t], Wh, out=recurrent)       # the only product that waits for h_{t-1}
        cell_forward(xp, gates[t], recurrent, c[t - 1] if t > 0 else None,   # c_0 = 0
                      gates[t], c[t], tanh_c[t], hs[t + 1])
    h = xp.ascontiguousarray(hs[1:].transpose(1, 0, 2))
    return h, (x_steps, Wx, Wh, gates, c, tanh_c, hs)


def lstm_backward(dh, cache):
    """Backward pass of `lstm_forward` (backpropagation through time).

    Equal to a loop of `lstm_step_backward` (above, the readable reference)
    from the last step back, carrying dh and dc.

    Each step's gradient of the gate pre-activations da_t is stored; dx, dWx,
    dWh and db then come from one matrix product each over all steps, e.g.
    dWh = sum_t h_{t-1}^T da_t = [h_0 .. h_{T-1}]^T [da_1 .. da_T].
    Per step, the elementwise work writes into preallocated buffers.

    Inputs:
    - dh: upstream gradients of all hidden states, shape (N, T, H)
    - cache: from the forward pass
    Returns a tuple of:
    - dx: (N, T, D)
    - dh0: (N, H)
    - dWx: (D, 4H)
    - dWh: (H, 4H)
    - db: (4H,)
    """
    x_steps, Wx, Wh, gates, c, tanh_c, hs = cache
    T, N, H = c.shape
    D = x_steps.shape[1]
    xp = backend.get_array_module(dh, hs, op="lstm_backward")
    _check_shape("lstm_backward", "dh", dh, (N, T, H))

    Wh_T = xp.ascontiguousarray(Wh.T)             # (4H, H), read once per step
    da = xp.empty_like(gates)                     # d loss / d pre-activations, (T, N, 4H)
    dnext_h = xp.zeros((N, H), dtype=gates.dtype)
    dnext_c = xp.zeros((N, H), dtype=gates.dtype)
    dh_t = xp.empty((N, H), dtype=gates.dtype)
    for t in reversed(range(T)):
        xp.add(dh[:, t], dnext_h, out=dh_t)       # from the loss and from step t + 1
        cell_backward(xp, dh_t, dnext_c, gates[t], tanh_c[t], c[t - 1] if t > 0 else None,
                       da[t], dnext_c)
        xp.matmul(da[t], Wh_T, out=dnext_h)

    da_flat = da.reshape(T * N, 4 * H)
    dx_steps = (da_flat @ Wx.T).reshape(T, N, D)
    dx = xp.ascontiguousarray(dx_steps.transpose(1, 0, 2))
    dWx = x_steps.T @ da_flat
    dWh = hs[:-1].reshape(T * N, H).T @ da_flat   # h_{t-1} pairs with da_t
    return dx, dnext_h, dWx, dWh, da_flat.sum(axis=0)
