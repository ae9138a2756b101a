"""The training curves as a PNG: training and dev loss, and dev BLEU-4, against epochs (drawn with Pillow)."""
import math

from nn.persist import atomic_write

__all__ = ["save_training_curves", "save_scst_curves"]

TRAIN, DEV, BLEU = (40, 160, 40), (220, 90, 30), (40, 80, 220)
GREEDY = (150, 150, 150)


def save_training_curves(path, loss_trace, history, steps_per_epoch, size=(720, 300)):
    """Two panels drawn with Pillow: the losses against epochs, and dev BLEU-4 (x100) per epoch.

    Left: the training loss (running mean of the epoch so far, a line) and
    the dev loss at the end of each epoch (dots joined by a line), in the
    same units, so overfitting shows as the two moving apart. Right: dev
    BLEU-4. loss_trace: [[step, running mean loss of the epoch], ...];
    history: the per-epoch records of the Trainer (records without a
    "dev_loss", from older runs, draw no dev dot). Written atomically
    (temp file + rename).
    """
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    at_epoch_end = [(r["epoch"] - 1 + r["steps"] / steps_per_epoch, r) for r in history]
    panels = [
        ("loss per caption", {
            "train (running mean)": ([(s / steps_per_epoch, v) for s, v in loss_trace], TRAIN),
            "dev": ([(x, r["dev_loss"]) for x, r in at_epoch_end if "dev_loss" in r], DEV)}),
        ("dev BLEU-4 x100", {"": ([(x, 100 * r["dev_bleu"][3]) for x, r in at_epoch_end], BLEU)}),
    ]
    return _save_panels(path, image, draw, panels)


def save_scst_curves(path, reward_trace, history, steps_per_epoch, size=(720, 300)):
    """The curves of a self-critical run (captioning.scst): CIDEr-D x100, and dev BLEU-4 x100.

    Left: the mean reward of the sampled training captions and of the greedy
    ones (running means of the epoch so far; CIDEr-D with the training set's
    document frequencies), and the dev CIDEr-D of greedy captions per epoch
    (epoch 0: the starting checkpoint). Right: dev BLEU-4.
    reward_trace: [[step, mean sample reward, mean greedy reward], ...];
    history: the SelfCriticalTrainer's per-epoch records.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    at = [(r["epoch"] - 1 + r["steps"] / steps_per_epoch if r["epoch"] else 0.0, r) for r in history]
    panels = [
        ("CIDEr-D x100", {
            "samples": ([(s / steps_per_epoch, 100 * v) for s, v, _ in reward_trace], TRAIN),
            "greedy": ([(s / steps_per_epoch, 100 * g) for s, _, g in reward_trace], GREEDY),
            "dev": ([(x, 100 * r["dev_cider"]) for x, r in at], DEV)}),
        ("dev BLEU-4 x100", {"": ([(x, 100 * r["dev_bleu"][3]) for x, r in at], BLEU)}),
    ]
    return _save_panels(path, image, draw, panels)


def _save_panels(path, image, draw, panels):
    """Draw the panels side by side on `image` and write it atomically (temp file + rename)."""
    width, height = image.size
    panel_width = width // len(panels)
    for k, (title, curves) in enumerate(panels):
        box = (k * panel_width + 50, 25, (k + 1) * panel_width - 15, height - 35)
        _draw_panel(draw, box, title, curves)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return path


def _draw_panel(draw, box, title, curves):
    """One framed panel: curves {label: (points [(epoch, value)], colour)} on shared axes, labels in colour."""
    left, top, right, bottom = box
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, 6), title, fill=(0, 0, 0))
    draw.text((left, bottom + 8), "epoch", fill=(90, 90, 90))
    curves = {label: ([(x, y) for x, y in points if math.isfinite(y)], colour)
              for label, (points, colour) in curves.items()}
    every = [point for points, _ in curves.values() for point in points]
    if not every:
        return
    x_max = max(max(x for x, _ in every), 1e-9)
    y_lo, y_hi = min(y for _, y in every), max(y for _, y in every)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    to_px = lambda x, y: (left + (right - left) * x / x_max,  # noqa: E731
                          bottom - (bottom - top) * (y - y_lo) / (y_hi - y_lo))
    draw.text((left - 45, top), f"{y_hi:.3g}", fill=(90, 90, 90))
    draw.text((left - 45, bottom - 10), f"{y_lo:.3g}", fill=(90, 90, 90))
    draw.text((right - 30, bottom + 8), f"{x_max:.3g}", fill=(90, 90, 90))
    legend_x = left + 7 * len(title) + 20
    for label, (points, colour) in curves.items():       # later curves on top: the dev dots over the train line
        if label:
            draw.text((legend_x, 6), label, fill=colour)
            legend_x += 7 * len(label) + 20
        pixels = [to_px(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        # a dot per value when they are few (one per epoch); a long trace gets only its last one
        for px, py in pixels if len(pixels) <= 12 else pixels[-1:]:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
