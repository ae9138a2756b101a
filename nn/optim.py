"""Optimizers and gradient clipping (the learning-rate schedules of `nn.schedules` are
importable from here too).

Two forms of the same update rules:

- Functions in the style of Stanford's CS231n (`sgd`, `sgd_momentum`,
  `rmsprop`, `adam`): `next_w, config = rule(w, dw, config)`, where `config`
  holds the hyperparameters and the rule's running state for ONE parameter.
  Lessons use these; they return new arrays and never modify `w`.
- Classes (`SGD`, `RMSprop`, `Adam`) that update every parameter of a model
  IN PLACE (`param -= ...`), so arrays held elsewhere stay valid.

An optimizer is given either a `Module` (its `named_parameters()` is asked
again at every step, so it always sees the current arrays, even after
`to_backend()`) or a list of `(name, param, grad)` triples. Its running state
(moments, step count, learning rate) is keyed by parameter name;
`state_dict()` / `load_state_dict()` save and restore all of it, so a resumed
run continues exactly.

Per-part learning rates (`lr_scales={"encoder": 0.1}`): a parameter whose
dotted name starts with a listed prefix (here "encoder" or "encoder.<...>")
takes `lr * scale`, the longest matching prefix deciding; the others take
`lr`. A schedule that changes `lr` thus moves every part's rate together
(e.g. a pretrained encoder fine-tuned ten times slower than a new decoder).

Weight decay (`weight_decay=lambda`) is classic L2 regularisation folded into
the gradient, dw + lambda * w, as CS231n adds `reg * W`; with
`decoupled_weight_decay=True` it is instead subtracted from the weights
directly, w -= lr * lambda * w (AdamW, Loshchilov & Hutter 2019). Either way it
applies only to parameters with two or more dimensions (weight matrices,
conv kernels, embeddings), never to biases or batchnorm gamma/beta.
"""
import math

import numpy

from . import backend
from .schedules import ReduceOnPlateau, StepDecay  # noqa: F401 (used together: one import)

__all__ = [
    "sgd", "sgd_momentum", "rmsprop", "adam",
    "Optimizer", "SGD", "RMSprop", "Adam",
    "clip_grad_norm", "StepDecay", "ReduceOnPlateau",
]


# ---------------------------------------------------------------------------
# CS231n-style update functions: one parameter, config dict in and out
# ---------------------------------------------------------------------------

def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent: w - lr * dw.

    Inputs:
    - w: parameter array, any shape
    - dw: gradient, same shape as w
    - config: dict, `learning_rate` (default 1e-2)
    Returns: next_w (same shape as w), config
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    next_w = w - config["learning_rate"] * dw
    return next_w, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum: v = mu * v - lr * dw;  w = w + v.

    Inputs:
    - w, dw: parameter and gradient, same shape
    - config: dict, `learning_rate` (1e-2), `momentum` mu (0.9), and
      `velocity` v (zeros like w at first; updated here)
    Returns: next_w, config
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    velocity = config.get("velocity")
    if velocity is None:
        velocity = backend.get_array_module(w).zeros_like(w)
    velocity = config["momentum"] * velocity - config["learning_rate"] * dw
    config["velocity"] = velocity
    return w + velocity, config


