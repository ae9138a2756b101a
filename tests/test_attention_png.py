"""The attention picture: layout, where the light falls, bad input, atomic write."""
import numpy
import pytest
from PIL import Image

from captioning.attention_png import (GAP, LABEL_HEIGHT, save_attention_png, upsample_attention)


def one_hot_attention(num_words, side, cells):
    """(T, side*side) weights with all of word t's attention on cell cells[t] = (row, col)."""
    weights = numpy.zeros((num_words, side * side))
    for t, (r, c) in enumerate(cells):
        weights[t, r * side + c] = 1.0
    return weights


def test_png_has_the_expected_layout_and_the_light_follows_the_attention(tmp_path):
    # Uniform grey 147 x 147 photo, 7 x 7 grid (21 px cells: pixel 10 is a
    # cell's exact centre), 3 words -> 4 tiles in one row of columns=5;
    # 147 >= min_tile so no enlargement.
    gray = numpy.full((147, 147, 3), 100, dtype=numpy.uint8)
    cells = [(0, 0), (3, 5), (6, 2)]
    path = save_attention_png(gray, ["a", "red", "ball"], one_hot_attention(3, 7, cells),
                              tmp_path / "att.png", opacity=0.6)
    picture = numpy.asarray(Image.open(path).convert("RGB")).astype(int)
    assert picture.shape == (147 + LABEL_HEIGHT, 4 * 147 + 3 * GAP, 3)
    numpy.testing.assert_array_equal(picture[:147, :147], 100)      # the original, untouched
    for t, (r, c) in enumerate(cells):
        tile = picture[:147, (t + 1) * (147 + GAP):(t + 1) * (147 + GAP) + 147]
        # Centre of the attended cell: heat 1 -> 0.4 * 100 + 0.6 * 255 = 193.
        numpy.testing.assert_array_equal(tile[r * 21 + 10, c * 21 + 10], 193)
        # A cell three cells away has heat 0 -> dimmed to 0.4 * 100 = 40.
        far_r, far_c = (r + 3) % 7, (c + 3) % 7
        numpy.testing.assert_array_equal(tile[far_r * 21 + 10, far_c * 21 + 10], 40)
        # The brightest pixel of the tile lies in the attended cell.
        bright_r, bright_c = numpy.unravel_index(tile[:, :, 0].argmax(), tile.shape[:2])
        assert (bright_r // 21, bright_c // 21) == (r, c)
    # The label strip under a word tile holds dark (text) pixels.
    assert picture[147:, 147 + GAP:2 * 147 + GAP].min() < 128


def test_small_images_are_enlarged_and_wrap_into_rows(tmp_path):
    # 32 x 32 float image in [0, 1], CHW; min_tile 128 -> x4 tiles of 128;
    # 6 words + image = 7 tiles, columns=3 -> 3 rows.
    image = numpy.random.default_rng(0).random((3, 32, 32))
    attention = numpy.random.default_rng(1).random((6, 16))
    path = save_attention_png(image, list("abcdef"), attention, tmp_path / "small.png", columns=3)
    width, height = Image.open(path).size
    assert (width, height) == (3 * 128 + 2 * GAP, 3 * (128 + LABEL_HEIGHT) + 2 * GAP)
    assert [p.name for p in tmp_path.iterdir()] == ["small.png"]     # no temporary left behind


def test_upsampling_is_smooth_and_keeps_the_peak():
    grid = numpy.zeros((2, 2))
    grid[0, 0] = 0.5
    heat = upsample_attention(grid, (40, 60))
    assert heat.shape == (40, 60)
    assert heat.max() == pytest.approx(1.0)       # scaled so the peak is 1
    assert heat[0, 0] == 1.0 and heat[-1, -1] == 0.0
    # Bilinear: values fall off monotonically from the attended corner.
    assert numpy.all(numpy.diff(heat[5, :]) <= 1e-12) and 0 < heat[5, 30] < 1


def test_bad_input_is_refused(tmp_path):
    image = numpy.zeros((14, 14, 3), dtype=numpy.uint8)
    with pytest.raises(ValueError, match="T = 2 words"):
        save_attention_png(image, ["a", "b"], numpy.zeros((3, 49)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="not a square grid"):
        save_attention_png(image, ["a"], numpy.zeros((1, 12)), tmp_path / "x.png")
    save_attention_png(image, ["a"], numpy.ones((1, 12)), tmp_path / "x.png", grid_shape=(3, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_attention_png(numpy.full((14, 14, 3), 2.0), ["a"], numpy.ones((1, 4)), tmp_path / "y.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_attention_png(image, ["a"], numpy.ones((1, 4)), tmp_path / "missing" / "z.png")
