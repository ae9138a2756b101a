"""What every captioning model shares: named parameters, configuration checks, decoding helpers.

A model holds its parameters in one flat dict `params` of named arrays (and
`grads` with the same names after a backward pass), plus a plain-JSON
`config` that is enough to rebuild it (`captioning.models.build(config)`).
Two methods make the training and decoding interfaces:

- `forward_backward(features, captions, ...) -> (loss, grads, dfeatures)`:
  teacher-forced loss and every gradient, written out by hand;
- `init_decode_state(features)` / `decode_step(words, state)`: one step of
  the language model at a time for `captioning.decoding` (greedy, beam).
"""
import numpy

from nn import backend
from nn.persist import compare_named_shapes

__all__ = ["CaptionModel", "ConfigMismatchError", "log_softmax"]


class ConfigMismatchError(ValueError):
    """Parameters or a checkpoint that do not belong to this model configuration."""


def log_softmax(scores):
    """Row-wise log-softmax of scores (N, V), computed stably; keeps dtype."""
    xp = backend.get_array_module(scores, op="log_softmax")
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


class CaptionModel:
    """Base class: parameter bookkeeping, train/eval mode, input checks.

    Subclasses set `name` (the registry key), `feature_kind` ("pooled" for an
    (N, D) vector per image or "grid" for (N, L, D) locations), and fill
    `self.params` in `__init__` via `_init_params`.
    """
    name = None
    feature_kind = None

    def __init__(self, config):
        self.config = dict(config)
        self.params = {}
        self.grads = {}
        self.training = True
        self.null_id = int(self.config.get("null_id", 0))
        self.start_id = int(self.config.get("start_id", 1))
        self.end_id = int(self.config.get("end_id", 2))

    # ------------------------------------------------------------ parameters
    def _init_params(self, shapes, seed, dtype=None):
        """Create parameters from {name: (shape, kind)} with a NumPy generator.

        Drawn with NumPy whatever the backend, so that one seed gives the same
        model on the CPU and the GPU. kinds: "weight" ~ N(0, 1/fan_in),
        "zeros", "embedding" ~ N(0, 0.1^2) (a fixed small scale for word vectors).
        """
        gen = numpy.random.default_rng(seed)
        dtype = dtype or backend.default_float()
        for pname, (shape, kind) in shapes.items():
            if kind == "weight":
                value = gen.standard_normal(shape) / numpy.sqrt(shape[0])
            elif kind == "embedding":
                value = gen.standard_normal(shape) * 0.1
            elif kind == "zeros":
                value = numpy.zeros(shape)
            else:
                raise ValueError(f"unknown parameter kind {kind!r}")
            self.params[pname] = backend.asarray(value, dtype=dtype)

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
        """Cast every parameter to dtype (e.g. float64 for gradient checks)."""
        for pname in self.params:
            self.params[pname] = self.params[pname].astype(dtype)
        return self

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    def named_parameters(self, prefix=""):
        """Yield (dotted name, param, grad) like nn.layers.Module, for nn.optim optimizers.

        The gradients are those of the latest forward_backward (zeros before the first).
        """
        for pname, param in self.params.items():
            grad = self.grads.get(pname)
            if grad is None or grad.shape != param.shape:
                grad = self.grads[pname] = backend.get_array_module(param).zeros_like(param)
            yield (f"{prefix}.{pname}" if prefix else pname), param, grad

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def state_dict(self):
        """Parameters as NumPy arrays, by name (for checkpoints)."""
        return {k: backend.to_numpy(v) for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Load parameters; names and shapes must match exactly (ConfigMismatchError otherwise)."""
        missing, unexpected, mismatched = compare_named_shapes(self.params, state)
        wrong = [f"{k}: checkpoint {saved} vs model {model}" for k, model, saved in mismatched]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unexpected:
                parts.append(f"unexpected {unexpected}")
            if wrong:
                parts.append("wrong shapes: " + "; ".join(wrong))
            raise ConfigMismatchError(f"{self.name}: parameters do not match this model ({', '.join(parts)})")
        dtype = self.dtype
        for k in self.params:
            self.params[k] = backend.asarray(state[k], dtype=dtype)
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
        top = int(captions.max())
        if top >= self.config["vocab_size"] or int(captions.min()) < 0:
            raise ValueError(f"{self.name}: word id {top} out of range for vocab_size "
                             f"{self.config['vocab_size']} (captions from another vocabulary?)")

    def _split_captions(self, captions):
        """Teacher forcing: input words, target words and the mask of real (non-pad) targets."""
        captions_in = captions[:, :-1]
        captions_out = captions[:, 1:]
        mask = captions_out != self.null_id
        return captions_in, captions_out, mask

    def _dropout_param(self, seed):
        p = float(self.config.get("dropout", 0.0))
        mode = "train" if (self.training and p > 0) else "test"
        return {"p": p, "mode": mode, "seed": seed}

    # ------------------------------------------------------------ interface
    def loss(self, features, captions, dropout_seed=None):
        """Teacher-forced loss and parameter gradients: (loss, grads)."""
        loss, grads, _ = self.forward_backward(features, captions, dropout_seed=dropout_seed)
        return loss, grads

    def forward_backward(self, features, captions, feature_grad=False, dropout_seed=None):
        raise NotImplementedError

    def init_decode_state(self, features):
        raise NotImplementedError

    def decode_step(self, words, state):
        raise NotImplementedError