def rmsprop(w, dw, config=None):
    """RMSprop: divide the step by a running root-mean-square of the gradient.

    cache = decay * cache + (1 - decay) * dw**2
    w = w - lr * dw / (sqrt(cache) + eps)

    Inputs:
    - w, dw: parameter and gradient, same shape
    - config: dict, `learning_rate` (1e-2), `decay_rate` (0.99),
      `epsilon` (1e-8), `cache` (zeros like w at first; updated here)
    Returns: next_w, config
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    cache = config.get("cache")
    if cache is None:
        cache = backend.get_array_module(w).zeros_like(w)
    decay = config["decay_rate"]
    cache = decay * cache + (1 - decay) * dw * dw
    config["cache"] = cache
    xp = backend.get_array_module(w, dw, op="rmsprop")
    next_w = w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"])
    return next_w, config


def adam(w, dw, config=None):
    """Adam (Kingma & Ba 2015): momentum plus RMSprop, with bias correction.

    t = t + 1                      (incremented BEFORE the bias correction)
    m = beta1 * m + (1 - beta1) * dw
    v = beta2 * v + (1 - beta2) * dw**2
    w = w - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

    Inputs:
    - w, dw: parameter and gradient, same shape
    - config: dict, `learning_rate` (1e-3), `beta1` (0.9), `beta2` (0.999),
      `epsilon` (1e-8), and the state `m`, `v` (zeros like w) and `t` (0)
    Returns: next_w, config
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    xp = backend.get_array_module(w, dw, op="adam")
    m = config.get("m")
    v = config.get("v")
    if m is None:
        m = xp.zeros_like(w)
    if v is None:
        v = xp.zeros_like(w)
    beta1, beta2 = config["beta1"], config["beta2"]
    config["t"] += 1
    t = config["t"]
    m = beta1 * m + (1 - beta1) * dw
    v = beta2 * v + (1 - beta2) * dw * dw
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    next_w = w - config["learning_rate"] * m_hat / (xp.sqrt(v_hat) + config["epsilon"])
    config["m"], config["v"] = m, v
    return next_w, config


# ---------------------------------------------------------------------------
# Optimizer classes: every parameter of a model, updated in place
# ---------------------------------------------------------------------------

def _named_parameters(params):
    """(name, param, grad) triples from a Module or a list of triples."""
    if hasattr(params, "named_parameters"):
        return list(params.named_parameters())
    triples = list(params)
    for item in triples:
        if not (isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str)):
            raise TypeError(
                "optimizer: expected a Module or a list of (name, param, grad) triples, "
                f"got an item of type {type(item).__name__}")
    return triples


