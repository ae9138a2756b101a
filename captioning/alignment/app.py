"""What `python -m captioning align ...` does, as importable functions (the command only
parses options): build the data and the model, train, evaluate, search."""
import os
from dataclasses import dataclass

import numpy

from nn import backend

from ..cli import UsageError
from ..data.text import Vocabulary, tokenize
from .checkpoint import load_aligner
from .data import encode_sentences
from .model import AlignmentModel
from .retrieval import PAPER_FLICKR8K, encode_images, recall_metrics, sentence_scores

PRETRAINED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "pretrained", "aligner_flickr8k.npz")

# Per data set: the defaults of `align train` (the shapes set trains its small CNN end to end).
# Shapes (README, "On the synthetic shapes set"): the SUM of the cosines over the words, the
# global term x 3 and cell positions, 8 epochs with the learning rate cut to 0.6x after each:
# test annotation R@1 91.0 to 92.8 over seeds 0-3 (the mean of the cosines, no global term or
# a constant rate each ranked worse).
DEFAULTS = {
    "shapes": {"hidden": 128, "embed": 64, "lr": 5e-3, "epochs": 8, "batch_size": 32, "min_count": 1,
               "val_images": None, "max_minutes": 8.0, "patience": 3, "dropout": 0.0, "word_dropout": 0.0,
               "weight_decay": 0.0, "lr_decay": 0.6, "cosine": 10.0, "clip": False, "average": False,
               "hard_negatives": False, "hard_warmup": 0, "global_weight": 3.0, "positions": True},
    "flickr8k": {"hidden": 256, "embed": 200, "lr": 1e-3, "epochs": 15, "batch_size": 100, "min_count": 5,
                 "val_images": 500, "max_minutes": None, "patience": 3, "dropout": 0.0, "word_dropout": 0.0,
                 "weight_decay": 0.0, "lr_decay": 1.0, "cosine": 10.0, "clip": False, "average": True,
                 "hard_negatives": False, "hard_warmup": 0, "global_weight": 0.0, "positions": False},
}
SHAPES_TRAIN = 3000


def load_training_data(data_arg, features_arg, seed=0, max_images=None):
    """(TrainingData with train and dev splits, the image encoder) for `align train`."""
    from ..data.datasets import DATASETS, DEFAULT_DATASET, DatasetError, folder_dataset
    from ..encoders import new_encoder
    try:
        if data_arg is None:
            data = DATASETS[DEFAULT_DATASET].load(n_train=SHAPES_TRAIN, seed=seed, max_images=max_images)
        else:
            data = folder_dataset(data_arg).load(data_arg, features_arg, max_images=max_images,
                                                 splits=("train", "dev"), again="run align train again")
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    return data, new_encoder(data.encoder_spec)


MODEL_OPTIONS = ("dropout", "word_dropout", "clip", "average", "cosine", "hard_negatives", "global_weight",
                 "positions")


def build_model(data, encoder, vocabulary, hidden, embed, seed=0, **options):
    """The AlignmentModel for the data; options: the MODEL_OPTIONS of its config."""
    dim = encoder.feature_dim("grid") if encoder.trainable else data.feature_dim
    options = dict(options)
    hardest = bool(options.pop("hard_negatives", False))
    if options.pop("positions", False):          # one position vector per grid cell: count them
        encoder.eval()
        options["position_cells"] = int(encoder.encode(data.splits["train"].inputs[:1], "grid",
                                                       backend.default_float()).shape[1])
        encoder.train()
    config = {"feature_dim": int(dim), "vocab_size": len(vocabulary), "embed_dim": embed,
              "hidden_dim": hidden, "margin": 1.0, "hardest": hardest, **options}
    return AlignmentModel(config, seed=seed, dtype=backend.default_float())


def open_checkpoint(path):
    """The checkpoint to use: `path`, else the packaged Flickr8k aligner."""
    if path is None:
        if not os.path.isfile(PRETRAINED):
            raise UsageError("give --checkpoint (a best.npz written by `align train`): no pretrained "
                             "aligner is installed")
        path = PRETRAINED
    return load_aligner(path, dtype=backend.default_float())


def split_of(ckpt, split, data_arg=None, features_arg=None, max_images=None):
    """CaptionSplit of one split of the checkpoint's data (or of --data / --features)."""
    from ..data.datasets import DatasetError, dataset_from_spec
    try:
        data = dataset_from_spec(ckpt.data, data_arg, features_arg, max_images=max_images, splits=(split,))
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    return data.splits[split]


def evaluate_split(ckpt, split_data, max_words=20):
    """Recall metrics of a checkpoint on a split (the paper's protocol)."""
    sentences = encode_sentences(split_data.references, ckpt.vocabulary, max_words)
    regions, whole = encode_images(ckpt.model, ckpt.encoder, split_data.inputs)
    return recall_metrics(sentence_scores(ckpt.model, regions, sentences, image_vectors=whole), sentences.image)


def format_table(metrics, paper=PAPER_FLICKR8K):
    """The recall table, ours next to the paper's BRNN row (Flickr8k) when given."""
    lines = ["                 annotation (image -> text)     search (text -> image)",
             "                 R@1    R@5    R@10   Med r    R@1    R@5    R@10   Med r"]
    rows = [("ours", metrics)] + ([("paper (BRNN)", paper)] if paper else [])
    for name, m in rows:
        cells = [m[d][k] for d in ("annotation", "search") for k in ("R@1", "R@5", "R@10", "median_rank")]
        lines.append(f"{name:<16}" + "".join(f"{v:7.1f}" for v in cells))
    return "\n".join(lines)


@dataclass
class SearchHit:
    image_id: str
    score: float
    caption: str


def search(ckpt, split_data, query, top=5):
    """The `top` images of the split that best match the text `query`."""
    tokens = tokenize(query)
    if not tokens:
        raise UsageError("the query has no words")
    known = [t for t in tokens if t in ckpt.vocabulary]
    if not known:
        raise UsageError(f"none of the words of {query!r} is in the model's vocabulary")
    sentences = encode_sentences([[tokens]], ckpt.vocabulary)
    regions, whole = encode_images(ckpt.model, ckpt.encoder, split_data.inputs)
    scores = sentence_scores(ckpt.model, regions, sentences, image_vectors=whole)[:, 0]
    order = numpy.argsort(-scores, kind="stable")[:top]
    return [SearchHit(split_data.image_ids[i], float(scores[i]), " ".join(split_data.references[i][0]))
            for i in order]


def vocabulary_from(data, min_count):
    return Vocabulary.build(data.train_tokens(), min_count=min_count)


def shapes_split(spec, split, max_images=None):
    """The ShapesSplit (with objects and word_objects) of a shapes checkpoint's data."""
    from ..data.datasets import ShapesDataset
    from ..data.shapes import make_shapes_dataset
    sizes = {"train": spec["n_train"], "dev": spec["n_dev"], "test": spec["n_test"]}
    k = list(sizes).index(split)           # shapes_splits seeds split k with (seed, k)
    max_images = spec.get("max_images") if max_images is None else max_images
    n = sizes[split] if max_images is None else min(max_images, sizes[split])
    full = make_shapes_dataset(sizes[split], seed=[spec["seed"], k], image_size=ShapesDataset.IMAGE_SIZE, name=split)
    return full.subset(range(n)) if n < sizes[split] else full
