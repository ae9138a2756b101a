"""Layer objects: thin classes over the functional ops, for building models.

One namespace for every layer, grouped by concept in these files:

- `nn.module`: `Module`, the base class (parameters, gradients, buffers,
  sub-layers, train/eval mode, state dicts; its docstring gives the gradient
  semantics), and the `Sequential` container;
- `nn.dense_layers`: `Affine`, `ReLU`, `ReLU6`, `Sigmoid`, `Tanh`, `Dropout`;
- `nn.conv_layers`: `Conv2d`, `BatchNorm1d`, `BatchNorm2d`, `MaxPool2d`,
  `AvgPool2d`, `GlobalAvgPool`;
- `nn.sequence_layers`: `Embedding`, `LSTM`, `TemporalAffine`;
- `nn.init`: the initial values (see its docstring for the scales). Every
  constructor takes `seed=` or `rng=` (a NumPy or CuPy Generator) and
  `dtype` (default `backend.default_float()`); `weight_scale=` overrides
  the standard deviation of the weights.

Why the caption decoders in `captioning.models` are not Modules: their
backward pass is one hand-written function over all T time steps that reuses
each weight at every step (and splits the LSTM input weights between the word
and the attention context), so layer objects with one cache each would not
fit. They keep one flat dict `params` instead and offer the same
`named_parameters()` (name, param, grad) as a Module, which is all the
optimizers and `nn.persist` need; their initial values come from `nn.init`
too. The pretrained EfficientNet-Lite0 encoder has no parameters in this
sense: it is frozen (no backward pass), and keeps the pretrained tensors,
with each batchnorm folded into its convolution, as constants.
"""
from .conv_layers import AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, GlobalAvgPool, MaxPool2d
from .dense_layers import Affine, Dropout, ReLU, ReLU6, Sigmoid, Tanh
from .module import Module, Sequential
from .sequence_layers import LSTM, Embedding, TemporalAffine

__all__ = [
    "Module", "Sequential", "Affine", "ReLU", "ReLU6", "Sigmoid", "Tanh", "Dropout",
    "Conv2d", "BatchNorm1d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
    "Embedding", "LSTM", "TemporalAffine",
]
