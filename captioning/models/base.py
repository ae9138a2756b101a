"""What every captioning model shares: named parameters, configuration checks, decoding helpers.

A model holds its parameters in one flat dict `params` of named arrays (and
`grads` with the same names after a backward pass), plus a plain-JSON
`config` that is enough to rebuild it (`captioning.models.build(config)`);
why a flat dict and not a tree of `nn.layers` Modules: see `nn.layers`.
Two methods make the training and decoding interfaces:

- `forward_backward(features, captions, ...) -> (loss, grads, dfeatures)`:
  teacher-forced loss and every gradient, written out by hand;
- `init_decode_state(features)` / `decode_step(words, state)`: one step of
  the language model at a time for `captioning.decoding` (greedy, beam).

Both models split `forward_backward` the same way: `_forward` (returns the
scores and a cache), the loss, `_backward`. A decoder whose every step
needs more than an LSTM step (attention) also has `_step_forward` /
`_step_backward`, laid out like `nn.recurrent.lstm_step_forward/backward`:
ShowAttendTell is the template.
"""
import contextvars
import math
import numbers

from nn import backend, init
from nn.losses import log_softmax  # also captioning.models.log_softmax
from nn.losses import temporal_softmax_loss, weighted_temporal_softmax_loss
from nn.persist import check_parameter_values, compare_named_shapes

__all__ = ["CaptionModel", "ConfigMismatchError", "log_softmax"]


class ConfigMismatchError(ValueError):
    """Parameters or a checkpoint that do not belong to this model configuration."""


# The most parameter values a model being built may have (None: no limit); set by
# `build(config, max_parameters=...)`, e.g. to what a checkpoint file holds, so that a
# damaged configuration (hidden_dim 2**40) is refused before anything is allocated.
PARAMETER_BUDGET = contextvars.ContextVar("PARAMETER_BUDGET", default=None)


