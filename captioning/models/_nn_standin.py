"""TEMPORARY stand-ins for nn ops that have not landed yet (removed once they do)."""
import numpy as np
from nn.backend import get_array_module, scatter_add
from nn.dense import sigmoid


def word_embedding_forward(x, W):
    return W[x], (x, W)


def word_embedding_backward(dout, cache):
    x, W = cache
    dW = get_array_module(W).zeros_like(W)
    scatter_add(dW, x, dout)
    return dW


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i = sigmoid(a[:, :H]); f = sigmoid(a[:, H:2 * H]); o = sigmoid(a[:, 2 * H:3 * H])
    g = get_array_module(a).tanh(a[:, 3 * H:])
    next_c = f * prev_c + i * g
    tc = get_array_module(a).tanh(next_c)
    next_h = o * tc
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tc)


def lstm_step_backward(dnext_h, dnext_c, cache):
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tc = cache
    xp = get_array_module(x)
    dc = dnext_c + dnext_h * o * (1 - tc * tc)
    da = xp.concatenate([dc * g * i * (1 - i), dc * prev_c * f * (1 - f),
                         dnext_h * tc * o * (1 - o), dc * i * (1 - g * g)], axis=1)
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(0)


def lstm_forward(x, h0, Wx, Wh, b):
    xp = get_array_module(x)
    N, T, _ = x.shape
    h = xp.zeros((N, T, h0.shape[1]), dtype=x.dtype)
    prev_h, prev_c = h0, xp.zeros_like(h0)
    caches = []
    for t in range(T):
        prev_h, prev_c, c = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(c)
    return h, caches


def lstm_backward(dh, caches):
    xp = get_array_module(dh)
    N, T, H = dh.shape
    x0, _, _, Wx, Wh = caches[0][:5]
    dx = xp.zeros((N, T, Wx.shape[0]), dtype=dh.dtype)
    dWx = xp.zeros_like(Wx); dWh = xp.zeros_like(Wh); db = xp.zeros(4 * H, dtype=dh.dtype)
    dprev_h = xp.zeros((N, H), dtype=dh.dtype); dprev_c = xp.zeros_like(dprev_h)
    for t in reversed(range(T)):
        dx[:, t], dprev_h, dprev_c, a, bb, c = lstm_step_backward(dh[:, t] + dprev_h, dprev_c, caches[t])
        dWx += a; dWh += bb; db += c
    return dx, dprev_h, dWx, dWh, db


def temporal_affine_forward(x, w, b):
    N, T, D = x.shape
    return (x.reshape(N * T, D) @ w + b).reshape(N, T, -1), (x, w)


def temporal_affine_backward(dout, cache):
    x, w = cache
    N, T, D = x.shape
    d2 = dout.reshape(N * T, -1)
    return (d2 @ w.T).reshape(N, T, D), x.reshape(N * T, D).T @ d2, d2.sum(0)


def temporal_softmax_loss(x, y, mask):
    xp = get_array_module(x)
    N, T, V = x.shape
    xf = x.reshape(N * T, V); yf = y.reshape(N * T); mf = mask.reshape(N * T)
    shifted = xf - xf.max(axis=1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(mf * logp[xp.arange(N * T), yf]).sum() / N
    dx = xp.exp(logp)
    dx[xp.arange(N * T), yf] -= 1
    dx *= (mf / N)[:, None]
    return loss, dx.reshape(N, T, V)
