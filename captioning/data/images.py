"""Image files -> float arrays (N, 3, H, W) on the current backend.

Pipeline for one file (`load_image`):
1. decode with Pillow; a missing file raises FileNotFoundError and a corrupt
   or truncated one raises ImageDecodeError (a ValueError), both naming it;
2. apply the EXIF orientation (phone photos are often stored sideways);
3. convert any mode to RGB (see `to_rgb`);
4. resize: "squash" (default, as most captioning code does) stretches to
   size x size ignoring aspect; "center_crop" scales the shorter side to size
   and cuts the middle square;
5. scale to [0, 1], then normalise per channel, (x - mean) / std, with the
   mean/std the ENCODER asks for (given on the [0, 1] scale; none by default).

The dtype is `nn.backend.default_float()` (float32) unless given.
"""
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy
from PIL import Image, ImageOps, UnidentifiedImageError

from nn import backend

__all__ = ["ImageDecodeError", "load_image", "load_images", "to_rgb", "resize_image",
           "normalize_images", "RESIZE_POLICIES"]

RESIZE_POLICIES = ("squash", "center_crop")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """An image file exists but Pillow cannot decode it (corrupt, truncated, not an image)."""


def _size_pair(size):
    """(height, width) from an int or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def open_image(path, draft_size=None):
    """Decode `path` fully (so truncation is caught here) with EXIF orientation applied.

    draft_size: (width, height) the image will be resized to. A JPEG at least
    twice as large is then decoded at a reduced scale (1/2, 1/4, 1/8, never
    below draft_size): several times faster, and a resize follows anyway.
    """
    # Pillow warns about photos over 89 megapixels (and refuses those over 179: an
    # ImageDecodeError below). For a user's own photos the warning is only noise in
    # the output. (Adding the same filter again replaces it: the list does not grow.)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", draft_size)
            image.load()
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return image
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image {path}: {exc}") from exc


def to_rgb(image):
    """Any Pillow mode -> an 8-bit RGB image.

    - RGB: unchanged. L, 1, P, CMYK, YCbCr: Pillow's conversion.
    - 16-bit grey (I;16*, and I as Pillow opens 16-bit PNGs): 0..65535 mapped
      to 0..255 (plain `convert` would clip everything above 255 to white).
    - With transparency (RGBA, LA, PA, P with a transparent colour): composited
      on WHITE, as a viewer shows it; dropping alpha would reveal whatever
      colour the transparent pixels happen to store (often black).
    """
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        values = numpy.asarray(image, dtype=numpy.float64)
        grey = numpy.clip(numpy.rint(values * (255.0 / 65535.0)), 0, 255).astype(numpy.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        grey = numpy.clip(numpy.rint(numpy.asarray(image)), 0, 255).astype(numpy.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_image(image, size=224, resize="squash"):
    """Resize a Pillow image to size (int or (H, W)) by the given policy (bilinear)."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    height, width = _size_pair(size)
    if resize == "squash":
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return image
    scale = max(width / image.width, height / image.height)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if image.size != scaled:
        image = image.resize(scaled, Image.BILINEAR)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def _channel_stats(values, name, dtype):
    array = numpy.asarray(values, dtype=dtype).reshape(-1)
    if array.size != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {array.size}")
    return array.reshape(3, 1, 1)


def _pixels_to_float(rgb_hwc, mean, std, dtype, out=None):
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1], normalised by mean/std.

    out: a (3, H, W) array to write into (saves a copy when filling a batch).
    """
    if out is None:
        out = numpy.empty((3,) + rgb_hwc.shape[:2], dtype=dtype)
    # One pass: uint8 -> float, HWC -> CHW and the scaling together.
    x = numpy.multiply(rgb_hwc.transpose(2, 0, 1), dtype(1.0 / 255.0), out=out, casting="unsafe")
    if mean is not None:
        x -= _channel_stats(mean, "mean", dtype)
    if std is not None:
        x /= _channel_stats(std, "std", dtype)
    return x


def load_image(path, size=224, resize="squash", mean=None, std=None, dtype=None, out=None):
    """One image file as a NumPy float array (3, H, W).

    path: the file. size: int or (H, W). resize: "squash" | "center_crop".
    mean, std: 3 values each on the [0, 1] scale, or None (no normalisation).
    dtype: default nn.backend.default_float(). out: optional (3, H, W)
    array of that dtype to fill (and return).
    """
    dtype = numpy.dtype(dtype or backend.default_float()).type
    height, width = _size_pair(size)
    # EXIF rotation may swap the sides: ask the JPEG decoder for the larger one twice.
    draft = (max(height, width),) * 2
    image = resize_image(to_rgb(open_image(path, draft)), size, resize)
    return _pixels_to_float(numpy.asarray(image), mean, std, dtype, out)


def load_images(paths, size=224, resize="squash", mean=None, std=None, dtype=None,
                skip_bad=False, workers=1):
    """A batch of image files as one (N, 3, H, W) array on the current backend.

    paths: list of files. skip_bad: when True, files that are missing or
    cannot be decoded are left out instead of raising. workers: threads that
    decode in parallel (Pillow releases the GIL while decoding).
    Returns (batch, kept, skipped): kept = indices into `paths` of the rows of
    batch, skipped = the paths left out.
    """
    paths = list(paths)
    dtype = numpy.dtype(dtype or backend.default_float()).type
    height, width = _size_pair(size)
    batch = numpy.empty((len(paths), 3, height, width), dtype=dtype)

    def decode(i):
        try:
            load_image(paths[i], size, resize, mean, std, dtype, out=batch[i])
            return True
        except (FileNotFoundError, ImageDecodeError):
            if not skip_bad:
                raise
            return False

    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ok = list(pool.map(decode, range(len(paths))))
    else:
        ok = [decode(i) for i in range(len(paths))]
    kept = [i for i, good in enumerate(ok) if good]
    skipped = [paths[i] for i, good in enumerate(ok) if not good]
    if skipped:
        batch = batch[kept]
    return backend.asarray(batch), kept, skipped


def normalize_images(images, mean=None, std=None, dtype=None):
    """In-memory uint8 images (N, 3, H, W) (e.g. the shapes set) -> float on the current backend.

    Same scaling as load_image: x / 255, then (x - mean) / std per channel.
    """
    dtype = numpy.dtype(dtype or backend.default_float()).type
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize_images: expected images of shape (N, 3, H, W), got {images.shape}")
    x = backend.asarray(images).astype(dtype) * dtype(1.0 / 255.0)
    xp = backend.get_array_module(x)
    if mean is not None:
        x -= xp.asarray(_channel_stats(mean, "mean", dtype))
    if std is not None:
        x /= xp.asarray(_channel_stats(std, "std", dtype))
    return x
