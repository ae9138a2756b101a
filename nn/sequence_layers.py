"""Sequence layers: word embedding, LSTM, the per-time-step affine map (see `nn.layers`)."""
from . import backend
from . import functional as F
from . import init
from .module import Module

__all__ = ["Embedding", "LSTM", "TemporalAffine"]


class Embedding(Module):
    """Word embedding: integer ids (N, T) -> vectors (N, T, D).

    params: W (V, D), initialised N(0, 1) * weight_scale (default
    `nn.init.EMBEDDING_STD`, as the caption models' word vectors).
    backward(dout) fills grads["W"] and returns None: integer inputs have no
    gradient.
    """

    def __init__(self, vocab_size, dim, weight_scale=None, dtype=None, seed=None, rng=None):
        super().__init__()
        v = init.positive_int("Embedding", "vocab_size", vocab_size)
        d = init.positive_int("Embedding", "dim", dim)
        self.add_param("W", init.embedding_normal(init.generator(seed, rng), (v, d), init.float_dtype(dtype),
                                                  weight_scale))

    def forward(self, x):
        out, self.cache = F.word_embedding_forward(x, self.params["W"])
        return out

    def backward(self, dout):
        self._set_grads(W=F.word_embedding_backward(dout, self._need_cache()))
        return None


class LSTM(Module):
    """LSTM over a whole sequence, gates in blocks of H: input, forget, output, g.

    params: Wx (D, 4H), Wh (H, 4H), b (4H,); the forget-gate block of b
    starts at `forget_bias` (0 by default, as in CS231n).
    forward(x, h0=None): x (N, T, D), h0 (N, H) (zeros when None) -> h (N, T, H)
    backward(dh): dh (N, T, H) -> (dx (N, T, D), dh0 (N, H))
    """

    def __init__(self, input_dim, hidden_dim, forget_bias=0.0, weight_scale=None, dtype=None,
                 seed=None, rng=None):
        super().__init__()
        d = init.positive_int("LSTM", "input_dim", input_dim)
        h = init.positive_int("LSTM", "hidden_dim", hidden_dim)
        self.hidden_dim = h
        dtype = init.float_dtype(dtype)
        gen = init.generator(seed, rng)
        self.add_param("Wx", init.fan_in_normal(gen, (d, 4 * h), dtype, weight_scale))
        self.add_param("Wh", init.fan_in_normal(gen, (h, 4 * h), dtype, weight_scale))
        b = init.constant((4 * h,), 0, dtype)
        b[h:2 * h] = forget_bias
        self.add_param("b", b)

    def forward(self, x, h0=None):
        if getattr(x, "ndim", None) != 3:
            raise ValueError(f"LSTM: x must be 3-D (N, T, D), got shape {getattr(x, 'shape', None)}")
        if h0 is None:
            h0 = backend.get_array_module(x).zeros((x.shape[0], self.hidden_dim), dtype=x.dtype)
        h, self.cache = F.lstm_forward(x, h0, self.params["Wx"], self.params["Wh"], self.params["b"])
        return h

    def backward(self, dh):
        dx, dh0, dWx, dWh, db = F.lstm_backward(dh, self._need_cache())
        self._set_grads(Wx=dWx, Wh=dWh, b=db)
        return dx, dh0


class TemporalAffine(Module):
    """The same affine map at every time step: (N, T, D) -> (N, T, M).

    params: w (D, M), b (M,)
    """

    def __init__(self, input_dim, output_dim, weight_scale=None, dtype=None, seed=None, rng=None):
        super().__init__()
        d = init.positive_int("TemporalAffine", "input_dim", input_dim)
        m = init.positive_int("TemporalAffine", "output_dim", output_dim)
        dtype = init.float_dtype(dtype)
        self.add_param("w", init.fan_in_normal(init.generator(seed, rng), (d, m), dtype, weight_scale))
        self.add_param("b", init.constant((m,), 0, dtype))

    def forward(self, x):
        out, self.cache = F.temporal_affine_forward(x, self.params["w"], self.params["b"])
        return out

    def backward(self, dout):
        dx, dw, db = F.temporal_affine_backward(dout, self._need_cache())
        self._set_grads(w=dw, b=db)
        return dx

