"""Layer objects: thin classes over the functional ops, for building models.

A layer (a `Module`) holds
- `params`:   name -> parameter array (what the optimizer updates),
- `grads`:    name -> gradient array, same keys and shapes as `params`,
- `buffers`:  name -> other saved state (batchnorm running statistics),
- `children`: name -> sub-layer, so that a model is a tree of layers whose
  parameters have dotted names such as "decoder.lstm.Wx",
- `training`: True in training mode (dropout drops, batchnorm uses batch
  statistics), False after `eval()`.

`forward(x)` computes the output and keeps the op's cache in `self.cache`;
`backward(dout)` uses that cache, fills `self.grads` and returns dx. The
math is in `nn.functional`; a layer only stores parameters and caches.

Gradient semantics: backward OVERWRITES the gradients. Each `backward` call
writes the gradients of the latest `forward` into `self.grads` (copied into
the existing arrays, so references held by an optimizer stay valid). There
is nothing to zero between steps. A layer keeps ONE cache, so call it once
per forward pass; code that applies the same weights several times (e.g. one
step at a time in a decoder loop) calls the functional ops itself with
`layer.params[...]` and writes the SUM of the gradients into `layer.grads`.

Initialisation: weights are drawn from a normal distribution with standard
deviation 1 / sqrt(fan_in) (fan_in = inputs feeding one output unit; this
keeps activations at roughly unit variance through a linear map, the scale
CS231n's captioning model uses), except convolutions, which use
sqrt(2 / fan_in) (He et al. 2015) because a ReLU-family activation follows
them, and word embeddings, which use 0.01 (CS231n); `weight_scale=`
overrides the std. Biases start at zero, batchnorm at
gamma = 1, beta = 0. Every constructor takes `seed=` or `rng=` (a NumPy or
CuPy Generator). With a seed the numbers are drawn by NumPy on the CPU and
then moved to the current backend, so a seed gives the same initial model on
NumPy and CuPy. New parameters get `dtype` (default `backend.default_float()`).
"""
import numpy

from . import backend
from . import functional as F
from .persist import compare_named_shapes

__all__ = [
    "Module", "Sequential", "Affine", "ReLU", "ReLU6", "Sigmoid", "Tanh", "Dropout",
    "Conv2d", "BatchNorm1d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
    "Embedding", "LSTM", "TemporalAffine",
]


def _module_of(array):
    return backend.get_array_module(array)


