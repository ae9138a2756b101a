"""Dense layers: the affine map, elementwise activations and dropout (see `nn.layers`)."""
from . import backend
from . import functional as F
from . import init
from .module import Module

__all__ = ["Affine", "ReLU", "ReLU6", "Sigmoid", "Tanh", "Dropout"]


class Affine(Module):
    """Fully connected layer: (N, d_1..d_k) flattened to (N, in_features) -> (N, out_features).

    params: w (in_features, out_features), and b (out_features,) when bias=True
    (no bias before a batchnorm, which would cancel it).
    """

    def __init__(self, in_features, out_features, bias=True, weight_scale=None, dtype=None,
                 seed=None, rng=None):
        super().__init__()
        d = init.positive_int("Affine", "in_features", in_features)
        m = init.positive_int("Affine", "out_features", out_features)
        dtype = init.float_dtype(dtype)
        self.add_param("w", init.fan_in_normal(init.generator(seed, rng), (d, m), dtype, weight_scale))
        if bias:
            self.add_param("b", init.constant((m,), 0, dtype))

    def forward(self, x):
        w = self.params["w"]
        b = self.params.get("b")
        if b is None:
            b = backend.get_array_module(w).zeros(w.shape[1], dtype=w.dtype)
        out, self.cache = F.affine_forward(x, w, b)
        return out

    def backward(self, dout):
        dx, dw, db = F.affine_backward(dout, self._need_cache())
        if "b" in self.params:
            self._set_grads(w=dw, b=db)
        else:
            self._set_grads(w=dw)
        return dx


class _Activation(Module):
    """An elementwise function without parameters."""

    forward_op = None
    backward_op = None

    def forward(self, x):
        out, self.cache = type(self).forward_op(x)
        return out

    def backward(self, dout):
        return type(self).backward_op(dout, self._need_cache())


class ReLU(_Activation):
    """max(0, x), elementwise."""
    forward_op = F.relu_forward
    backward_op = F.relu_backward


class ReLU6(_Activation):
    """min(max(0, x), 6), elementwise (MobileNet / EfficientNet-Lite)."""
    forward_op = F.relu6_forward
    backward_op = F.relu6_backward


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), elementwise."""
    forward_op = F.sigmoid_forward
    backward_op = F.sigmoid_backward


class Tanh(_Activation):
    """tanh(x), elementwise."""
    forward_op = F.tanh_forward
    backward_op = F.tanh_backward


class Dropout(Module):
    """Inverted dropout: in training, zero each unit with probability p and
    scale the rest by 1 / (1 - p); identity in eval mode.

    Each forward call draws a fresh mask; the masks are reproducible from
    `seed` (a per-call seed is drawn from a NumPy generator owned by the layer).
    """

    def __init__(self, p=0.5, seed=None, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p is the drop probability and must be in [0, 1), got {p}")
        self.p = float(p)
        self._seeds = init.generator(seed, rng)

    def forward(self, x):
        mode = "train" if self.training else "test"
        call_seed = int(self._seeds.integers(0, 2 ** 31 - 1))
        out, self.cache = F.dropout_forward(x, {"p": self.p, "mode": mode, "seed": call_seed})
        return out

    def backward(self, dout):
        return F.dropout_backward(dout, self._need_cache())

    def extra_repr(self):
        return f"p={self.p}"