class Optimizer:
    """Base class: holds the parameters, learning rate, step count and state.

    Subclasses list their hyperparameter names in HYPER and their per-parameter
    buffers in BUFFERS, and implement `_update(name, param, grad, lr)` (lr: that
    parameter's rate, see `lr_of`).
    """

    HYPER = ("lr", "weight_decay")
    BUFFERS = ()

    def __init__(self, params, lr, weight_decay=0.0, decoupled_weight_decay=False, lr_scales=None):
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be > 0, got {lr}")
        self.lr_scales = {str(prefix): float(scale) for prefix, scale in (lr_scales or {}).items()}
        bad = {prefix: scale for prefix, scale in self.lr_scales.items() if not scale > 0 or math.isinf(scale)}
        if bad:
            raise ValueError(f"{type(self).__name__}: lr_scales must be finite and > 0, got {bad}")
        if weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay}")
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.t = 0  # number of steps taken
        self.state = {}  # buffer name -> {param name -> array}
        for buffer in self.BUFFERS:
            self.state[buffer] = {}
        _named_parameters(params)  # fail early on a bad argument

    def named_parameters(self):
        return _named_parameters(self.params)

    def lr_of(self, name):
        """The learning rate of parameter `name`: lr times the scale of the longest prefix of
        `lr_scales` that is `name` or a dotted beginning of it (lr when none is)."""
        matches = [prefix for prefix in self.lr_scales if name == prefix or name.startswith(prefix + ".")]
        return self.lr * self.lr_scales[max(matches, key=len)] if matches else self.lr

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
        for _, _, grad in self.named_parameters():
            grad[...] = 0

    def _buffer(self, buffer, name, param):
        """The running state `buffer` of parameter `name` (zeros at first)."""
        store = self.state[buffer]
        value = store.get(name)
        if value is None or value.shape != param.shape:
            value = backend.get_array_module(param).zeros_like(param)
        else:   # e.g. after the model moved to another backend or dtype
            value = backend.on_device_of(value, param).astype(param.dtype, copy=False)
        store[name] = value
        return value

    def step(self):
        """Update every parameter in place from its current gradient."""
        self.t += 1
        for name, param, grad in self.named_parameters():
            if param.shape != grad.shape:
                raise ValueError(
                    f"{type(self).__name__}: gradient of {name!r} has shape {grad.shape}, "
                    f"parameter has {param.shape}")
            backend.get_array_module(param, grad, op=f"{type(self).__name__}.step({name})")
            lr = self.lr_of(name)
            decays = self.weight_decay > 0 and param.ndim >= 2
            if decays and self.decoupled_weight_decay:
                param -= (lr * self.weight_decay) * param
            elif decays:
                grad = grad + self.weight_decay * param
            self._update(name, param, grad, lr)

    def _update(self, name, param, grad, lr):
        raise NotImplementedError

    # -- saving and restoring --------------------------------------------
    def state_dict(self):
        """Everything needed for an exact resume, as a flat dict of arrays.

        Keys: "t", "lr", the other hyperparameters, and "<buffer>/<param name>"
        for each running buffer (NumPy or CuPy arrays, copied). Scalars are
        0-d NumPy arrays, so the dict can go straight into an .npz file.
        """
        out = {"t": numpy.array(self.t, dtype=numpy.int64)}
        for hyper in self.HYPER:
            out[hyper] = numpy.array(float(getattr(self, hyper)), dtype=numpy.float64)
        out["decoupled_weight_decay"] = numpy.array(self.decoupled_weight_decay)
        for buffer, store in self.state.items():
            for name, value in store.items():
                out[f"{buffer}/{name}"] = value.copy()
        return out

    def load_state_dict(self, state):
        """Restore from `state_dict()` output (arrays may be NumPy or CuPy).

        Raises ValueError listing missing scalars, buffers of unknown
        parameters, and buffers whose shape differs from the parameter's.
        """
        kind = type(self).__name__
        params = {name: param for name, param, _ in self.named_parameters()}
        scalars = ("t", "decoupled_weight_decay") + tuple(self.HYPER)
        missing = [key for key in scalars if key not in state]
        unexpected, mismatched = [], []
        buffers = {buffer: {} for buffer in self.BUFFERS}
        for key, value in state.items():
            if key in scalars:
                continue
            buffer, _, name = key.partition("/")
            if buffer not in buffers or name not in params:
                unexpected.append(key)
            elif tuple(value.shape) != tuple(params[name].shape):
                mismatched.append(f"{key}: saved {tuple(value.shape)}, parameter {tuple(params[name].shape)}")
            else:
                buffers[buffer][name] = value
        problems = []
        if missing:
            problems.append("missing: " + ", ".join(missing))
        if unexpected:
            problems.append("unexpected (not a buffer of this optimizer's parameters): "
                            + ", ".join(sorted(unexpected)))
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched))
        if problems:
            raise ValueError(f"{kind}.load_state_dict: state does not match; " + " | ".join(problems))
        self.t = int(backend.to_numpy(state["t"]))
        self.decoupled_weight_decay = bool(backend.to_numpy(state["decoupled_weight_decay"]))
        for hyper in self.HYPER:
            setattr(self, hyper, float(backend.to_numpy(state[hyper])))
        for buffer, store in buffers.items():
            self.state[buffer] = {
                name: backend.on_device_of(value, params[name]).astype(params[name].dtype, copy=True)
                for name, value in store.items()
            }

    def to_backend(self):
        """Move the running buffers to the current backend (they also follow
        the parameters automatically at the next step)."""
        for store in self.state.values():
            for name in store:
                store[name] = backend.asarray(store[name])
        return self


class SGD(Optimizer):
    """SGD with momentum (CS231n `sgd_momentum`), in place.

    v = momentum * v - lr * dw;  w += v.   With momentum=0 this is plain SGD.
    Defaults: lr 1e-2, momentum 0.9.
    """

    HYPER = ("lr", "weight_decay", "momentum")
    # A velocity buffer is made on first use, only when momentum > 0; a saved
    # state may bring one (and its momentum) whatever this optimizer was built with.
    BUFFERS = ("velocity",)

    def __init__(self, params, lr=1e-2, momentum=0.9, weight_decay=0.0,
                 decoupled_weight_decay=False, lr_scales=None):
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        super().__init__(params, lr, weight_decay, decoupled_weight_decay, lr_scales)

    def _update(self, name, param, grad, lr):
        if self.momentum == 0:
            param -= lr * grad
            return
        velocity = self._buffer("velocity", name, param)
        velocity *= self.momentum
        velocity -= lr * grad
        param += velocity