class Module:
    """Base class of every layer and model. See the module docstring."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.children = {}
        self.training = True
        self.cache = None

    # -- building --------------------------------------------------------
    def add_param(self, name, value):
        """Register a parameter (and a zero gradient of the same shape)."""
        self._check_name(name)
        self.params[name] = value
        self.grads[name] = _module_of(value).zeros_like(value)
        return value

    def add_buffer(self, name, value):
        """Register non-trained state that is saved and moved with the model."""
        self._check_name(name)
        self.buffers[name] = value
        return value

    def add_child(self, name, module):
        """Register a sub-layer under `name`; returns it (self.x = self.add_child("x", ...))."""
        self._check_name(name)
        if not isinstance(module, Module):
            raise TypeError(f"add_child({name!r}): expected a Module, got {type(module).__name__}")
        self.children[name] = module
        return module

    def _check_name(self, name):
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise ValueError(f"{type(self).__name__}: a name must be a non-empty string without "
                             f"'.' or '/', got {name!r}")
        for table in (self.params, self.buffers, self.children):
            if name in table:
                raise ValueError(f"{type(self).__name__}: name {name!r} is already used")

    def _set_grads(self, **grads):
        """Overwrite self.grads[name] with each given gradient (in place)."""
        for name, value in grads.items():
            target = self.grads[name]
            if target.shape == value.shape and _module_of(target) is _module_of(value):
                target[...] = value
            else:
                self.grads[name] = value

    # -- running ---------------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    def _need_cache(self):
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward "
                               "(or after to_backend(), which drops the cache)")
        return self.cache

    def train(self, mode=True):
        """Set training mode here and in every sub-layer; returns self."""
        self.training = bool(mode)
        for child in self.children.values():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (no dropout, batchnorm running statistics); returns self."""
        return self.train(False)

    # -- walking the tree ------------------------------------------------
    def named_modules(self, prefix=""):
        """Yield (dotted name, module) for this module ("" for itself) and all below."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """Yield (dotted name, param, grad) for every parameter in the tree."""
        for module_name, module in self.named_modules(prefix):
            for name, param in module.params.items():
                yield (f"{module_name}.{name}" if module_name else name), param, module.grads[name]

    def named_buffers(self, prefix=""):
        """Yield (dotted name, buffer) for every buffer in the tree."""
        for module_name, module in self.named_modules(prefix):
            for name, value in module.buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), value

    def num_parameters(self):
        """Total number of trainable scalars."""
        return sum(int(param.size) for _, param, _ in self.named_parameters())

    def zero_grad(self):
        """Set every gradient in the tree to zero (in place)."""
        for _, _, grad in self.named_parameters():
            grad[...] = 0

    def to_backend(self):
        """Move every parameter, gradient and buffer to the current backend.

        Dtypes are kept. The forward caches are dropped (they hold arrays of
        the old backend). Returns self.
        """
        for _, module in self.named_modules():
            for table in (module.params, module.grads, module.buffers):
                for name in table:
                    table[name] = backend.asarray(table[name])
            module.cache = None
        return self

    # -- saving and loading ----------------------------------------------
    def state_dict(self):
        """dotted name -> copy of every parameter and buffer (same backend)."""
        state = {name: param.copy() for name, param, _ in self.named_parameters()}
        state.update({name: value.copy() for name, value in self.named_buffers()})
        return state

    def _state_targets(self):
        targets = {name: param for name, param, _ in self.named_parameters()}
        targets.update(dict(self.named_buffers()))
        return targets

    def check_state_dict(self, state, strict=True):
        """Compare `state` with this model's names and shapes, changing nothing.

        Returns (missing, unexpected): sorted lists of names. Raises ValueError
        listing every difference when a shape differs, or when strict and any
        name is missing or unexpected.
        """
        missing, unexpected, wrong = compare_named_shapes(self._state_targets(), state)
        mismatched = [f"{name}: saved {saved}, model {model}" for name, model, saved in wrong]
        problems = []
        if strict and missing:
            problems.append("missing (in the model, not in the saved state): " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected (saved, not in the model): " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched))
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state does not match the model; "
                             + " | ".join(problems))
        return missing, unexpected

    def load_state_dict(self, state, strict=True):
        """Copy saved values into this model's arrays (keeping backend and dtype).

        `state`: dotted name -> array (NumPy or CuPy), e.g. from state_dict()
        or nn.persist.load_npz. Names and shapes are checked first (see
        check_state_dict), so on error nothing has changed.
        Returns (missing, unexpected) name lists (empty when strict).
        """
        missing, unexpected = self.check_state_dict(state, strict=strict)
        targets = self._state_targets()
        # Convert everything first (a value that does not cast to the target's
        # dtype fails here), then copy: an error leaves the model as it was.
        values = {}
        for name, target in targets.items():
            if name in state:
                try:
                    values[name] = backend.on_device_of(state[name], target).astype(target.dtype, copy=False)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{name}: cannot load a {getattr(state[name], 'dtype', type(state[name]))} "
                                     f"value into a {target.dtype} array ({exc})") from None
        for name, value in values.items():
            targets[name][...] = value
        return missing, unexpected

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()})"]
        for name, child in self.children.items():
            child_lines = repr(child).splitlines()
            lines.append(f"  ({name}): " + child_lines[0])
            lines.extend("  " + line for line in child_lines[1:])
        return "\n".join(lines)

    def extra_repr(self):
        return ", ".join(f"{name}={tuple(p.shape)}" for name, p in self.params.items())


# ---------------------------------------------------------------------------
# Initialisation helpers
# ---------------------------------------------------------------------------

def _generator(seed, rng):
    """The generator a constructor draws from: `rng` if given, else NumPy's from `seed`."""
    if rng is not None and seed is not None:
        raise ValueError("give either seed= or rng=, not both")
    return rng if rng is not None else numpy.random.default_rng(seed)


