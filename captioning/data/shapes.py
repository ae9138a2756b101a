"""The built-in synthetic data set: coloured shapes on a dark background.

Needs no download, is deterministic from a seed and generates thousands of
images per second, so it is the default data set wherever the user gives none
(tests, lessons, `train` without --data).

Each image (64x64 by default) is a 3x3 grid of cells; one to three cells hold
a shape: circle, square or triangle; red, green, blue or yellow; small or
large; jittered inside its cell. Captions name the objects in reading order
(left to right, then top to bottom), so each colour, shape, size and position
word belongs to ONE object: to say it, an attention model has to look at that
object. Five captions per image from these templates (caption 0, the most
detailed, is a deterministic function of the image):

    1 object:  "a small red circle at the top left", "a small red circle",
               "a red circle", "a red circle at the top left",
               "there is a small red circle"
    2 objects: "a small red circle to the left of a large blue square",
               "a red circle to the left of a blue square",
               "a large blue square to the right of a small red circle",
               "a small red circle and a large blue square",
               "a red circle and a blue square"
               ("above" / "below" when both are in one column)
    3 objects: "a small red circle and a large blue square and a small green triangle",
               "a red circle and a blue square and a green triangle",
               "a red circle to the left of a blue square and a green triangle",
               "three shapes a red circle a blue square and a green triangle",
               "a green triangle and a blue square and a red circle"

Vocabulary: 26 words; captions have 3 to 14 words.
Per object we also record its pixel box, and per caption word the object it
names (-1 for words like "a", "and", "to"): `word_objects`, for checking that
attention looks at the right shape.
"""
from dataclasses import dataclass, field
from typing import Any, List, Tuple

import numpy

from .splits import CaptionSplit

__all__ = ["ShapeObject", "ShapesSplit", "make_shapes_dataset", "shapes_splits",
           "SHAPES", "COLORS", "SIZES"]

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 210, 40)}
SIZES = {"small": 0.075, "large": 0.14}  # shape "radius" as a fraction of the image side
BACKGROUND = (28, 28, 28)
GRID = 3
MAX_OBJECTS = 3
POSITIONS = (("at the top left", "at the top", "at the top right"),
             ("on the left", "in the center", "on the right"),
             ("at the bottom left", "at the bottom", "at the bottom right"))


@dataclass
class ShapeObject:
    """One drawn shape: what it is, its grid cell, and its pixel box (x0, y0, x1, y1), inclusive."""
    shape: str
    color: str
    size: str
    row: int
    col: int
    box: Tuple[int, int, int, int]


@dataclass
class ShapesSplit(CaptionSplit):
    """A CaptionSplit with pixels in memory (`images`, (N, 3, H, W) uint8) and ground truth.

    objects:      per image, its ShapeObjects in caption (reading) order
    word_objects: per image, per caption, per token: index into objects, or -1
    """
    objects: List[List[ShapeObject]] = None
    word_objects: List[List[List[int]]] = None
    seed: Any = field(default=None, metadata={"per_image": False})   # the generator's seed, e.g. [seed, k]


def make_shapes_dataset(n_images, seed=0, image_size=64, captions_per_image=5, name="train"):
    """`n_images` random shape images with captions, the same for the same seed.

    n_images: int >= 0. seed: int or sequence of ints (numpy default_rng).
    image_size: side in pixels (>= 24). captions_per_image: 1..5 (the first
    ones of the template list). Returns a ShapesSplit with images (N, 3, S, S) uint8.
    """
    if image_size < 24:
        raise ValueError(f"make_shapes_dataset: image_size must be >= 24, got {image_size}")
    if not 1 <= captions_per_image <= 5:
        raise ValueError(f"make_shapes_dataset: captions_per_image must be in 1..5, got {captions_per_image}")
    layout = _random_layout(numpy.random.default_rng(seed), n_images, image_size)
    images, boxes = _draw(layout, image_size)
    objects = [_objects_of(layout, boxes, i) for i in range(n_images)]
    captions, tokens, word_objects = [], [], []
    for objs in objects:
        described = _describe(objs)[:captions_per_image]
        tokens.append([[w for w, _ in c] for c in described])
        captions.append([" ".join(t) for t in tokens[-1]])
        word_objects.append([[ref for _, ref in c] for c in described])
    image_ids = [f"shapes-{name}-{i:06d}" for i in range(n_images)]
    return ShapesSplit(name=name, image_ids=image_ids, image_paths=None, captions=captions,
                       tokens=tokens, images=images, objects=objects, word_objects=word_objects,
                       seed=seed)


