"""`Module`, the base class of every layer, and `Sequential`.

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
"""
from . import backend
from .persist import check_parameter_values, compare_named_shapes

__all__ = ["Module", "Sequential"]


class Module:
    """Base class of every layer, and of models built from layers (e.g. SmallCNN). See the module docstring."""

    # buffers that can never be negative (a batchnorm's running variance): load_state_dict refuses such values
    NONNEGATIVE_BUFFERS = ()

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
        self.grads[name] = backend.get_array_module(value).zeros_like(value)
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
            if target.shape == value.shape and backend.get_array_module(target) is backend.get_array_module(value):
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
        name is missing or unexpected; and naming a value that is not a float
        or holds NaN/inf (nn.persist.check_parameter_values).
        """
        targets = self._state_targets()
        missing, unexpected, wrong = compare_named_shapes(targets, state)
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
        try:
            check_parameter_values({name: state[name] for name in targets if name in state})
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {exc}") from None
        for module_name, module in self.named_modules():
            for buffer in module.NONNEGATIVE_BUFFERS:
                name = f"{module_name}.{buffer}" if module_name else buffer
                if name in state and bool((backend.asarray(state[name]) < 0).any()):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {name} holds negative values, "
                                     "which it never has (a variance): the saved state is damaged")
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

