"""Image encoders: images (N, 3, H, W) -> a grid of feature vectors (N, L, D) and its mean (N, D).

- `EfficientNetLite0`: ImageNet-pretrained, frozen, run in our own conv layers
  (`EfficientNetLite0.from_pretrained()`); also classifies into ImageNet classes.
- `SmallCNN`: small and trainable end to end (for the synthetic shapes set).
- `EfficientNetTop` (finetuned.py): the last K blocks and head of EfficientNet-Lite0,
  trainable, fed the cached activations entering block 16 - K (`TopInputs` makes them).

Both expose `name`, `version`, `preprocess` ({size, resize, mean, std} for
captioning.data.images) and `features(images) -> (grid, pooled)`, which is all
that captioning.features needs to cache their outputs.

What the trainer and the commands hold is one of two wrappers, built from the
JSON spec a checkpoint stores by `make_encoder` (or, for a new run, from a data
set's spec by `new_encoder`), through the registry ENCODERS
(PRETRAINED lists the frozen networks whose outputs `features` can cache):
- `FrozenFeatures` (frozen.py): cached outputs of a pretrained CNN, nothing to train;
- `TrainableEncoder` (trainable.py): a CNN whose weights train with the decoder;
- `FineTunedEncoder` (finetuned.py): EfficientNet-Lite0 whose last K blocks train with
  the decoder, from cached activations (`train --fine-tune-blocks K`).
Both have encode(inputs, kind, dtype), backward(d features), file_encoder(kind,
dtype) (image files -> features, for `caption`), named_parameters, state_dict,
train/eval. A new encoder is a module here plus one line in ENCODERS.
"""
from .efficientnet import EfficientNetLite0, classify_files
from .finetuned import FINE_TUNED, EfficientNetTop, FineTunedEncoder, TopInputs, fine_tune_blocks
from .frozen import FrozenFeatures
from .small_cnn import SmallCNN
from .trainable import TrainableEncoder

__all__ = ["EfficientNetLite0", "SmallCNN", "classify_files", "FrozenFeatures", "TrainableEncoder",
           "EfficientNetTop", "FineTunedEncoder", "TopInputs", "fine_tune_blocks", "ENCODERS", "PRETRAINED",
           "make_encoder", "new_encoder"]


# name -> function returning the pretrained network (what `features` caches the outputs of)
PRETRAINED = {EfficientNetLite0.name: EfficientNetLite0.from_pretrained}


def _frozen(network):
    return lambda spec, state=None, dtype=None: FrozenFeatures.from_spec(spec, state, network)


# name -> function(spec, state, dtype) building the encoder a spec describes; state: the
# checkpoint's encoder weights ({} when it holds none), or None for a new run
ENCODERS = {
    "small_cnn": TrainableEncoder.small_cnn_from_spec,
    FINE_TUNED: FineTunedEncoder.from_spec,
    **{name: _frozen(network) for name, network in PRETRAINED.items()},
}


def _lookup(spec):
    from ..models import ConfigMismatchError

    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or name not in ENCODERS:
        raise ConfigMismatchError(f"unknown image encoder {spec!r} (expected one of {sorted(ENCODERS)})")
    return ENCODERS[name]


def make_encoder(spec, state=None, dtype=None):
    """The encoder a checkpoint's spec describes, trainable weights loaded from `state`
    (all of them: a checkpoint lacking some is refused, never run with fresh weights)."""
    return _lookup(spec)(spec, {} if state is None else state, dtype)


def new_encoder(spec, dtype=None):
    """A new run's encoder as a data set's spec describes it (trainable weights from its seed)."""
    return _lookup(spec)(spec, None, dtype)
