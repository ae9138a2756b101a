"""The static results page of `evaluate --html`: rows, scores, pictures and links."""
from html.parser import HTMLParser

import numpy
import pytest
from PIL import Image

from captioning.results_page import PageEntry, per_image_scores, write_results_page


class _Page(HTMLParser):
    """Collects the rows of the results table and every linked file."""
    def __init__(self):
        super().__init__()
        self.rows, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-cider" in attrs:
            self.rows.append(attrs)
        if tag in ("img", "a", "script", "link") and (attrs.get("src") or attrs.get("href")):
            self.links.append(attrs.get("src") or attrs.get("href"))

    def handle_data(self, data):
        self.text.append(data)


def _entries(tmp_path):
    rng = numpy.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=numpy.uint8)).save(photo)
    attention = rng.random((3, 16))
    return [
        PageEntry("photo.jpg", ["a", "dog", "runs"], ["a dog runs", "a brown dog <runs> & jumps"], photo,
                  bleu4=0.0, cider=123.4, attention=attention / attention.sum(1, keepdims=True)),
        PageEntry("shape_1", ["a", "red", "square"], ["a red square"], rng.random((3, 32, 32)),
                  bleu4=0.0, cider=7.5),
    ]


def test_page_lists_every_image_with_scores_and_existing_links(tmp_path):
    index = write_results_page(tmp_path / "page", _entries(tmp_path), title="test split",
                               settings={"beam": 3}, scores={"BLEU-4": 12.5, "CIDEr-D": 40.0})
    parser = _Page()
    parser.feed(index.read_text(encoding="utf-8"))
    assert [row["data-cider"] for row in parser.rows] == ["123.4000", "7.5000"]
    assert len(parser.links) == 3                       # two thumbnails, one attention strip
    for link in parser.links:
        assert (index.parent / link).is_file(), link
    text = "".join(parser.text)
    assert "a brown dog <runs> & jumps" in text          # escaped in the file, intact once parsed
    assert "<runs>" not in index.read_text(encoding="utf-8")
    assert "12.50" in text and "test split" in text
    strip = Image.open(index.parent / "attention" / "00000.png")
    thumb = Image.open(index.parent / "images" / "00000.jpg")
    assert strip.width > 3 * strip.height and thumb.width == 224


def test_tiny_synthetic_pictures_are_enlarged(tmp_path):
    index = write_results_page(tmp_path, _entries(tmp_path)[1:])
    assert Image.open(index.parent / "images" / "00000.jpg").size == (224, 224)


def test_per_image_scores():
    refs = [["a dog runs on the grass", "a dog is running"], ["a red square", "the red square"]]
    bleu4, cider = per_image_scores(refs, ["a dog runs on the grass", "a blue circle"])
    assert bleu4[0] == pytest.approx(100.0) and bleu4[1] == 0.0
    assert cider[0] > cider[1] >= 0 and cider.shape == (2,)
