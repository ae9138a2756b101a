"""Images and sentences of the alignment model as arrays.

A split for the aligner is a `CaptionSplit` (captioning.data.splits): `inputs` are the
images (cached CNN grids or uint8 pixels), `references` their tokenised captions.
Sentences become word ids WITHOUT <START>/<END> (the BRNN reads only the words),
right-padded with 0, with a mask of the real words.
"""
from dataclasses import dataclass

import numpy

__all__ = ["Sentences", "encode_sentences", "epoch_batches"]


@dataclass
class Sentences:
    """Every caption of a split.

    words: (P, T) int64 word ids, 0 after the sentence
    lengths: (P,) int64 number of words (at least 1)
    image: (P,) int64 index of the caption's image in the split
    """
    words: numpy.ndarray
    lengths: numpy.ndarray
    image: numpy.ndarray

    def __len__(self):
        return len(self.lengths)

    def batch(self, rows):
        """(words (B, T_max), mask (B, T_max) float) of the given captions, cut to the longest."""
        lengths = self.lengths[rows]
        T = int(lengths.max())
        mask = (numpy.arange(T)[None] < lengths[:, None]).astype(numpy.float64)
        return self.words[rows, :T], mask


def encode_sentences(references, vocabulary, max_words=20):
    """references: per image, its captions as token lists -> Sentences.

    Words out of the vocabulary become <UNK>; captions are cut to max_words; an
    empty caption becomes one <UNK> (every caption keeps its place for retrieval).
    """
    rows, owners = [], []
    for i, refs in enumerate(references):
        for tokens in refs:
            ids = vocabulary.encode(tokens, max_length=max_words)[1:-1] or [vocabulary.unk_id]
            rows.append(ids)
            owners.append(i)
    words = numpy.zeros((len(rows), max(len(r) for r in rows)), dtype=numpy.int64)
    for r, ids in enumerate(rows):
        words[r, :len(ids)] = ids
    return Sentences(words, numpy.array([len(r) for r in rows], dtype=numpy.int64),
                     numpy.asarray(owners, dtype=numpy.int64))


def epoch_batches(sentences, num_images, batch_size, seed, epoch):
    """The minibatches of one epoch: lists of caption rows, each of DISTINCT images.

    An epoch uses every caption once. It is made of passes: in pass p every image
    appears once (shuffled), with the p-th of its captions in an order shuffled per
    image. Distinct images matter: the ranking loss takes every other sentence of the
    batch as a wrong one. Deterministic in (seed, epoch).
    """
    gen = numpy.random.default_rng([seed, epoch])
    per_image = [[] for _ in range(num_images)]
    for row, image in enumerate(sentences.image):
        per_image[image].append(row)
    for rows in per_image:
        gen.shuffle(rows)
    batches = []
    for p in range(max(len(rows) for rows in per_image)):
        order = [per_image[i][p] for i in gen.permutation(num_images) if p < len(per_image[i])]
        batches += [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    return [numpy.asarray(b, dtype=numpy.int64) for b in batches if len(b) > 1]