class CaptionModel:
    """Base class: parameter bookkeeping, train/eval mode, input checks.

    Subclasses set `name` (the registry key), `feature_kind` ("pooled" for an
    (N, D) vector per image or "grid" for (N, L, D) locations), `config_keys`
    (the hyperparameters of their own that training sets, beyond vocab_size,
    feature_dim and the word ids), and fill `self.params` in `__init__` via
    `_init_params`.
    """
    name = None
    title = None          # one line for --help
    feature_kind = None
    config_keys = ()

    def __init__(self, config):
        self.config = dict(config)
        self.params = {}
        self.grads = {}
        self.training = True
        self.null_id = int(self.config.get("null_id", 0))
        self.start_id = int(self.config.get("start_id", 1))
        self.end_id = int(self.config.get("end_id", 2))

    def _check_config(self, sizes):
        """ConfigMismatchError naming the entry for a config that cannot make a model.

        sizes: the keys that must be positive ints (vocab_size, hidden_dim, ...).
        """
        config, name = self.config, self.name
        for key in sizes:
            value = config.get(key)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigMismatchError(f"{name} model: {key} must be a positive int, got {value!r}")
        vocab_size = config["vocab_size"]
        ids = {key: getattr(self, key) for key in ("null_id", "start_id", "end_id")}
        if len(set(ids.values())) < 3 or not all(0 <= i < vocab_size for i in ids.values()):
            raise ConfigMismatchError(f"{name} model: null_id, start_id, end_id must be three different "
                                      f"word ids below vocab_size={vocab_size}, got {ids}")
        if not 0 <= float(config.get("dropout", 0.0)) < 1:
            raise ConfigMismatchError(f"{name} model: dropout must be in [0, 1), got {config.get('dropout')!r}")
        if float(config.get("doubly_stochastic", 0.0)) < 0:
            raise ConfigMismatchError(f"{name} model: doubly_stochastic must be >= 0, "
                                      f"got {config.get('doubly_stochastic')!r}")

    # ------------------------------------------------------------ parameters
    def _init_params(self, shapes, seed, dtype=None):
        """Create parameters from {name: (shape, kind)} with a NumPy generator (see `nn.init`).

        kinds: "weight" ~ N(0, 1/fan_in) (`nn.init.fan_in_normal`), "embedding"
        ~ N(0, EMBEDDING_STD^2) (`nn.init.embedding_normal`, as `nn.layers.Embedding`),
        "zeros". Drawn with NumPy whatever the backend, so that one seed gives
        the same model on the CPU and the GPU.
        """
        budget = PARAMETER_BUDGET.get()
        total = sum(math.prod(shape) for shape, _ in shapes.values())
        if budget is not None and total > budget:
            raise ConfigMismatchError(f"{self.name} model: its configuration makes {total:,} parameter values, "
                                      f"more than the {budget:,} allowed here")
        gen = init.generator(seed, None)
        dtype = init.float_dtype(dtype)
        for pname, (shape, kind) in shapes.items():
            if kind == "weight":
                value = init.fan_in_normal(gen, shape, dtype)
            elif kind == "embedding":
                value = init.embedding_normal(gen, shape, dtype)
            elif kind == "zeros":
                value = init.constant(shape, 0, dtype)
            else:
                raise ValueError(f"unknown parameter kind {kind!r}")
            self.params[pname] = value

    def train(self):
        """Training mode: dropout on."""
        self.training = True
        return self

    def eval(self):
        """Evaluation mode: dropout off."""
        self.training = False
        return self

    def to_backend(self):
        """Move every parameter to the CURRENT backend (nn.backend.use)."""
        for pname in self.params:
            self.params[pname] = backend.asarray(self.params[pname])
        self.grads = {}
        return self

    def astype(self, dtype):
        """Cast every parameter (and gradient) to dtype (e.g. float64 for gradient checks).

        The arrays are new: build optimizers after this, or give them the
        model itself (they call named_parameters() at every step).
        """
        for pname in self.params:
            self.params[pname] = self.params[pname].astype(dtype)
        self.grads = {k: g.astype(dtype) for k, g in self.grads.items()}
        return self

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    def named_parameters(self, prefix=""):
        """Yield (dotted name, param, grad) like nn.layers.Module, for nn.optim optimizers.

        The gradients are those of the latest forward_backward (zeros before the
        first). Unlike nn.layers.Module, forward_backward returns NEW gradient
        arrays each call (so a result you keep is never overwritten): give an
        optimizer the model itself, not a list of these triples taken once.
        """
        for pname, param in self.params.items():
            grad = self.grads.get(pname)
            if grad is None or grad.shape != param.shape or grad.dtype != param.dtype:
                grad = self.grads[pname] = backend.get_array_module(param).zeros_like(param)
            yield (f"{prefix}.{pname}" if prefix else pname), param, grad

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def state_dict(self):
        """Parameters as NumPy arrays, by name (for checkpoints)."""
        return {k: backend.to_numpy(v) for k, v in self.params.items()}

    def check_state_dict(self, state, strict=True):
        """Check names and shapes of saved parameters without loading them.

        Wrong shapes always raise ConfigMismatchError; so do missing and
        unexpected names when strict, and values that are not floats or hold
        NaN/inf. Returns (missing, unexpected).
        """
        missing, unexpected, mismatched = compare_named_shapes(self.params, state)
        wrong = [f"{k}: checkpoint {saved} vs model {model}" for k, model, saved in mismatched]
        if wrong or (strict and (missing or unexpected)):
            parts = []
            if strict and missing:
                parts.append(f"missing {missing}")
            if strict and unexpected:
                parts.append(f"unexpected {unexpected}")
            if wrong:
                parts.append("wrong shapes: " + "; ".join(wrong))
            raise ConfigMismatchError(f"{self.name}: parameters do not match this model ({', '.join(parts)})")
        try:
            check_parameter_values({k: state[k] for k in self.params if k in state})
        except ValueError as exc:
            raise ConfigMismatchError(f"{self.name}: {exc}") from None
        return missing, unexpected

    def load_state_dict(self, state, strict=True):
        """Load parameters (new arrays, in the model's dtype, on the current backend).

        Names and shapes must match exactly when strict (ConfigMismatchError
        otherwise, and nothing changes); with strict=False the parameters the
        state lacks keep their values. Returns self.
        """
        self.check_state_dict(state, strict=strict)
        dtype = self.dtype
        loaded = {k: backend.asarray(state[k], dtype=dtype) for k in self.params if k in state}
        self.params.update(loaded)
        return self

    # ------------------------------------------------------------ checks
    def _check_inputs(self, features, captions=None):
        """Clear errors for features/captions that do not fit this model."""
        want_ndim = 2 if self.feature_kind == "pooled" else 3
        layout = "(N, D)" if want_ndim == 2 else "(N, L, D)"
        shape = getattr(features, "shape", None)
        if shape is None or len(shape) != want_ndim:
            raise ValueError(f"{self.name}: features must be {layout}, got shape {shape}")
        if shape[-1] != self.config["feature_dim"]:
            raise ValueError(f"{self.name}: features have D={shape[-1]} but the model was built for "
                             f"feature_dim={self.config['feature_dim']} (another encoder?)")
        if features.dtype != self.dtype:
            raise TypeError(f"{self.name}: features are {features.dtype} but the parameters are "
                            f"{self.dtype}; cast with .astype()")
        if captions is None:
            return
        cshape = getattr(captions, "shape", None)
        if cshape is None or len(cshape) != 2 or cshape[0] != shape[0] or cshape[1] < 2:
            raise ValueError(f"{self.name}: captions must be (N, T+1) = ({shape[0]}, >=2) word ids, "
                             f"got shape {cshape}")
        if captions.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: captions must be integer word ids, got {captions.dtype}")
        xp = backend.get_array_module(captions)
        low, top = xp.stack([captions.min(), captions.max()]).tolist()     # one device sync on CuPy, not two
        if top >= self.config["vocab_size"] or low < 0:
            raise ValueError(f"{self.name}: word id {top if low >= 0 else low} out of range for vocab_size "
                             f"{self.config['vocab_size']} (captions from another vocabulary?)")

    def _split_captions(self, captions):
        """Teacher forcing: input words, target words and the mask of real (non-pad) targets."""
        captions_in = captions[:, :-1]
        captions_out = captions[:, 1:]
        mask = captions_out != self.null_id
        return captions_in, captions_out, mask

    def _word_loss(self, scores, captions_out, mask, token_weights):
        """The word loss and d loss / d scores (N, T, V) of a teacher-forced pass.

        token_weights None: cross-entropy of the real (unmasked) target words.
        token_weights (N, T) floats: each target word's loss weighted by them
        instead (self-critical training: the caption's advantage on its
        sampled words, 0 after its end; see nn.losses.policy_gradient_loss).
        """
        if token_weights is None:
            return temporal_softmax_loss(scores, captions_out, mask)
        if getattr(token_weights, "shape", None) != captions_out.shape:
            raise ValueError(f"{self.name}: token_weights must have shape {captions_out.shape} (N, T), "
                             f"got {getattr(token_weights, 'shape', None)}")
        return weighted_temporal_softmax_loss(scores, captions_out, token_weights)

    def _dropout_param(self, seed):
        p = float(self.config.get("dropout", 0.0))
        mode = "train" if (self.training and p > 0) else "test"
        return {"p": p, "mode": mode, "seed": seed}

    # ------------------------------------------------------------ interface
    def loss(self, features, captions, dropout_seed=None):
        """Teacher-forced loss and parameter gradients: (loss, grads)."""
        loss, grads, _ = self.forward_backward(features, captions, dropout_seed=dropout_seed)
        return loss, grads

    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None, token_weights=None):
        """(loss, grads, dfeatures); token_weights (N, T): see `_word_loss` (regularisers are then left out)."""
        raise NotImplementedError

    def forward_loss(self, features, captions, dropout_seed=None):
        """The teacher-forced loss of `forward_backward` as a float, without its backward pass.

        What validation's dev loss needs: the forward pass alone costs about a
        third of a training step. A model whose `_forward(features,
        captions_in, dropout_seed)` returns (scores, ...) gets this for free
        (`_regulariser_loss` adds what else its loss holds); any other model
        falls back to `forward_backward` (same number, more work).
        In train mode dropout applies as in training: with the same dropout_seed the
        number equals `forward_backward`'s, with None each call draws its own masks.
        """
        if not hasattr(self, "_forward"):
            return self.forward_backward(features, captions, dropout_seed=dropout_seed)[0]
        self._check_inputs(features, captions)
        captions_in, captions_out, mask = self._split_captions(captions)
        outputs = self._forward(features, captions_in, dropout_seed)
        word_loss, _ = self._word_loss(outputs[0], captions_out, mask, None)
        return float(word_loss) + self._regulariser_loss(outputs, mask)

    def _regulariser_loss(self, forward_outputs, mask):
        """The part of the training loss beyond the word loss, from `_forward`'s outputs (none here)."""
        return 0.0

    def init_decode_state(self, features):
        raise NotImplementedError

    def decode_step(self, words, state):
        raise NotImplementedError