class RMSprop(Optimizer):
    """RMSprop (CS231n `rmsprop`), in place. Defaults: lr 1e-2, decay 0.99, eps 1e-8."""

    HYPER = ("lr", "weight_decay", "decay_rate", "eps")
    BUFFERS = ("cache",)

    def __init__(self, params, lr=1e-2, decay_rate=0.99, eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, lr_scales=None):
        if not 0 <= decay_rate < 1:
            raise ValueError(f"RMSprop: decay_rate must be in [0, 1), got {decay_rate}")
        self.decay_rate = float(decay_rate)
        self.eps = float(eps)
        super().__init__(params, lr, weight_decay, decoupled_weight_decay, lr_scales)

    def _update(self, name, param, grad, lr):
        xp = backend.get_array_module(param)
        cache = self._buffer("cache", name, param)
        cache *= self.decay_rate
        cache += (1 - self.decay_rate) * grad * grad
        param -= lr * grad / (xp.sqrt(cache) + self.eps)


class Adam(Optimizer):
    """Adam (CS231n `adam`), in place, one step count for all parameters.

    Defaults: lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8. The step count t is
    incremented before the bias correction, so the first step uses t = 1.
    """

    HYPER = ("lr", "weight_decay", "beta1", "beta2", "eps")
    BUFFERS = ("m", "v")

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, lr_scales=None):
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"Adam: {label} must be in [0, 1), got {beta}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        super().__init__(params, lr, weight_decay, decoupled_weight_decay, lr_scales)

    def _update(self, name, param, grad, lr):
        xp = backend.get_array_module(param)
        m = self._buffer("m", name, param)
        v = self._buffer("v", name, param)
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * grad * grad
        # The step lr * m_hat / (sqrt(v_hat) + eps), with the bias corrections
        # m_hat = m / c1 and v_hat = v / c2 applied to scalars instead of to
        # whole arrays; the denominator is built in place in one buffer.
        c1 = 1 - self.beta1 ** self.t
        c2 = 1 - self.beta2 ** self.t
        denom = xp.sqrt(v)
        denom *= 1 / math.sqrt(c2)
        denom += self.eps
        param -= (lr / c1) * m / denom


# ---------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------

def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so that their global L2 norm is <= max_norm.

    Inputs:
    - grads: a Module, a dict name -> gradient array, a list of
      (name, param, grad) triples, or a list of gradient arrays
    - max_norm: float > 0
    Returns: total_norm, the global norm BEFORE clipping (a Python float).

    total_norm = sqrt(sum over every gradient of sum(g**2)). When it exceeds
    max_norm every gradient is multiplied in place by max_norm / total_norm,
    which keeps the update's direction. A non-finite norm is returned as is
    and nothing is scaled (the caller should stop: the loss has diverged).
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    if hasattr(grads, "named_parameters"):
        arrays = [g for _, _, g in grads.named_parameters()]
    elif isinstance(grads, dict):
        arrays = list(grads.values())
    else:
        arrays = [item[2] if isinstance(item, tuple) else item for item in grads]
    if not arrays:
        return 0.0
    backend.get_array_module(*arrays, op="clip_grad_norm")
    # Sums of squares accumulated in float64 on the arrays' device; one
    # transfer to the host at the end (float()), not one per gradient.
    with numpy.errstate(over="ignore"):           # an overflow is handled just below
        total_norm = math.sqrt(float(sum((g * g).sum(dtype=numpy.float64) for g in arrays)))
    if math.isinf(total_norm):
        # Squared in float32, an entry above ~1.8e19 overflows although it is
        # finite: square in float64 (slower, so only here) before calling it diverged.
        total_norm = math.sqrt(float(sum((g.astype(numpy.float64) ** 2).sum() for g in arrays)))
    if math.isfinite(total_norm) and total_norm > max_norm:
        scale = max_norm / total_norm
        for g in arrays:
            g *= scale
    return total_norm
