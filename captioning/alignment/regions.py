"""Which region does each word pick? Word-region alignments of one image and one sentence,
and, on the synthetic shapes set, how often a colour or shape word picks a cell of its shape."""
import math

import numpy

from nn import backend

from ..data.shapes import COLORS, SHAPES
from .data import encode_sentences
from .retrieval import encode_regions

__all__ = ["word_region_scores", "shapes_word_alignment"]


def word_region_scores(model, regions, words, mask):
    """dots (M, T, R) NumPy: v_i . s_t of each word t of sentence m with each region of
    `regions` (M, R, h), the regions of the image paired with sentence m."""
    s = model.words_forward(words, mask)[0]
    xp = backend.get_array_module(s)
    return backend.to_numpy(xp.einsum("mth,mrh->mtr", s, regions))


def _cell_on_box(cell, side, image_size, box):
    """Does grid cell `cell` (row-major in a side x side grid) overlap the pixel box?"""
    size = image_size / side
    r, c = divmod(cell, side)
    x0, y0, x1, y1 = box
    return x0 < (c + 1) * size and x1 >= c * size and y0 < (r + 1) * size and y1 >= r * size


def shapes_word_alignment(model, encoder, split, vocabulary, batch_size=100):
    """Colour and shape words of a ShapesSplit's captions: where their best region lies.

    Returns {"words": n, "on_shape": fraction whose best region is a grid cell
    overlapping the box of the object the word names, "whole_image": fraction that
    picked the whole-image fragment}.
    """
    regions = encode_regions(model, encoder, split.images)               # (N, L + 1, h)
    L = regions.shape[1] - 1
    side, image_size = math.isqrt(L), split.images.shape[-1]
    sentences = encode_sentences(split.tokens, vocabulary)
    named = set(COLORS) | set(SHAPES)
    hits = whole = total = 0
    for start in range(0, len(sentences), batch_size):
        rows = numpy.arange(start, min(start + batch_size, len(sentences)))
        words, mask = sentences.batch(rows)
        images = sentences.image[rows]
        dots = word_region_scores(model, regions[backend.asarray(images)], backend.asarray(words),
                                  backend.asarray(mask, dtype=model.dtype))
        for m, row in enumerate(rows):
            image = int(images[m])
            caption = int(row - numpy.flatnonzero(sentences.image == image)[0])
            for t, word in enumerate(split.tokens[image][caption][:int(sentences.lengths[row])]):
                target = split.word_objects[image][caption][t]
                if word not in named or target < 0:
                    continue
                best = int(dots[m, t].argmax())
                total += 1
                whole += best == L
                hits += best < L and _cell_on_box(best, side, image_size, split.objects[image][target].box)
    return {"words": total, "on_shape": hits / max(total, 1), "whole_image": whole / max(total, 1)}
