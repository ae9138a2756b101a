"""Captioning models and a registry: `build(config)` makes the model a config names.

- "show-tell": Show and Tell (Vinyals et al. 2015), pooled feature -> LSTM.
- "attention": Show, Attend and Tell (Xu et al. 2015), soft attention over a feature grid.
- "lrcn": LRCN factored (Donahue et al. 2015), a words-only LSTM under one that sees the image every step.
- "bag-of-words": a toy, the template for a new model (see the README, "Adding a model").
"""
from .bag_of_words import BagOfWords
from .base import PARAMETER_BUDGET, CaptionModel, ConfigMismatchError, log_softmax
from .lrcn import LRCN
from .show_attend_tell import ShowAttendTell
from .show_tell import ShowAndTell

__all__ = ["BagOfWords", "CaptionModel", "ConfigMismatchError", "LRCN", "ShowAndTell", "ShowAttendTell", "MODELS",
           "build", "log_softmax"]

MODELS = {ShowAndTell.name: ShowAndTell, ShowAttendTell.name: ShowAttendTell, LRCN.name: LRCN,
          BagOfWords.name: BagOfWords}


def build(config, seed=0, dtype=None, max_parameters=None):
    """A new model of the kind config["model"] names (a key of MODELS).

    max_parameters: refuse (ConfigMismatchError, before allocating) a configuration
    that makes more parameter values than this, e.g. than a checkpoint holds.
    """
    kind = config.get("model")
    if kind not in MODELS:
        raise ConfigMismatchError(f"unknown model {kind!r}: choose one of {sorted(MODELS)}")
    token = PARAMETER_BUDGET.set(max_parameters)
    try:
        return MODELS[kind](config, seed=seed, dtype=dtype)
    finally:
        PARAMETER_BUDGET.reset(token)