def _normal(gen, shape, std, dtype):
    """std * N(0, 1) samples of `shape`, as `dtype` on the current backend."""
    sample = gen.standard_normal(size=shape) * std
    return backend.asarray(sample, dtype=dtype)


def _constant(shape, value, dtype):
    return backend.xp().full(shape, value, dtype=dtype)


def _float_dtype(dtype):
    dtype = numpy.dtype(backend.default_float() if dtype is None else dtype)
    if dtype.kind != "f":
        raise TypeError(f"parameter dtype must be floating point, got {dtype}")
    return dtype


def _positive_int(layer, name, value):
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------

class Sequential(Module):
    """Layers applied one after another; children are named "0", "1", ...

    forward(x) feeds each layer's output to the next; backward(dout) runs the
    layers' backward passes in reverse order and returns dx.
    """

    def __init__(self, *layers):
        super().__init__()
        for index, layer in enumerate(layers):
            self.add_child(str(index), layer)

    def __len__(self):
        return len(self.children)

    def __getitem__(self, index):
        return list(self.children.values())[index]

    def forward(self, x):
        for layer in self.children.values():
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(list(self.children.values())):
            dout = layer.backward(dout)
        return dout


# ---------------------------------------------------------------------------
# Dense layers and activations
# ---------------------------------------------------------------------------

class Affine(Module):
    """Fully connected layer: (N, d_1..d_k) flattened to (N, in_features) -> (N, out_features).

    params: w (in_features, out_features), and b (out_features,) when bias=True
    (no bias before a batchnorm, which would cancel it).
    """

    def __init__(self, in_features, out_features, bias=True, weight_scale=None, dtype=None,
                 seed=None, rng=None):
        super().__init__()
        d = _positive_int("Affine", "in_features", in_features)
        m = _positive_int("Affine", "out_features", out_features)
        dtype = _float_dtype(dtype)
        std = 1.0 / numpy.sqrt(d) if weight_scale is None else weight_scale
        self.add_param("w", _normal(_generator(seed, rng), (d, m), std, dtype))
        if bias:
            self.add_param("b", _constant((m,), 0, dtype))

    def forward(self, x):
        w = self.params["w"]
        b = self.params.get("b")
        if b is None:
            b = _module_of(w).zeros(w.shape[1], dtype=w.dtype)
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
        self._seeds = _generator(seed, rng)

    def forward(self, x):
        mode = "train" if self.training else "test"
        call_seed = int(self._seeds.integers(0, 2 ** 31 - 1))
        out, self.cache = F.dropout_forward(x, {"p": self.p, "mode": mode, "seed": call_seed})
        return out

    def backward(self, dout):
        return F.dropout_backward(dout, self._need_cache())

    def extra_repr(self):
        return f"p={self.p}"


# ---------------------------------------------------------------------------
# Convolution, normalisation, pooling
# ---------------------------------------------------------------------------

