"""Where did the model look? One PNG: the image, then one tile per generated word.

Show, Attend and Tell (Xu et al. 2015) computes, for every word, weights
alpha_t over the L locations of the CNN feature grid (e.g. 7 x 7 = 49). This
module draws them in the spirit of the paper's figures (which upsample the
weights x16 and blur them with a Gaussian): each word's weights are scaled so
the most-attended cell is 1, upsampled bilinearly from the grid to the image
size (SciPy), and used to light up the image:

    tile = (1 - opacity) * image + opacity * 255 * heat        (heat in [0, 1])

so unattended regions are dimmed to (1 - opacity) of their brightness and the
attended region glows white. Each tile carries its word as a label (Pillow's
default font). Files are written atomically.
"""
import math
from pathlib import Path

import numpy
import scipy.ndimage
from PIL import Image, ImageDraw, ImageFont

from nn import backend
from nn.persist import atomic_write

__all__ = ["LABEL_HEIGHT", "GAP", "upsample_attention", "overlay_attention",
           "attention_figure", "save_attention_png"]

LABEL_HEIGHT = 18   # pixels of white strip under each tile for its word
GAP = 4             # pixels between tiles


def _as_uint8_image(image):
    """(H, W, 3) / (3, H, W) / (H, W) uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    image = backend.to_numpy(image)
    if image.ndim == 3 and image.shape[-1] != 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)                 # CHW -> HWC
    if image.ndim == 2:
        image = numpy.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"save_attention_png: image must be (H, W, 3), (3, H, W) or (H, W), "
                         f"got shape {image.shape}")
    if image.dtype == numpy.uint8:
        return image
    if image.dtype.kind != "f":
        raise TypeError(f"save_attention_png: image must be uint8 or float in [0, 1], got {image.dtype}")
    if image.size and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"save_attention_png: a float image must lie in [0, 1] (raw pixels, not "
                         f"normalised), got values in [{image.min():.3g}, {image.max():.3g}]")
    return numpy.round(image * 255).astype(numpy.uint8)


def upsample_attention(weights, size):
    """One word's attention grid (gh, gw) -> heat map (H, W) in [0, 1], peak = 1.

    Bilinear (order-1 spline) zoom in SciPy's grid mode, so each grid cell
    covers H/gh x W/gw pixels and its centre keeps the cell's value.
    """
    grid = numpy.asarray(weights, dtype=numpy.float64)
    height, width = size
    peak = grid.max()
    grid = grid / peak if peak > 0 else numpy.zeros_like(grid)
    heat = scipy.ndimage.zoom(grid, (height / grid.shape[0], width / grid.shape[1]),
                              order=1, mode="nearest", grid_mode=True)
    # zoom rounds the output size; pad or crop the (at most one) odd pixel.
    heat = numpy.pad(heat, ((0, max(0, height - heat.shape[0])), (0, max(0, width - heat.shape[1]))),
                     mode="edge")[:height, :width]
    return numpy.clip(heat, 0.0, 1.0)


def overlay_attention(image, heat, opacity=0.6):
    """Blend: uint8 image (H, W, 3) and heat (H, W) in [0, 1] -> uint8 (H, W, 3)."""
    blended = (1.0 - opacity) * image.astype(numpy.float64) + opacity * 255.0 * heat[:, :, None]
    return numpy.clip(numpy.round(blended), 0, 255).astype(numpy.uint8)


def _grid_shape(num_locations, grid_shape):
    if grid_shape is None:
        side = math.isqrt(num_locations)
        if side * side != num_locations:
            raise ValueError(f"save_attention_png: {num_locations} attention locations is not a "
                             "square grid; pass grid_shape=(rows, cols)")
        return side, side
    rows, cols = (int(v) for v in grid_shape)
    if rows * cols != num_locations:
        raise ValueError(f"save_attention_png: grid_shape {grid_shape} has {rows * cols} cells "
                         f"but the attention has {num_locations} locations")
    return rows, cols


def attention_figure(image, words, attention, grid_shape=None, columns=5, opacity=0.6, min_tile=128):
    """Build the picture as a PIL image (see save_attention_png for the inputs).

    Returns: PIL.Image RGB of size (cols * tile_w + (cols - 1) * GAP,
    rows * (tile_h + LABEL_HEIGHT) + (rows - 1) * GAP), with 1 + len(words)
    tiles laid out row by row, cols = min(columns, 1 + len(words)).
    """
    pixels = _as_uint8_image(image)
    weights = backend.to_numpy(attention)
    words = [str(w) for w in words]
    if weights.ndim != 2 or weights.shape[0] != len(words):
        raise ValueError(f"save_attention_png: attention must be (T, L) with T = {len(words)} words, "
                         f"got shape {weights.shape}")
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"save_attention_png: columns must be a positive int, got {columns!r}")
    grid_rows, grid_cols = _grid_shape(weights.shape[1], grid_shape)

    # Small images (e.g. the synthetic set's) are enlarged so the labels fit.
    height, width = pixels.shape[:2]
    scale = max(1, math.ceil(min_tile / min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    if scale > 1:
        pixels = numpy.asarray(Image.fromarray(pixels).resize((tile_w, tile_h), Image.BILINEAR))

    tiles = [pixels] + [overlay_attention(pixels, upsample_attention(row.reshape(grid_rows, grid_cols),
                                                                     (tile_h, tile_w)), opacity)
                        for row in weights]
    labels = ["(image)"] + words
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    canvas = Image.new("RGB", (cols * tile_w + (cols - 1) * GAP,
                               rows * (tile_h + LABEL_HEIGHT) + (rows - 1) * GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, (tile, label) in enumerate(zip(tiles, labels)):
        left = (index % cols) * (tile_w + GAP)
        top = (index // cols) * (tile_h + LABEL_HEIGHT + GAP)
        canvas.paste(Image.fromarray(tile), (left, top))
        draw.text((left + 2, top + tile_h + 3), label, fill="black", font=font)
    return canvas


def save_attention_png(image, words, attention, path, grid_shape=None, columns=5, opacity=0.6,
                       min_tile=128):
    """Write one PNG showing the image and the attention of each generated word.

    Inputs:
    - image: the original photo, (H, W, 3) or (3, H, W) or (H, W); uint8, or
      float with values in [0, 1]; NumPy or CuPy.
    - words: list of T generated words (without <START>/<END>).
    - attention: (T, L) attention weights, row t for word t (DecodeResult.attention).
    - path: where to write the PNG (its folder must exist); written atomically.
    - grid_shape: (rows, cols) of the feature grid; default a square sqrt(L).
    - columns: tiles per row of the figure.
    - opacity: strength of the overlay in [0, 1] (not the attention alpha).
    - min_tile: images whose shorter side is smaller are enlarged by an integer factor.
    Returns: the Path written.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"save_attention_png: opacity must be in [0, 1], got {opacity!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save_attention_png: folder {path.parent} does not exist")
    figure = attention_figure(image, words, attention, grid_shape=grid_shape, columns=columns,
                              opacity=opacity, min_tile=min_tile)
    with atomic_write(path, "wb") as stream:
        figure.save(stream, format="PNG")
    return path