def shapes_splits(n_train=4000, n_val=500, n_test=500, seed=0, image_size=64, captions_per_image=5):
    """{"train", "dev", "test"} ShapesSplits, each from its own seed (seed, k)."""
    sizes = {"train": n_train, "dev": n_val, "test": n_test}
    return {name: make_shapes_dataset(n, seed=[seed, k], image_size=image_size,
                                      captions_per_image=captions_per_image, name=name)
            for k, (name, n) in enumerate(sizes.items())}


def _random_layout(rng, n, image_size):
    """Per image and object slot: count, cell, shape, colour, size and centre, as arrays."""
    count = rng.integers(1, MAX_OBJECTS + 1, size=n)
    cells = rng.random((n, GRID * GRID)).argsort(axis=1)[:, :MAX_OBJECTS]  # distinct cells
    shape = rng.integers(0, len(SHAPES), size=(n, MAX_OBJECTS))
    color = rng.integers(0, len(COLORS), size=(n, MAX_OBJECTS))
    size = rng.integers(0, len(SIZES), size=(n, MAX_OBJECTS))
    radius = numpy.array(list(SIZES.values()))[size] * image_size
    cell_side = image_size / GRID
    # Jitter the centre, keeping the shape inside its cell with a pixel to spare.
    room = numpy.maximum(cell_side / 2 - radius - 1, 0)[..., None]
    centre = (numpy.stack([cells % GRID, cells // GRID], axis=-1) + 0.5) * cell_side
    centre = centre + rng.uniform(-1, 1, size=(n, MAX_OBJECTS, 2)) * room
    return {"count": count, "cells": cells, "shape": shape, "color": color, "size": size,
            "radius": radius, "centre": centre}


def _shape_mask(shape_ids, dx, dy, r):
    """Boolean masks (M, h, w) of M shapes, from pixel offsets dx, dy to their centres.

    shape_ids: (M,) indices into SHAPES. dx: (M, 1, w), dy: (M, h, 1), r: (M, 1, 1).
    """
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = numpy.maximum(numpy.abs(dx), numpy.abs(dy)) <= 0.8 * r
    # Apex up at dy = -r, base at dy = +0.8 r, half as wide as tall on each side.
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (numpy.abs(dx) <= (dy + r) / 1.8)
    kind = shape_ids[:, None, None]
    return numpy.where(kind == 0, circle, numpy.where(kind == 1, square, triangle))


def _draw(layout, image_size):
    """Render all images (N, 3, S, S) uint8 and object boxes (N, MAX_OBJECTS, 4).

    Each object lies inside its grid cell, so its mask is computed on a
    cell-sized window only, for many objects of many images at once.
    """
    n = len(layout["count"])
    images = numpy.empty((n, image_size, image_size, 3), dtype=numpy.uint8)
    images[:] = BACKGROUND
    boxes = numpy.full((n, MAX_OBJECTS, 4), -1, dtype=numpy.int64)
    palette = numpy.array(list(COLORS.values()), dtype=numpy.uint8)
    cell_side = image_size / GRID
    window = int(numpy.ceil(cell_side)) + 1
    corner = numpy.stack([layout["cells"] % GRID, layout["cells"] // GRID], axis=-1)
    corner = numpy.floor(corner * cell_side).astype(numpy.int64)  # (N, MAX_OBJECTS, 2): x0, y0
    image_of, slot = numpy.nonzero(numpy.arange(MAX_OBJECTS) < layout["count"][:, None])
    step = max(1, (1 << 21) // window ** 2)  # objects per step: bounded temporary memory
    for start in range(0, len(image_of), step):
        i, k = image_of[start:start + step], slot[start:start + step]
        xs = corner[i, k, 0, None] + numpy.arange(window)  # (M, window) pixel columns
        ys = corner[i, k, 1, None] + numpy.arange(window)  # (M, window) pixel rows
        dx = (xs + 0.5 - layout["centre"][i, k, 0, None])[:, None, :]
        dy = (ys + 0.5 - layout["centre"][i, k, 1, None])[:, :, None]
        mask = _shape_mask(layout["shape"][i, k], dx, dy, layout["radius"][i, k, None, None])
        mask &= (xs < image_size)[:, None, :] & (ys < image_size)[:, :, None]
        obj, row, col = numpy.nonzero(mask)
        images[i[obj], ys[obj, row], xs[obj, col]] = palette[layout["color"][i, k][obj]]
        boxes[i, k] = _mask_boxes(mask) + numpy.tile(corner[i, k], 2)
    return images.transpose(0, 3, 1, 2).copy(), boxes


def _mask_boxes(mask):
    """(x0, y0, x1, y1) inclusive bounding box of each of M non-empty (h, w) masks."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = mask.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    x1 = mask.shape[2] - 1 - cols[:, ::-1].argmax(axis=1)
    return numpy.stack([x0, y0, x1, y1], axis=1)


def _objects_of(layout, boxes, i):
    """Image i's objects in reading order: by column, then by row."""
    names_c, names_s = list(COLORS), list(SIZES)
    objs = []
    for k in range(layout["count"][i]):
        cell = int(layout["cells"][i, k])
        objs.append(ShapeObject(shape=SHAPES[layout["shape"][i, k]], color=names_c[layout["color"][i, k]],
                                size=names_s[layout["size"][i, k]], row=cell // GRID, col=cell % GRID,
                                box=tuple(int(v) for v in boxes[i, k])))
    return sorted(objs, key=lambda o: (o.col, o.row))


def _noun(objs, k, sized=True):
    """("a", [size], colour, shape) as (word, object index) pairs; "a" names nothing."""
    o = objs[k]
    words = [o.size, o.color, o.shape] if sized else [o.color, o.shape]
    return [("a", -1)] + [(w, k) for w in words]


def _words(text, ref=-1):
    return [(w, ref) for w in text.split()]


def _position(objs, k):
    """"at the top left": the preposition names nothing, the place names object k."""
    words = POSITIONS[objs[k].row][objs[k].col].split()
    return [(w, -1) for w in words[:2]] + [(w, k) for w in words[2:]]


def _relation(a, b, forward=True):
    """How objects[a] sits relative to objects[b] (a comes first in reading order)."""
    same_column = a.col == b.col
    if forward:
        return _words("above" if same_column else "to the left of")
    return _words("below" if same_column else "to the right of")


def _describe(objs):
    """The five captions of an image, as lists of (word, object index) pairs."""
    n = len(objs)
    if n == 1:
        return [_noun(objs, 0) + _position(objs, 0), _noun(objs, 0), _noun(objs, 0, False),
                _noun(objs, 0, False) + _position(objs, 0), _words("there is") + _noun(objs, 0)]
    a_b = _relation(objs[0], objs[1])
    if n == 2:
        return [_noun(objs, 0) + a_b + _noun(objs, 1),
                _noun(objs, 0, False) + a_b + _noun(objs, 1, False),
                _noun(objs, 1) + _relation(objs[0], objs[1], forward=False) + _noun(objs, 0),
                _noun(objs, 0) + _words("and") + _noun(objs, 1),
                _noun(objs, 0, False) + _words("and") + _noun(objs, 1, False)]
    and_ = _words("and")
    return [_noun(objs, 0) + and_ + _noun(objs, 1) + and_ + _noun(objs, 2),
            _noun(objs, 0, False) + and_ + _noun(objs, 1, False) + and_ + _noun(objs, 2, False),
            _noun(objs, 0, False) + a_b + _noun(objs, 1, False) + and_ + _noun(objs, 2, False),
            _words("three shapes") + _noun(objs, 0, False) + _noun(objs, 1, False) + and_
            + _noun(objs, 2, False),
            _noun(objs, 2, False) + and_ + _noun(objs, 1, False) + and_ + _noun(objs, 0, False)]
