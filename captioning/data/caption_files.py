"""The three Flickr8k caption files, read line by line (or entry by entry) without guessing.

- `read_token_file`: Flickr8k.token.txt, `<image>#<k><TAB><caption>` lines;
- `read_kaggle_csv`: Kaggle's captions.txt, `image,caption` CSV, one caption per line;
- `read_karpathy_json`: Karpathy's split files dataset_flickr8k.json, dataset_flickr30k.json and
  dataset_coco.json (images with `split` and `sentences[].tokens`; COCO's also `filepath`).

Each returns image id -> captions (the JSON reader also the split of each
image) and counts what it skips in a LoadReport; see captioning.data.flickr8k
for the quirks of the real files. A file that cannot be read at all is a
CaptionFileError naming the file, the line or entry, and what was expected.
"""
import csv
import json
from pathlib import Path

from .splits import SPLIT_NAMES
from .text import tokenize

__all__ = ["CaptionFileError", "read_lines", "read_token_file", "read_kaggle_csv", "read_karpathy_json",
           "MAX_CAPTION_CHARS"]

MAX_CAPTION_CHARS = 500  # the longest real Flickr8k caption has 199
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "dev": "dev", "test": "test"}


class CaptionFileError(ValueError):
    """A caption file that is not in its layout's format: the one-line message names the
    file, the line or entry, and what was expected there."""


