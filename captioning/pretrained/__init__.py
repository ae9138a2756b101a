"""Pretrained models shipped inside the package, so a fresh install can caption a photo.

Each model is one float16 `.npz` checkpoint (no pickles; read by the same
checked loader as any checkpoint, its weights cast back to float32 when
loaded) and a JSON card beside it that says what it is: the data and split it
was trained on, the command that trained it, its test scores, its size.

    captioner_flickr8k.npz / .json   Show, Attend and Tell on Flickr8k, EfficientNet-Lite0 with its
                                     last block and head fine-tuned, then self-critical training
    aligner_flickr8k.npz / .json     Deep Visual-Semantic Alignments on Flickr8k (`align`;
                                     written by captioning.alignment.checkpoint.export_aligner)

`export_checkpoint` makes such a file from a training checkpoint: float16
weights, no optimizer state, and no paths of the machine it was trained on.
"""
import json
import os
import sys
from pathlib import Path

import numpy

from nn.persist import atomic_write, load_npz, save_npz

__all__ = ["PRETRAINED_DIR", "CAPTIONER", "shipped_path", "load_card", "describe", "checkpoint_or_shipped",
           "is_shipped", "export_npz", "export_checkpoint"]

PRETRAINED_DIR = Path(__file__).resolve().parent
CAPTIONER = "captioner_flickr8k"


def shipped_path(name):
    """The path of shipped model `name` (e.g. CAPTIONER), or None when this install has none."""
    path = PRETRAINED_DIR / f"{name}.npz"
    return path if path.is_file() else None


def load_card(name):
    """The JSON card of shipped model `name` as a dict ({} when it has none)."""
    path = PRETRAINED_DIR / f"{name}.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def describe(name):
    """One line for the user: which shipped model this is and how good it is."""
    card = load_card(name)
    scores = card.get("test_scores", {})
    score = ", ".join(f"{k} {v:.1f}" for k, v in scores.items() if k in ("BLEU-4", "CIDEr-D", "R@1"))
    return (f"using the shipped model {name}: {card.get('title', card.get('model', 'a pretrained model'))}"
            + (f" (test {score})" if score else ""))


def checkpoint_or_shipped(given, name=CAPTIONER):
    """`given` (a --checkpoint), or the path of shipped model `name` when it is None, saying on
    stderr which model that is. Raises FileNotFoundError when there is neither."""
    if given is not None:
        return os.fspath(given)
    path = shipped_path(name)
    if path is None:
        raise FileNotFoundError(f"no --checkpoint given, and this install has no shipped {name}: give a "
                                "checkpoint written by `python -m captioning train`")
    print(describe(name), file=sys.stderr)
    return str(path)


def is_shipped(path):
    """True when `path` is one of the shipped models (outputs then go to ./outputs, not beside it)."""
    return os.path.dirname(os.path.abspath(path)) == str(PRETRAINED_DIR)


def _portable_training_record(training):
    """The training record without paths of the machine that trained the model."""
    record = dict(training or {})
    data = dict(record.get("data") or {})
    for key in ("root", "features"):
        if key in data:
            data[key] = None
    record["data"] = data
    record.pop("config_paths", None)
    config = dict(record.get("config") or {})
    if config.get("init"):           # the starting checkpoint of self-critical training: its name only
        config["init"] = os.path.basename(os.fspath(config["init"]))
        record["config"] = config
    return record


def export_npz(source, target, card, make_portable, weights_prefix):
    """The one exporter: float16 weights, no optimizer state, the metadata made portable by
    `make_portable(meta) -> meta` (no paths of the training machine), a JSON card beside it.

    weights_prefix: the arrays counted as the model's parameters in the card ("model/", or a tuple
    such as ("decoder/", "encoder/")).
    Returns the Path written; the card gets "size_mb" and "parameters" added.
    """
    arrays, meta = load_npz(source)
    kept = {key: value.astype(numpy.float16) if numpy.issubdtype(value.dtype, numpy.floating) else value
            for key, value in arrays.items() if not key.startswith("optim/")}
    meta = make_portable(dict(meta or {}))
    meta["exported_from"] = os.path.basename(os.fspath(source))
    target = Path(save_npz(target, kept, meta=meta, compress=True))
    if card is not None:
        card = dict(card, size_mb=round(target.stat().st_size / 2**20, 2),
                    parameters=int(sum(v.size for k, v in kept.items() if k.startswith(weights_prefix))))
        with atomic_write(target.with_suffix(".json"), "w", encoding="utf-8") as stream:
            json.dump(card, stream, indent=1)
    return target


def export_checkpoint(source, target, card=None):
    """Write a shippable copy of captioning checkpoint `source` to `target` (and its card beside it).

    Inputs:
    - source: a best.npz / last.npz written by `python -m captioning train`
    - target: the .npz to write (float16 weights, no optimizer state)
    - card: dict for the JSON card (model, data, command, test_scores, ...), or None
    Returns: the Path written. The card gets "size_mb" and "parameters" added (the decoder's and,
    for a fine-tuned encoder, its trained top's: `encoder/*`).
    """
    def portable(meta):
        meta["training"] = _portable_training_record(meta.get("training"))
        return meta
    return export_npz(source, target, card, portable, ("decoder/", "encoder/"))
