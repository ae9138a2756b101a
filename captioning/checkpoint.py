"""Checkpoints: everything needed to caption with a model, and to resume training exactly.

One `.npz` file (written atomically by `nn.persist.save_npz`: a crash while
saving never destroys the previous checkpoint) with

arrays
    decoder/<name>   the captioning model's parameters
    encoder/<name>   a trainable encoder's parameters and buffers (small CNN), if any
    optim/<key>      the optimizer's state (Adam moments, step count, learning rate)
metadata (JSON)
    format           "captioning-checkpoint/1"
    model            the model configuration (`captioning.models.build(config)` rebuilds it)
    encoder          how images become features: {"name": "efficientnet_lite0", ...}
                     (frozen, features cached) or {"name": "small_cnn", "config": {...}}
    vocabulary       the vocabulary (`Vocabulary.to_dict()`)
    training         epoch, step, position inside the epoch, history, the training
                     configuration, scheduler and early-stopping state, and the RNG
                     scheme (see captioning.training: every random number of a run is
                     derived from (seed, epoch) or (seed, step), so restoring these
                     counters restores the random state exactly)

`best.npz` (best dev BLEU-4 so far) and `last.npz` (the latest state) live
side by side in the output folder.
"""
import os
from dataclasses import dataclass, field

from nn.persist import check_parameter_values, load_npz, save_npz

from .data.text import Vocabulary
from .models import ConfigMismatchError, build

__all__ = ["FORMAT", "Checkpoint", "save_checkpoint", "read_checkpoint_file", "load_checkpoint", "check_vocabulary"]

FORMAT = "captioning-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and what came with it."""
    path: str
    model: object
    vocabulary: Vocabulary
    encoder: dict
    encoder_state: dict = field(default_factory=dict)
    optimizer_state: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


def save_checkpoint(path, model, vocabulary, encoder_spec, encoder_state=None, optimizer=None,
                    training=None):
    """Write a checkpoint atomically; returns the path.

    Inputs:
    - model: a captioning model (its `config` and `state_dict()` are saved)
    - vocabulary: captioning.data.text.Vocabulary
    - encoder_spec: JSON dict describing the image encoder
    - encoder_state: dict name -> array of a trainable encoder, or None
    - optimizer: an nn.optim optimizer, or None
    - training: JSON dict of the training state, or None
    """
    if len(vocabulary) != model.config["vocab_size"]:
        raise ConfigMismatchError(f"save_checkpoint: vocabulary has {len(vocabulary)} words but the "
                                  f"model was built for vocab_size={model.config['vocab_size']}")
    arrays = {"decoder/" + k: v for k, v in model.state_dict().items()}
    arrays.update({"encoder/" + k: v for k, v in (encoder_state or {}).items()})
    if optimizer is not None:
        arrays.update({"optim/" + k: v for k, v in optimizer.state_dict().items()})
    meta = {"format": FORMAT, "model": model.config, "encoder": encoder_spec,
            "vocabulary": vocabulary.to_dict(), "training": training or {}}
    return save_npz(path, arrays, meta=meta)


def read_checkpoint_file(path):
    """(path as str, arrays, metadata) of a checkpoint file; FileNotFoundError naming what to give
    when `path` is missing or a folder (e.g. the --out folder of a training run)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} is a folder: give a file in it, e.g. "
                                f"{os.path.join(path, 'best.npz')}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    arrays, meta = load_npz(path)
    return path, arrays, meta


def load_checkpoint(path, dtype=None):
    """Read a checkpoint and rebuild its model (in eval mode) on the current backend.

    Raises FileNotFoundError for a missing file and ConfigMismatchError (a
    ValueError) for a file that is not a captioning checkpoint, whose
    parameters do not fit the configuration it records, or that holds an
    array of a non-float dtype or with NaN/inf values (named).
    """
    path, arrays, meta = read_checkpoint_file(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigMismatchError(f"{path} is not a captioning checkpoint (no {FORMAT!r} record); "
                                  "make one with `python -m captioning train`")
    try:
        vocabulary = Vocabulary.from_dict(meta["vocabulary"])
        config = meta["model"]
        if len(vocabulary) != config.get("vocab_size"):
            raise ConfigMismatchError(f"vocabulary of {len(vocabulary)} words but the model "
                                      f"expects vocab_size={config.get('vocab_size')}")
        # Not much more than the file holds: a damaged size (hidden_dim 2**40) is an error, not a
        # huge allocation; a model a little off is built, for the shape check to say what differs.
        held = sum(int(v.size) for k, v in arrays.items() if k.startswith("decoder/"))
        model = build(config, dtype=dtype, max_parameters=2 * held + _SPARE_PARAMETERS)
        records = {name: meta.get(name) or {} for name in ("encoder", "training")}
        wrong = [name for name, record in records.items() if not isinstance(record, dict)]
        if wrong:
            raise ConfigMismatchError(f"its {' and '.join(wrong)} record is not a JSON object")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:   # ConfigMismatchError included
        detail = f"no {exc} record" if isinstance(exc, KeyError) else str(exc)
        raise ConfigMismatchError(f"{path}: a damaged or incomplete checkpoint ({detail})") from None
    parts = _check_arrays(path, arrays)
    try:
        model.load_state_dict(parts["decoder"])
    except ConfigMismatchError as exc:
        raise ConfigMismatchError(f"{path}: {exc}") from exc
    return Checkpoint(
        path=path, model=model.eval(), vocabulary=vocabulary, encoder=records["encoder"],
        encoder_state=parts["encoder"], optimizer_state=parts["optim"], training=records["training"])


# How many parameter values beyond twice what a file holds its configuration may ask for.
_SPARE_PARAMETERS = 1 << 22

# Optimizer entries that are not floats (a step count, a flag); every other saved array is one.
_OPTIM_NON_FLOAT = ("t", "decoupled_weight_decay")


def _check_arrays(path, arrays):
    """Split a checkpoint's arrays into {"decoder", "encoder", "optim"} dicts (prefix removed).

    Refuses, naming the array, any outside those three groups and any float
    that should be a float but is not, or is NaN/inf
    (nn.persist.check_parameter_values): a damaged checkpoint is an error when
    it is read, not garbage captions or a "diverged" training later. Which
    names each group must hold is checked by what loads it (the model, the
    encoder, the optimizer).
    """
    parts = {"decoder": {}, "encoder": {}, "optim": {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group not in parts or not name:
            raise ConfigMismatchError(f"{path}: unexpected array {key!r} (a checkpoint holds only "
                                      "decoder/, encoder/ and optim/ arrays): it is damaged")
        parts[group][name] = value
    floats = {key: value for key, value in arrays.items()
              if not (key.startswith("optim/") and key[len("optim/"):] in _OPTIM_NON_FLOAT)}
    try:
        check_parameter_values(floats)
    except ValueError as exc:
        raise ConfigMismatchError(f"{path}: {exc}") from None
    return parts


def check_vocabulary(checkpoint, vocabulary, what="the data"):
    """A clear error when `vocabulary` is not the checkpoint's (ids would mean other words)."""
    if vocabulary != checkpoint.vocabulary:
        ours, theirs = checkpoint.vocabulary.id_to_word, vocabulary.id_to_word
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise ConfigMismatchError(
            f"{checkpoint.path}: its vocabulary ({len(ours)} words) differs from the one built from "
            f"{what} ({len(theirs)} words), first at id {first}; train a new model or use the "
            "checkpoint's own data")
