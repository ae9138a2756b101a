"""From captions to mini-batches: encoded caption tables, training batches, evaluation batches.

Training sees (image, caption) PAIRS: a Flickr8k image with 5 captions is 5
pairs, each pair once per epoch. `encode_split` turns a split's captions into
one padded integer table, `iterate_minibatches` walks it in a seeded random
order. Evaluation sees IMAGES: `iterate_images` yields each image once with all
its raw reference captions (for BLEU, which must never see <UNK>).

Where arrays live: everything the model computes with (captions, mask,
features) is on the CURRENT backend (`nn.backend`); `image_index` stays a NumPy
array, because it indexes host-side things such as a NumPy memmap of cached
features or a list of file paths.

`features` is anything indexed by image index that returns an array, e.g. a
NumPy memmap of cached encoder outputs (N, ...) or the shapes set's
(N, 3, H, W) uint8 images. Floating features are cast to `feature_dtype`
(default nn.backend.default_float(), so a float16 cache arrives as float32);
integer ones (raw pixels) are passed on unchanged.
"""
from dataclasses import dataclass
from typing import Any, List

import numpy

from nn import backend

__all__ = ["CaptionTable", "CaptionBatch", "ImageBatch", "encode_split", "epoch_order",
           "iterate_minibatches", "iterate_images", "num_batches"]


@dataclass
class CaptionTable:
    """Every caption of a split, encoded and padded.

    captions:    (M, T + 2) int32 NumPy array: <START> w1 .. wn <END> <NULL>...
    image_index: (M,) int64 NumPy array: the split image each caption describes
    max_length:  T, the most words a caption keeps (see Vocabulary.encode)
    null_id:     the padding id (0)
    """
    captions: numpy.ndarray
    image_index: numpy.ndarray
    max_length: int
    null_id: int = 0

    def __len__(self):
        return len(self.captions)


@dataclass
class CaptionBatch:
    """One training mini-batch of B (image, caption) pairs.

    image_index: (B,) int64 NumPy array, rows of `features` / images of the split
    captions:    (B, T + 2) int32 on the backend, the whole padded captions
    inputs:      (B, T + 1) captions[:, :-1], fed to the decoder (teacher forcing)
    targets:     (B, T + 1) captions[:, 1:], what it must predict
    mask:        (B, T + 1) bool on the backend, targets != <NULL>: aligned with
                 TARGETS (what temporal_softmax_loss wants), not with captions
    features:    features[image_index] on the backend, or None
    """
    image_index: numpy.ndarray
    captions: Any
    mask: Any
    features: Any = None

    @property
    def inputs(self):
        return self.captions[:, :-1]

    @property
    def targets(self):
        return self.captions[:, 1:]


@dataclass
class ImageBatch:
    """One evaluation batch of B images.

    image_index: (B,) int64 NumPy array into the split
    image_ids:   B str
    references:  B lists of token lists: ALL raw reference captions of each
                 image, tokenized, never mapped to <UNK> (for BLEU / CIDEr)
    features:    features[image_index] on the backend, or None
    """
    image_index: numpy.ndarray
    image_ids: List[str]
    references: List[List[List[str]]]
    features: Any = None


def encode_split(split, vocab, max_length=None):
    """Encode every caption of `split` with `vocab` into one padded table.

    split: a CaptionSplit (uses split.tokens). vocab: a Vocabulary.
    max_length: words kept per caption (longer ones are cut, still ending in
    <END>); None means the longest caption of the split.
    Returns a CaptionTable with captions (M, max_length + 2).
    """
    if max_length is None:
        max_length = max((len(t) for per_image in split.tokens for t in per_image), default=0)
    encoded, image_index = [], []
    for i, per_image in enumerate(split.tokens):
        for tokens in per_image:
            encoded.append(vocab.encode(tokens, max_length))
            image_index.append(i)
    captions = numpy.full((len(encoded), max_length + 2), vocab.null_id, dtype=numpy.int32)
    for row, ids in enumerate(encoded):
        captions[row, :len(ids)] = ids
    return CaptionTable(captions=captions, image_index=numpy.asarray(image_index, dtype=numpy.int64),
                        max_length=max_length, null_id=vocab.null_id)


def epoch_order(num_items, seed, epoch):
    """The shuffled order of one epoch: the same for the same (seed, epoch).

    Depending only on (seed, epoch), not on how many batches ran before, makes
    a resumed run see exactly the batches an uninterrupted one would.
    """
    return numpy.random.default_rng([seed, epoch]).permutation(num_items)


def num_batches(num_items, batch_size, drop_last=False):
    return num_items // batch_size if drop_last else -(-num_items // batch_size)


def _gather(features, image_index, feature_dtype):
    """features[image_index] on the backend; floating ones cast to feature_dtype."""
    if features is None:
        return None
    if backend.is_cupy_array(features):
        rows = features[backend.asarray(image_index)]
    else:
        rows = backend.asarray(numpy.asarray(features[image_index]))
    if numpy.dtype(rows.dtype).kind == "f":
        rows = rows.astype(feature_dtype or backend.default_float(), copy=False)
    return rows


def iterate_minibatches(table, batch_size, seed=0, epoch=0, shuffle=True, drop_last=False,
                        features=None, feature_dtype=None, start_batch=0, trim=False):
    """Yield the CaptionBatches of one epoch.

    table: a CaptionTable. batch_size: pairs per batch. seed, epoch: the order
    is epoch_order(len(table), seed, epoch) when shuffle, else table order.
    drop_last: leave out a last, smaller batch. features: see module docstring.
    start_batch: skip the first batches (to resume mid-epoch).
    trim: cut the padding columns no caption of the batch uses (less compute;
    then T varies from batch to batch).
    """
    if batch_size < 1:
        raise ValueError(f"iterate_minibatches: batch_size must be >= 1, got {batch_size}")
    order = epoch_order(len(table), seed, epoch) if shuffle else numpy.arange(len(table))
    for b in range(start_batch, num_batches(len(table), batch_size, drop_last)):
        rows = order[b * batch_size:(b + 1) * batch_size]
        captions = table.captions[rows]
        if trim:
            used = (captions != table.null_id).any(axis=0)
            captions = captions[:, :max(int(numpy.flatnonzero(used).max()) + 1, 2)]
        image_index = table.image_index[rows]
        captions_xp = backend.asarray(captions)
        yield CaptionBatch(image_index=image_index, captions=captions_xp,
                           mask=captions_xp[:, 1:] != table.null_id,
                           features=_gather(features, image_index, feature_dtype))


def iterate_images(split, batch_size, features=None, feature_dtype=None):
    """Yield ImageBatches covering every image of `split` once, in order."""
    if batch_size < 1:
        raise ValueError(f"iterate_images: batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(split), batch_size):
        image_index = numpy.arange(start, min(start + batch_size, len(split)), dtype=numpy.int64)
        yield ImageBatch(image_index=image_index,
                         image_ids=[split.image_ids[i] for i in image_index],
                         references=[split.tokens[i] for i in image_index],
                         features=_gather(features, image_index, feature_dtype))
