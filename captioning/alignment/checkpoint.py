"""Aligner checkpoints: one .npz (nn.persist.save_npz, atomic) with the weights, the
vocabulary, the image encoder and, for resuming, the optimizer and the training state."""
from dataclasses import dataclass, field

import numpy

from nn.persist import save_npz

from ..checkpoint import read_checkpoint_file
from ..data.text import Vocabulary
from ..models import ConfigMismatchError
from ..encoders import make_encoder
from .model import AlignmentModel

FORMAT = "captioning-aligner"


@dataclass
class AlignerCheckpoint:
    path: str
    model: AlignmentModel
    encoder: object                 # FrozenFeatures or a TrainableEncoder with its weights
    vocabulary: Vocabulary
    data: dict                      # how to rebuild the data (a captioning.data.datasets spec)
    optimizer_state: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


def save_aligner(path, model, encoder, vocabulary, data_spec, optimizer=None, training=None, dtype=None):
    """Write a checkpoint atomically; dtype (e.g. float16) casts the weights, for a small file."""
    def cast(a):
        return a.astype(dtype) if dtype is not None else a
    arrays = {"model/" + k: cast(v) for k, v in model.state_dict().items()}
    arrays.update({"encoder/" + k: cast(v) for k, v in encoder.state_dict().items()})
    if optimizer is not None:
        arrays.update({"optim/" + k: v for k, v in optimizer.state_dict().items()})
    meta = {"format": FORMAT, "version": 1, "model": model.config, "encoder": encoder.spec,
            "vocabulary": vocabulary.to_dict(), "data": data_spec, "training": training or {}}
    return save_npz(path, arrays, meta=meta, compress=dtype is not None)


def load_aligner(path, dtype=numpy.float32):
    """Read a checkpoint written by save_aligner; rebuilds model and encoder on the backend.

    FileNotFoundError when missing; ConfigMismatchError for another kind of file.
    """
    path, arrays, meta = read_checkpoint_file(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigMismatchError(f"{path} is not an aligner checkpoint (made by "
                                  "`python -m captioning align train`)")
    part = {prefix: {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
            for prefix in ("model", "encoder", "optim")}
    try:
        vocabulary = Vocabulary.from_dict(meta["vocabulary"])
        model = AlignmentModel(meta["model"], dtype=dtype)
        model.load_state_dict(part["model"])
        encoder = make_encoder(meta["encoder"], state=part["encoder"], dtype=dtype)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigMismatchError(f"{path}: a damaged or incomplete aligner checkpoint ({exc})") from None
    return AlignerCheckpoint(path, model, encoder, vocabulary, meta.get("data") or {},
                             optimizer_state=part["optim"], training=meta.get("training") or {})


def export_aligner(source, target, card=None):
    """Write a shippable copy of aligner checkpoint `source` to `target` (and its card beside it).

    Like captioning.pretrained.export_checkpoint for captioners: float16 weights, no
    optimizer state, and no paths of the machine that trained it (the data spec keeps
    the data's name and split sizes; its folder and feature cache become None).
    Inputs:
    - source: a best.npz written by `python -m captioning align train`
    - target: the .npz to write
    - card: dict for the JSON card (model, data, command, test_scores, ...), or None
    Returns: the target path. The card gets "size_mb" and "parameters" added.
    """
    from ..pretrained import export_npz

    def portable(meta):
        if meta.get("format") != FORMAT:
            raise ConfigMismatchError(f"{source} is not an aligner checkpoint")
        meta["data"] = {k: (None if k in ("root", "features") else v) for k, v in (meta.get("data") or {}).items()}
        return meta
    return export_npz(source, target, card, portable, "model/")
