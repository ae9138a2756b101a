"""The training curves as a PNG: training loss and dev BLEU-4 against epochs (drawn with Pillow)."""
import math

from nn.persist import atomic_write

__all__ = ["save_training_curves"]


def save_training_curves(path, loss_trace, history, steps_per_epoch, size=(720, 300)):
    """Two panels drawn with Pillow: training loss against epochs, dev BLEU-4 (x100) per epoch.

    loss_trace: [[step, running mean loss of the epoch], ...]; history: the
    per-epoch records of the Trainer. Written atomically (temp file + rename).
    """
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = [
        ("train loss (running mean per epoch)", [(s / steps_per_epoch, v) for s, v in loss_trace],
         (40, 160, 40)),
        ("dev BLEU-4 x100", [(r["epoch"] - 1 + r["steps"] / steps_per_epoch, 100 * r["dev_bleu"][3])
                             for r in history], (40, 80, 220)),
    ]
    panel_width = width // 2
    for k, (title, points, colour) in enumerate(panels):
        left, top, right, bottom = k * panel_width + 50, 25, (k + 1) * panel_width - 15, height - 35
        draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
        draw.text((left, 6), title, fill=(0, 0, 0))
        draw.text((left, bottom + 8), "epoch", fill=(90, 90, 90))
        points = [(x, y) for x, y in points if math.isfinite(y)]
        if not points:
            continue
        xs, ys = [x for x, _ in points], [y for _, y in points]
        x_max = max(max(xs), 1e-9)
        y_lo, y_hi = min(ys), max(ys)
        if y_hi - y_lo < 1e-9:
            y_lo, y_hi = y_lo - 1, y_hi + 1
        to_px = lambda x, y: (left + (right - left) * x / x_max,  # noqa: E731
                              bottom - (bottom - top) * (y - y_lo) / (y_hi - y_lo))
        draw.text((left - 45, top), f"{y_hi:.3g}", fill=(90, 90, 90))
        draw.text((left - 45, bottom - 10), f"{y_lo:.3g}", fill=(90, 90, 90))
        draw.text((right - 30, bottom + 8), f"{x_max:.3g}", fill=(90, 90, 90))
        pixels = [to_px(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels if len(pixels) < 60 else pixels[-1:]:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return path