def _read_bytes(path):
    """The bytes of a file, without a UTF-8 byte-order mark."""
    data = Path(path).read_bytes()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def read_lines(path, report):
    """(line number, text) of each line that is not blank, any line ending; non-UTF-8 lines skipped."""
    lines = []
    for number, raw in enumerate(_read_bytes(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError:
            report.skip("lines that are not UTF-8", f"{Path(path).name}:{number}")
    return lines


def _add_caption(captions, image_id, caption, report, where):
    """Append a caption, its whitespace runs made single spaces, to captions[image_id].

    An empty caption, one with unprintable characters and one too long to be
    a single caption are skipped and counted (`where` names it). Identical
    captions of one image are kept: in the real token file ten images have
    two annotators who wrote the same sentence (different #k).
    """
    caption = " ".join(caption.split())   # also tabs, line and paragraph separators
    if not tokenize(caption):
        report.skip("empty captions", image_id)
    elif not caption.isprintable():         # NUL, terminal escapes, a stray byte-order mark
        report.skip("captions with unprintable characters", f"{where}: {caption[:40]}")
    elif len(caption) > MAX_CAPTION_CHARS:
        report.skip(f"implausibly long captions (over {MAX_CAPTION_CHARS} characters)", f"{where}: {caption[:40]}")
    else:
        captions.setdefault(image_id, []).append(caption)


def read_token_file(path, report):
    """image id -> captions, from `<image>#<k><TAB><caption>` lines.

    A line of another form is skipped and counted (its caption cannot be told
    apart from the rest without a guess); a repeated `<image>#<k>` key is a
    duplicate line: the first one is kept.
    """
    captions, seen_keys, skips_before = {}, set(), report.num_skipped()
    for number, line in read_lines(path, report):
        key, image_id, caption = _parse_token_line(line)
        if image_id is None:
            report.skip("malformed caption lines", f"{Path(path).name}:{number}: {caption}")
        elif key in seen_keys:
            report.skip("duplicate caption lines", key)
        else:
            seen_keys.add(key)
            _add_caption(captions, image_id, caption, report, f"{Path(path).name}:{number}")
    _check_accounted(path, _count_lines(path), captions, report, skips_before,
                     "one '<image>#<k><TAB><caption>' line per caption")
    return captions


def _parse_token_line(line):
    """(key, image id, caption) of an `<image>#<k><TAB><caption>` line (k a number), else
    (None, None, what is wrong)."""
    columns = line.split("\t")
    if len(columns) != 2:
        found = "no tab" if len(columns) == 1 else f"{len(columns)} tab-separated columns"
        return None, None, f"{found}, expected <image>#<k><TAB><caption>"
    key = columns[0].strip()
    image_id, _, k = key.rpartition("#")
    if not image_id or not (k.isascii() and k.isdigit()):
        return None, None, f"{_short(key)} is not <image>#<k> (k a number)"
    return key, image_id, columns[1]


def read_kaggle_csv(path, report):
    """image id -> captions, from the `image,caption` CSV: a header, then one caption a line.

    A caption may be quoted ("a dog, running"), and an unquoted one may hold
    commas (the image name has none). A caption never spans lines, so a line
    whose quote does not close on it is skipped and counted, never joined to
    the lines after it.
    """
    path, skips_before = Path(path), report.num_skipped()
    lines = read_lines(path, report)
    if not lines:
        raise CaptionFileError(f"{path} is empty: expected the header line 'image,caption', then one "
                               "'<image>,<caption>' line per caption")
    number, header = lines[0]
    if not _is_kaggle_header(*_parse_kaggle_line(header)):
        raise CaptionFileError(f"{path} line {number}: expected the header 'image,caption', found {_short(header)}")
    captions = {}
    for number, line in lines[1:]:
        image_id, caption = _parse_kaggle_line(line)
        if image_id is None:
            report.skip("malformed caption lines", f"{path.name}:{number}: {caption}")
        elif _is_kaggle_header(image_id, caption):
            report.skip("repeated header lines", f"{path.name}:{number}")
        else:
            _add_caption(captions, image_id, caption, report, f"{path.name}:{number}")
    _check_accounted(path, _count_lines(path) - 1, captions, report, skips_before,
                     "one '<image>,<caption>' line per caption after the header")
    return captions


def _parse_kaggle_line(line):
    """(image id, caption) of one `<image>,<caption>` CSV line, else (None, what is wrong)."""
    try:
        row = next(csv.reader([line], strict=True))
    except csv.Error as exc:
        if "end of data" in str(exc):
            return None, "a quote opens a field but does not close on this line"
        return None, f"broken CSV quoting ({exc})"
    if len(row) < 2 or not row[0].strip():
        return None, "expected <image>,<caption>"
    # An unquoted caption with commas arrives as several fields: join them back.
    return row[0].strip(), ",".join(row[1:])


def _is_kaggle_header(image_id, caption):
    return image_id is not None and (image_id.lower(), caption.strip().lower()) == ("image", "caption")


def read_karpathy_json(path, report, with_folder=False):
    """(image id -> captions, split -> ids) from one of Karpathy's split files.

    Schema: {"images": [{"filename": str, "split": str, "sentences":
    [{"tokens": [str, ...], "raw": str}, ...]}, ...]}; a sentence's tokens are
    used, its raw text when it has no tokens. with_folder (COCO): each image
    also has "filepath", the folder holding it ("train2014", "val2014"), and
    its id is "<filepath>/<filename>". Anything else is a CaptionFileError
    naming the entry (never a guess at what was meant).
    """
    path, skips_before, n_sentences = Path(path), report.num_skipped(), 0
    captions, split_ids, seen = {}, {name: [] for name in SPLIT_NAMES}, set()
    for i, entry in enumerate(_karpathy_images(path)):
        where = f"images[{i}]"
        image_id, split, sentences = _karpathy_entry(path, entry, where, with_folder)
        places = [f"{where}.sentences[{j}]" for j in range(len(sentences))]
        texts = [(f"{path.name} {place}", _sentence_text(path, sentence, place))
                 for place, sentence in zip(places, sentences)]
        n_sentences += len(texts)
        if KARPATHY_SPLITS.get(split) is None or image_id in seen:
            reason = "JSON images listed twice" if image_id in seen else "JSON images with an unknown split"
            for _ in texts:
                report.skip(f"captions of {reason}", f"{where}: {image_id} ({split})")
            continue
        seen.add(image_id)
        for place, text in texts:
            _add_caption(captions, image_id, text, report, place)
        split_ids[KARPATHY_SPLITS[split]].append(image_id)
    _check_accounted(path, n_sentences, captions, report, skips_before,
                     'images with "sentences" ({"tokens": [words], "raw": text})')
    return captions, split_ids


def _karpathy_entry(path, entry, where, with_folder):
    """(image id, split, sentences) of one entry of "images", checked against the schema."""
    _expect(path, entry, dict, where, "an object with filename, split and sentences")
    image_id, split, sentences = (entry.get(key) for key in ("filename", "split", "sentences"))
    _expect(path, image_id, str, f"{where}.filename", "a file name")
    _expect(path, split, str, f"{where}.split", 'a split name ("train", "val", "test", "restval")')
    _expect(path, sentences, list, f"{where}.sentences", "a list of sentences")
    if with_folder:
        folder = entry.get("filepath")
        _expect(path, folder, str, f"{where}.filepath", 'the image\'s folder ("train2014" or "val2014")')
        if not folder or folder in (".", "..") or "/" in folder or "\\" in folder:
            raise CaptionFileError(f"{path}: {where}.filepath is {_short(folder)}, expected the name of one "
                                   'folder ("train2014" or "val2014")')
        image_id = f"{folder}/{image_id}"
    return image_id, split, sentences


def _karpathy_images(path):
    """The "images" list of a Karpathy JSON file, or a CaptionFileError saying what is wrong."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaptionFileError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                               "save it as UTF-8") from None
    if not text.strip():
        raise CaptionFileError(f'{path} is empty: expected Karpathy\'s JSON object {{"images": [...]}}')
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                               ) from None
    except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, nesting 10000 deep
        raise CaptionFileError(f"{path}: not valid JSON ({str(exc)[:80]})") from None
    _expect(path, document, dict, "the top level", 'a JSON object {"images": [...]}')
    if "images" not in document:
        raise CaptionFileError(f'{path}: no "images" key; expected Karpathy\'s JSON object {{"images": [...]}}')
    _expect(path, document["images"], list, '"images"', "a list of image entries")
    return document["images"]


def _sentence_text(path, sentence, where):
    """The caption text of one Karpathy sentence: its tokens joined, else its raw text."""
    _expect(path, sentence, dict, where, "an object with tokens (a list of words) or raw (text)")
    tokens, raw = sentence.get("tokens"), sentence.get("raw", "")
    if tokens is not None:
        _expect(path, tokens, list, f"{where}.tokens", "a list of words")
        for k, token in enumerate(tokens):
            _expect(path, token, str, f"{where}.tokens[{k}]", "a word")
    _expect(path, raw, str, f"{where}.raw", "the caption text")
    return " ".join(tokens) if tokens else raw


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
                    bool: "true/false", type(None): "null"}


def _expect(path, value, kind, where, expected):
    """Raise a one-line CaptionFileError unless `value` is a `kind` (a JSON type)."""
    if isinstance(value, kind):
        return
    found = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    shown = "" if value is None else f" ({_short(value)})"
    raise CaptionFileError(f"{path}: {where} is {found}{shown}, expected {expected}")


def _short(value, limit=40):
    """repr(value), cut to `limit` characters: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _count_lines(path):
    """How many lines of a file are not blank (as read_lines splits them)."""
    return sum(1 for raw in _read_bytes(path).splitlines() if raw.strip())


def _check_accounted(path, n_records, captions, report, skips_before, form):
    """Check that each caption record of a file (a line, a JSON sentence) was read or skipped,
    and that at least one was read.

    n_records: how many the file holds; skips_before: report.num_skipped()
    before it was read; form: what a caption record should look like. A
    parser that joins lines, or drops one unreported, fails here instead of
    training on what it made of them.
    """
    kept = sum(len(texts) for texts in captions.values())
    skipped = report.num_skipped() - skips_before
    if kept + skipped != n_records:
        raise CaptionFileError(f"{path}: holds {n_records} captions, but {kept} were read and {skipped} "
                               "skipped: its lines were not read one caption each")
    if n_records == 0:
        raise CaptionFileError(f"{path} holds no captions: expected {form}")
    if kept == 0:
        reasons = ", ".join(f"{count} {reason}, e.g. {report.examples[reason][0][:80]}"
                            for reason, count in list(report.skipped.items())[:3])
        raise CaptionFileError(f"{path} has no usable caption: all {skipped} were skipped ({reasons})")
