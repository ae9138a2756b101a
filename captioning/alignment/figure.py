"""`align annotate`: one PNG of an image's regions and the words that pick them.

Top: the image with the region grid; each cell carries the words that chose it
as their best region (the words of --sentence, or, without one, the two
vocabulary words that score highest on it when read alone). Below (with a
sentence): one tile per word lighting up its dot products with the grid cells,
drawn like captioning.attention_png; a word whose best fragment is the whole
image says so in its label.
"""
import math

import numpy
from PIL import Image, ImageDraw, ImageFont

from nn import backend
from nn.persist import atomic_write

from ..attention_png import attention_figure
from ..cli import UsageError
from ..data.images import load_images
from ..data.text import tokenize
from .data import encode_sentences

CELL_PIXELS = 72      # the top panel is enlarged so that a cell holds about two short words


def encode_image(ckpt, path):
    """(grid (1, L, D) for the checkpoint's model, display pixels (3, H, W) in [0, 1])."""
    dtype = ckpt.model.dtype
    spec = ckpt.encoder.spec
    if spec.get("name") == "small_cnn":
        size = spec.get("config", {}).get("image_size", 64)
        pixels, _, _ = load_images([path], size=size, resize="squash", dtype=dtype)
        return ckpt.encoder.eval().encode(pixels, "grid", dtype), backend.to_numpy(pixels[0])
    from ..encoders.efficientnet import EfficientNetLite0
    net = EfficientNetLite0.from_pretrained()
    pre = net.preprocess
    batch, _, _ = load_images([path], size=pre["size"], resize=pre["resize"], mean=pre["mean"], std=pre["std"])
    grid, _ = net.features(batch.astype(backend.default_float()))
    display, _, _ = load_images([path], size=pre["size"], resize=pre["resize"])
    return grid.astype(dtype), backend.to_numpy(display[0])


def _sentence_dots(ckpt, v, sentence):
    tokens = tokenize(sentence)
    if not tokens:
        raise UsageError("--sentence has no words")
    sentences = encode_sentences([[tokens]], ckpt.vocabulary)
    words, mask = sentences.batch(numpy.arange(1))
    s = ckpt.model.words_forward(backend.asarray(words), backend.asarray(mask, dtype=ckpt.model.dtype))[0]
    return tokens[:words.shape[1]], backend.to_numpy(s[0] @ v[0].T)            # (T, R)


def _vocabulary_dots(ckpt, v):
    words = [w for w in ckpt.vocabulary.id_to_word[4:]]                        # no special tokens
    ids = backend.xp().asarray(numpy.arange(4, len(ckpt.vocabulary))[:, None])
    s = ckpt.model.words_forward(ids, backend.asarray(numpy.ones(ids.shape), dtype=ckpt.model.dtype))[0]
    return words, backend.to_numpy(s[:, 0] @ v[0].T)                            # (V, R)


def _grid_panel(display, side, labels):
    """The image enlarged, the grid drawn, each cell's label list written in it."""
    pixels = numpy.round(display.transpose(1, 2, 0) * 255).astype(numpy.uint8)
    size = side * CELL_PIXELS
    panel = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    for k in range(1, side):
        draw.line([(k * CELL_PIXELS, 0), (k * CELL_PIXELS, size)], fill=(255, 255, 255), width=1)
        draw.line([(0, k * CELL_PIXELS), (size, k * CELL_PIXELS)], fill=(255, 255, 255), width=1)
    for cell, words in labels.items():
        r, c = divmod(cell, side)
        for j, word in enumerate(words[:4]):
            x, y = c * CELL_PIXELS + 3, r * CELL_PIXELS + 3 + 12 * j
            draw.rectangle([x - 1, y - 1, x + 6 * len(word) + 1, y + 10], fill=(0, 0, 0))
            draw.text((x, y), word, fill=(255, 255, 0), font=font)
    return panel


def annotate_image(ckpt, image_path, sentence, png):
    """Write the PNG; returns text lines saying which region each word picked."""
    grid, display = encode_image(ckpt, image_path)
    v = ckpt.model.regions_forward(grid)[0]                                    # (1, L + 1, h)
    L = v.shape[1] - 1
    side = math.isqrt(L)
    labels, lines = {}, []
    if sentence:
        words, dots = _sentence_dots(ckpt, v, sentence)
        for word, row in zip(words, dots):
            best = int(row.argmax())
            where = "the whole image" if best == L else f"cell (row {best // side}, column {best % side})"
            lines.append(f"{word}: {where}")
            labels.setdefault(best if best < L else -1, []).append(word)
    else:
        vocab, dots = _vocabulary_dots(ckpt, v)
        for cell in range(L):
            labels[cell] = [vocab[i] for i in numpy.argsort(-dots[:, cell])[:2]]
        lines.append("best single words per cell: " + "; ".join(
            f"({c // side},{c % side}) {' '.join(w)}" for c, w in labels.items()))
    panel = _grid_panel(display, side, {c: w for c, w in labels.items() if c >= 0})
    if sentence:
        heat = numpy.maximum(dots[:, :L] - dots[:, :L].min(axis=1, keepdims=True), 0)
        tiles = attention_figure(display, [w + (" (image)" if r.argmax() == L else "") for w, r in zip(words, dots)],
                                 heat, grid_shape=(side, side))
        canvas = Image.new("RGB", (max(panel.width, tiles.width), panel.height + 8 + tiles.height), "white")
        canvas.paste(panel, (0, 0))
        canvas.paste(tiles, (0, panel.height + 8))
        panel = canvas
    with atomic_write(png, "wb") as stream:
        panel.save(stream, format="PNG")
    return lines