def _pair(layer, name, value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair, got {value!r}")
        return (_positive_int(layer, name, value[0]), _positive_int(layer, name, value[1]))
    value = _positive_int(layer, name, value)
    return (value, value)


class Conv2d(Module):
    """2-D convolution over NCHW images.

    Inputs to the constructor:
    - in_channels C, out_channels F, kernel_size (int or (HH, WW))
    - stride: int
    - pad: int (all sides), (pad_h, pad_w), (top, bottom, left, right),
      "same" (TensorFlow same padding, computed for each input size by
      `F.same_padding`: the odd pixel goes bottom/right) or "valid" (0)
    - groups: C and F must both be divisible by it; groups == C is depthwise
    - bias: whether there is a bias b (F,)
    params: w (F, C // groups, HH, WW), and b (F,) when bias=True
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, groups=1, bias=True,
                 weight_scale=None, dtype=None, seed=None, rng=None):
        super().__init__()
        c = _positive_int("Conv2d", "in_channels", in_channels)
        f = _positive_int("Conv2d", "out_channels", out_channels)
        self.groups = _positive_int("Conv2d", "groups", groups)
        if c % self.groups or f % self.groups:
            raise ValueError(f"Conv2d: in_channels {c} and out_channels {f} must both be divisible "
                             f"by groups {self.groups}")
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size)
        self.stride = _positive_int("Conv2d", "stride", stride)
        self.pad = self._parse_pad(pad)
        dtype = _float_dtype(dtype)
        fan_in = (c // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        std = numpy.sqrt(2.0 / fan_in) if weight_scale is None else weight_scale
        shape = (f, c // self.groups) + self.kernel_size
        self.add_param("w", _normal(_generator(seed, rng), shape, std, dtype))
        if bias:
            self.add_param("b", _constant((f,), 0, dtype))

    @staticmethod
    def _parse_pad(pad):
        if isinstance(pad, str):
            if pad not in ("same", "valid"):
                raise ValueError(f"Conv2d: pad must be an int, a tuple, 'same' or 'valid', got {pad!r}")
            return (0, 0, 0, 0) if pad == "valid" else "same"
        if isinstance(pad, (tuple, list)):
            values = tuple(int(v) for v in pad)
            if len(values) == 2:
                values = (values[0], values[0], values[1], values[1])
            if len(values) != 4 or min(values) < 0:
                raise ValueError("Conv2d: pad tuple must be (pad_h, pad_w) or (top, bottom, left, "
                                 f"right) of non-negative ints, got {pad!r}")
            return values
        if int(pad) != pad or pad < 0:
            raise ValueError(f"Conv2d: pad must be a non-negative int, got {pad!r}")
        return (int(pad),) * 4

    def padding_for(self, height, width):
        """(top, bottom, left, right) padding used for an input of this size."""
        if self.pad != "same":
            return self.pad
        top, bottom = F.same_padding(height, self.kernel_size[0], self.stride)
        left, right = F.same_padding(width, self.kernel_size[1], self.stride)
        return (top, bottom, left, right)

    def forward(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"Conv2d: x must be 4-D (N, C, H, W), got shape {getattr(x, 'shape', None)}")
        w = self.params["w"]
        b = self.params.get("b")  # None: no bias
        conv_param = {"stride": self.stride, "pad": self.padding_for(x.shape[2], x.shape[3]),
                      "groups": self.groups}
        out, self.cache = F.conv_forward(x, w, b, conv_param)
        return out

    def backward(self, dout):
        dx, dw, db = F.conv_backward(dout, self._need_cache())
        if "b" in self.params:
            self._set_grads(w=dw, b=db)
        else:
            self._set_grads(w=dw)
        return dx

    def extra_repr(self):
        return (f"w={tuple(self.params['w'].shape)}, stride={self.stride}, pad={self.pad!r}, "
                f"groups={self.groups}, bias={'b' in self.params}")


class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d.

    params: gamma (C,), beta (C,); buffers: running_mean (C,), running_var (C,)
    Running statistics follow the CS231n convention:
    running = momentum * running + (1 - momentum) * batch statistic.
    """

    forward_op = None
    backward_op = None

    def __init__(self, num_features, eps=1e-5, momentum=0.9, dtype=None, seed=None, rng=None):
        super().__init__()
        c = _positive_int(type(self).__name__, "num_features", num_features)
        dtype = _float_dtype(dtype)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.add_param("gamma", _constant((c,), 1, dtype))
        self.add_param("beta", _constant((c,), 0, dtype))
        self.add_buffer("running_mean", _constant((c,), 0, dtype))
        self.add_buffer("running_var", _constant((c,), 1, dtype))

    def forward(self, x):
        bn_param = {
            "mode": "train" if self.training else "test",
            "eps": self.eps,
            "momentum": self.momentum,
            "running_mean": self.buffers["running_mean"],
            "running_var": self.buffers["running_var"],
        }
        out, self.cache = type(self).forward_op(x, self.params["gamma"], self.params["beta"], bn_param)
        # The op may update the statistics in place or put new arrays in bn_param.
        for key in ("running_mean", "running_var"):
            if bn_param[key] is not self.buffers[key]:
                self.buffers[key][...] = bn_param[key]
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = type(self).backward_op(dout, self._need_cache())
        self._set_grads(gamma=dgamma, beta=dbeta)
        return dx

    def extra_repr(self):
        return f"C={self.params['gamma'].shape[0]}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, D) activations over the batch axis."""
    forward_op = staticmethod(F.batchnorm_forward)
    backward_op = staticmethod(F.batchnorm_backward)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) feature maps per channel (over N, H, W)."""
    forward_op = staticmethod(F.spatial_batchnorm_forward)
    backward_op = staticmethod(F.spatial_batchnorm_backward)


class _Pool2d(Module):
    forward_op = None
    backward_op = None

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(name, "kernel_size", kernel_size)
        self.stride = self.kernel_size[0] if stride is None else _positive_int(name, "stride", stride)

    def forward(self, x):
        pool_param = {"pool_height": self.kernel_size[0], "pool_width": self.kernel_size[1],
                      "stride": self.stride}
        out, self.cache = type(self).forward_op(x, pool_param)
        return out

    def backward(self, dout):
        return type(self).backward_op(dout, self._need_cache())

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class MaxPool2d(_Pool2d):
    """Max pooling over (kernel_h, kernel_w) windows; stride defaults to kernel_h."""
    forward_op = staticmethod(F.max_pool_forward)
    backward_op = staticmethod(F.max_pool_backward)


class AvgPool2d(_Pool2d):
    """Average pooling over (kernel_h, kernel_w) windows; stride defaults to kernel_h."""
    forward_op = staticmethod(F.avg_pool_forward)
    backward_op = staticmethod(F.avg_pool_backward)


class GlobalAvgPool(Module):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        out, self.cache = F.global_avg_pool_forward(x)
        return out

    def backward(self, dout):
        return F.global_avg_pool_backward(dout, self._need_cache())


# ---------------------------------------------------------------------------
# Sequence layers
# ---------------------------------------------------------------------------

class Embedding(Module):
    """Word embedding: integer ids (N, T) -> vectors (N, T, D).

    params: W (V, D), initialised N(0, 1) * weight_scale (default 0.01, as in
    CS231n's captioning model). backward(dout) fills grads["W"] and returns
    None: integer inputs have no gradient.
    """

    def __init__(self, vocab_size, dim, weight_scale=0.01, dtype=None, seed=None, rng=None):
        super().__init__()
        v = _positive_int("Embedding", "vocab_size", vocab_size)
        d = _positive_int("Embedding", "dim", dim)
        self.add_param("W", _normal(_generator(seed, rng), (v, d), weight_scale, _float_dtype(dtype)))

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
        d = _positive_int("LSTM", "input_dim", input_dim)
        h = _positive_int("LSTM", "hidden_dim", hidden_dim)
        self.hidden_dim = h
        dtype = _float_dtype(dtype)
        gen = _generator(seed, rng)
        self.add_param("Wx", _normal(gen, (d, 4 * h), 1.0 / numpy.sqrt(d) if weight_scale is None
                                     else weight_scale, dtype))
        self.add_param("Wh", _normal(gen, (h, 4 * h), 1.0 / numpy.sqrt(h) if weight_scale is None
                                     else weight_scale, dtype))
        b = _constant((4 * h,), 0, dtype)
        b[h:2 * h] = forget_bias
        self.add_param("b", b)

    def forward(self, x, h0=None):
        if getattr(x, "ndim", None) != 3:
            raise ValueError(f"LSTM: x must be 3-D (N, T, D), got shape {getattr(x, 'shape', None)}")
        if h0 is None:
            h0 = _module_of(x).zeros((x.shape[0], self.hidden_dim), dtype=x.dtype)
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
        d = _positive_int("TemporalAffine", "input_dim", input_dim)
        m = _positive_int("TemporalAffine", "output_dim", output_dim)
        dtype = _float_dtype(dtype)
        std = 1.0 / numpy.sqrt(d) if weight_scale is None else weight_scale
        self.add_param("w", _normal(_generator(seed, rng), (d, m), std, dtype))
        self.add_param("b", _constant((m,), 0, dtype))

    def forward(self, x):
        out, self.cache = F.temporal_affine_forward(x, self.params["w"], self.params["b"])
        return out

    def backward(self, dout):
        dx, dw, db = F.temporal_affine_backward(dout, self._need_cache())
        self._set_grads(w=dw, b=db)
        return dx
