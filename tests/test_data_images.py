import numpy
import pytest
from PIL import Image

from captioning.data.images import (ImageDecodeError, load_image, load_images, normalize_images,
                                    resize_image)
from nn import backend


def save(image, path, **options):
    image.save(path, **options)
    return path


def bands_image():
    """300 x 100: left third red, middle green, right third blue."""
    pixels = numpy.zeros((100, 300, 3), dtype=numpy.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:200, 1] = 255
    pixels[:, 200:, 2] = 255
    return Image.fromarray(pixels)


def test_rgb_png_scaled_to_unit_range_in_chw(tmp_path):
    pixels = numpy.array([[[255, 0, 0], [0, 128, 255]]], dtype=numpy.uint8)  # 1 x 2
    path = save(Image.fromarray(pixels), tmp_path / "a.png")
    x = load_image(path, size=(1, 2))
    assert x.shape == (3, 1, 2) and x.dtype == numpy.float32
    numpy.testing.assert_allclose(x[:, 0, 0], [1, 0, 0])
    numpy.testing.assert_allclose(x[:, 0, 1], [0, 128 / 255, 1], rtol=1e-6)
    assert load_image(path, size=(1, 2), dtype=numpy.float64).dtype == numpy.float64


def test_mean_and_std_are_the_callers(tmp_path):
    path = save(Image.new("RGB", (4, 4), (255, 0, 51)), tmp_path / "c.png")
    x = load_image(path, size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.1))
    numpy.testing.assert_allclose(x[:, 0, 0], [1.0, -2.0, -3.0], rtol=1e-5)
    with pytest.raises(ValueError, match="mean must have 3 values"):
        load_image(path, size=4, mean=(0.5, 0.5))


def test_squash_stretches_and_center_crop_keeps_the_middle(tmp_path):
    path = save(bands_image(), tmp_path / "bands.png")
    squashed = load_image(path, size=30)
    assert squashed[0, 15, 2] == 1 and squashed[1, 15, 15] == 1 and squashed[2, 15, 27] == 1
    cropped = load_image(path, size=30, resize="center_crop")
    # All green (the outermost columns blend a little with the neighbours when resampling).
    numpy.testing.assert_allclose(cropped[1, :, 1:-1], 1.0)
    numpy.testing.assert_allclose(cropped[0, :, 1:-1], 0.0)
    numpy.testing.assert_allclose(cropped[2, :, 1:-1], 0.0)
    assert resize_image(bands_image(), (20, 10), "center_crop").size == (10, 20)
    with pytest.raises(ValueError, match="resize must be one of"):
        load_image(path, resize="stretch")


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 128, (128, 128, 128)),
    ("1", 1, (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
])
def test_grey_bilevel_and_cmyk_become_rgb(tmp_path, mode, value, expected):
    suffix = "tif" if mode == "CMYK" else "png"
    path = save(Image.new(mode, (3, 3), value), tmp_path / f"im.{suffix}")
    numpy.testing.assert_allclose(load_image(path, size=3)[:, 1, 1] * 255, expected, atol=1e-3)


