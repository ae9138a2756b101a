"""A static results page: every evaluated image with its caption, references and scores.

`write_results_page(folder, entries, ...)` writes

    folder/index.html          one table row per image, sortable by clicking a column head
    folder/images/<n>.jpg      a thumbnail of each image (at most 224 pixels wide)
    folder/attention/<n>.png   for attention models: the image and one tile per word

The page needs no server and no JavaScript library: it is plain HTML with a
few lines of inline script for sorting, and it reads fine with scripts off
(rows then stay in the order the split lists them). Open it with any browser:
`xdg-open folder/index.html`.

Per-image scores: BLEU-4 of the one caption against its references (the
corpus formula on a corpus of one image: 0 whenever no 4-gram matches, which
is common for a single sentence, so sort by CIDEr-D to find the good ones)
and CIDEr-D with document frequencies from the whole evaluated split, as
`captioning.metrics.cider_d_per_image` computes it. Both x100, like the
corpus scores the page's header shows.
"""
import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy
from PIL import Image

from nn.persist import atomic_write

from .attention_png import _as_uint8_image, attention_figure
from .metrics import bleu, cider_d_per_image

__all__ = ["PageEntry", "per_image_scores", "write_results_page"]

THUMBNAIL_WIDTH = 224


@dataclass
class PageEntry:
    """One evaluated image.

    - image_id: its name in the data set (e.g. "1000268201_693b08cb0e.jpg")
    - caption: list of generated words
    - references: list of reference captions (strings)
    - image: a path to the photo, or the picture itself as an (H, W, 3) / (3, H, W) array
    - bleu4, cider: per-image scores x100 (see per_image_scores)
    - attention: (T, L) attention weights of the T caption words, or None
    - grid_shape: (rows, cols) of the feature grid the attention is over, or None (square)
    """
    image_id: str
    caption: list
    references: list
    image: object
    bleu4: float = 0.0
    cider: float = 0.0
    attention: object = None
    grid_shape: tuple = None


def per_image_scores(references, captions):
    """Per-image BLEU-4 and CIDEr-D, x100.

    Inputs:
    - references: list (N) of lists of reference captions (strings or token lists)
    - captions: list (N) of generated captions (strings or token lists)
    Returns: (bleu4, cider), two float64 arrays of shape (N,).
    """
    bleu4 = numpy.array([100.0 * bleu([refs], [caption])[3] for refs, caption in zip(references, captions)])
    cider = 100.0 * cider_d_per_image(references, captions)
    return bleu4, cider


def _as_picture(image):
    """A path or an (H, W, 3) / (3, H, W) array -> an RGB PIL image (decoded once per entry)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return Image.fromarray(_as_uint8_image(image))


def _save_thumbnail(picture, path):
    if picture.width > THUMBNAIL_WIDTH:
        picture = picture.resize((THUMBNAIL_WIDTH, round(picture.height * THUMBNAIL_WIDTH / picture.width)),
                                 Image.BILINEAR)
    elif picture.width < THUMBNAIL_WIDTH // 2:     # tiny synthetic pictures: enlarge, keep pixels sharp
        scale = THUMBNAIL_WIDTH // picture.width
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_write(path, "wb") as stream:
        picture.save(stream, format="JPEG", quality=88)


def _save_attention(entry, picture, path):
    words = entry.caption or ["<empty>"]
    weights = numpy.asarray(entry.attention)[:len(words)]
    figure = attention_figure(numpy.asarray(picture), words, weights, grid_shape=entry.grid_shape,
                              columns=len(words) + 1, min_tile=96)
    with atomic_write(path, "wb") as stream:
        figure.save(stream, format="PNG")


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; white-space: nowrap; }
th.sortable { cursor: pointer; text-decoration: underline dotted; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.caption { font-weight: bold; }
ul { margin: 0; padding-left: 1.1em; color: #555; }
img.attention { display: block; max-width: 100%; margin-top: 6px; }
table.summary { width: auto; margin-bottom: 1em; }
.summary td, .summary th { border: none; padding: 2px 16px 2px 0; background: none; position: static; }
"""

# Click a column head to sort by it (again: reverse). Rows carry their values in data-* attributes.
_SCRIPT = """
document.querySelectorAll("th.sortable").forEach(function (head) {
  head.addEventListener("click", function () {
    var key = head.dataset.key, body = document.querySelector("#results tbody");
    var descending = head.dataset.direction ? head.dataset.direction !== "desc" : head.dataset.first === "desc";
    head.dataset.direction = descending ? "desc" : "asc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
      return descending ? y - x : x - y;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _row(index, entry, thumbnail, attention):
    references = "".join(f"<li>{html.escape(ref)}</li>" for ref in entry.references)
    picture = (f'<img src="{thumbnail}" alt="{html.escape(entry.image_id)}" '
               f'width="{THUMBNAIL_WIDTH}"><br><small>{html.escape(entry.image_id)}</small>')
    strip = f'<img class="attention" src="{attention}" alt="attention of each word">' if attention else ""
    return (f'<tr data-order="{index}" data-bleu="{entry.bleu4:.4f}" data-cider="{entry.cider:.4f}">'
            f'<td class="num">{index + 1}</td><td>{picture}</td>'
            f'<td><div class="caption"><b>{html.escape(" ".join(entry.caption))}</b></div>'
            f"<ul>{references}</ul>{strip}</td>"
            f'<td class="num">{entry.bleu4:.1f}</td><td class="num">{entry.cider:.1f}</td></tr>')


def _summary(settings, scores):
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in settings.items())
    cells += "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.2f}</td></tr>" for k, v in scores.items())
    return f'<table class="summary">{cells}</table>'


def write_results_page(folder, entries, title="Captions", settings=None, scores=None):
    """Write the page and its pictures into `folder` (created if needed).

    Inputs:
    - folder: output folder
    - entries: list of PageEntry, in the order the rows first appear
    - title: the page's heading
    - settings: dict shown above the table (checkpoint, split, beam, ...)
    - scores: dict name -> corpus score x100 shown above the table (BLEU-1..4, CIDEr-D)
    Returns: the Path of index.html.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if any(entry.attention is not None for entry in entries):
        (folder / "attention").mkdir(exist_ok=True)
    rows = []
    for index, entry in enumerate(entries):
        thumbnail = f"images/{index:05d}.jpg"
        picture = _as_picture(entry.image)
        _save_thumbnail(picture, folder / thumbnail)
        attention = None
        if entry.attention is not None:
            attention = f"attention/{index:05d}.png"
            _save_attention(entry, picture, folder / attention)
        rows.append(_row(index, entry, thumbnail, attention))
    heads = ('<th class="sortable" data-key="order" data-first="asc">#</th><th>image</th>'
             "<th>generated caption (bold) and the references</th>"
             '<th class="sortable" data-key="bleu" data-first="desc">BLEU-4</th>'
             '<th class="sortable" data-key="cider" data-first="desc">CIDEr-D</th>')
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n{_summary(settings or {}, scores or {})}\n"
            f"<p>{len(entries)} images. Click BLEU-4 or CIDEr-D to sort by it (click again to reverse), "
            "# to restore the order. Per-image scores x100.</p>\n"
            f'<table id="results"><thead><tr>{heads}</tr></thead><tbody>\n' + "\n".join(rows) +
            f"\n</tbody></table>\n<script>{_SCRIPT}</script>\n</body></html>\n")
    path = folder / "index.html"
    with atomic_write(path, "w", encoding="utf-8") as stream:
        stream.write(page)
    return path