def test_palette_image_and_transparent_palette_colour(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.putpixel((1, 0), 0)
    opaque = load_image(save(image, tmp_path / "p.png"), size=(1, 2))
    numpy.testing.assert_allclose(opaque[:, 0, 0] * 255, (10, 200, 30), atol=1e-3)
    transparent = load_image(save(image, tmp_path / "pt.png", transparency=0), size=(1, 2))
    numpy.testing.assert_allclose(transparent[:, 0, 1], 1.0)  # transparent index 0 -> white
    numpy.testing.assert_allclose(transparent[:, 0, 0] * 255, (10, 200, 30), atol=1e-3)


def test_rgba_is_composited_on_white(tmp_path):
    pixels = numpy.array([[[0, 0, 0, 0], [200, 0, 0, 255], [0, 0, 0, 128]]], dtype=numpy.uint8)
    x = load_image(save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png"), size=(1, 3))
    numpy.testing.assert_allclose(x[:, 0, 0], 1.0)                      # fully transparent -> white
    numpy.testing.assert_allclose(x[:, 0, 1] * 255, (200, 0, 0), atol=1e-3)
    numpy.testing.assert_allclose(x[:, 0, 2] * 255, 127, atol=1.5)      # half black over white
    grey_alpha = Image.new("LA", (2, 2), (0, 0))
    numpy.testing.assert_allclose(load_image(save(grey_alpha, tmp_path / "la.png"), size=2), 1.0)


def test_sixteen_bit_grey_uses_the_full_range(tmp_path):
    values = numpy.array([[0, 32768, 65535]], dtype=numpy.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode.startswith("I")
    x = load_image(save(image, tmp_path / "g16.png"), size=(1, 3))
    numpy.testing.assert_allclose(x[0, 0], [0, 128 / 255, 1], atol=1e-6)
    numpy.testing.assert_allclose(x[0], x[2])


def test_exif_orientation_is_applied(tmp_path):
    pixels = numpy.zeros((20, 40, 3), dtype=numpy.uint8)  # wide; red block at the top left
    pixels[:8, :8, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = save(Image.fromarray(pixels), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    x = load_image(path, size=(40, 20))  # displayed upright it is tall: 40 high, 20 wide
    assert x[0, 2, 16] > 0.8 and x[0, 2, 2] < 0.2  # the block is now at the top right


def test_large_jpegs_decoded_at_reduced_scale_match_a_full_decode(tmp_path):
    y, x = numpy.mgrid[0:600, 0:800]
    pixels = numpy.stack([x * 255 // 800, y * 255 // 600, (x + y) % 256 // 4 + 100], axis=-1)
    path = save(Image.fromarray(pixels.astype(numpy.uint8)), tmp_path / "big.jpg", quality=95)
    fast = load_image(path, size=100)
    with Image.open(path) as image:  # reference: full-size decode, then the same resize
        full = numpy.asarray(image.convert("RGB").resize((100, 100), Image.BILINEAR))
    assert numpy.abs(fast - full.transpose(2, 0, 1) / 255).mean() < 0.01


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    good = save(bands_image(), tmp_path / "good.jpg")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    for bad in (truncated, garbage):
        with pytest.raises(ImageDecodeError, match=bad.name):
            load_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="garbage.jpg"):
        load_images([good, garbage], size=8)


def test_load_images_batches_on_the_backend_and_can_skip_bad_files(tmp_path, xp):
    red = save(Image.new("RGB", (5, 7), (255, 0, 0)), tmp_path / "red.png")
    blue = save(Image.new("RGB", (9, 3), (0, 0, 255)), tmp_path / "blue.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff junk")
    paths = [red, bad, tmp_path / "gone.png", blue]
    batch, kept, skipped = load_images(paths, size=4, skip_bad=True, workers=2)
    assert backend.get_array_module(batch) is xp
    assert batch.shape == (2, 3, 4, 4) and kept == [0, 3] and skipped == [bad, tmp_path / "gone.png"]
    values = backend.to_numpy(batch)
    numpy.testing.assert_allclose(values[0, :, 0, 0], [1, 0, 0])
    numpy.testing.assert_allclose(values[1, :, 0, 0], [0, 0, 1])


def test_normalize_images_matches_load_image_scaling(tmp_path, xp):
    pixels = numpy.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=numpy.uint8)
    path = save(Image.fromarray(pixels[1].transpose(1, 2, 0)), tmp_path / "x.png")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    x = normalize_images(pixels, mean, std)
    assert backend.get_array_module(x) is xp and x.dtype == numpy.float32
    numpy.testing.assert_allclose(backend.to_numpy(x)[1], load_image(path, 4, mean=mean, std=std),
                                  rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        normalize_images(pixels[:, :2])


def test_real_flickr8k_photos_decode(flickr8k):
    paths = sorted((flickr8k / "Flicker8k_Dataset").glob("*.jpg"))[:4]
    batch, kept, skipped = load_images(paths, size=224)
    assert batch.shape == (4, 3, 224, 224) and kept == [0, 1, 2, 3] and not skipped
    values = backend.to_numpy(batch)
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.std() > 0.05


def test_a_very_large_photo_loads_without_pillows_bomb_warning(tmp_path, monkeypatch):
    import warnings
    path = save(Image.new("RGB", (40, 30), (10, 200, 30)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)     # 1200 pixels: "big" (warning), not a bomb
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", append=True)        # behind the loader's own filter
        pixels = load_image(path, size=8)
    assert pixels.shape == (3, 8, 8) and not caught
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)      # over twice the limit: refused, one clear error
    with pytest.raises(ImageDecodeError, match="big.png"):
        load_image(path, size=8)
