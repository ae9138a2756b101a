"""Flickr8k in the three layouts people actually have, read into train/dev/test.

8091 photos, 5 captions each, the official 6000/1000/1000 split. The layout is
detected from the folder given (first complete one wins, in this order):

1. original: `Flicker8k_Dataset/*.jpg` (sic; `Flickr8k_Dataset` also accepted)
   and `Flickr8k_text/` (or the text files directly in the folder) with
   `Flickr8k.token.txt` (`<image>#<k><TAB><caption>`) and the split lists
   `Flickr_8k.{train,dev,test}Images.txt`.
2. karpathy: `dataset_flickr8k.json` (images with `split` and
   `sentences[].tokens`; "val" -> dev, "restval" -> train) + an image folder
   (`Flicker8k_Dataset`, `Flickr8k_Dataset`, `Images` or `images`).
3. kaggle: `Images/*.jpg` + `captions.txt` (CSV, header `image,caption`,
   captions may hold quoted commas). It has no split: the official lists are
   used when found beside it (in the folder or in `Flickr8k_text/`), else a
   seeded split, see `seeded_split`.

The real files have quirks, all skipped and counted in `report` (never a
crash): the token file names `2258277193_586949ec62.jpg.1`, which is no file;
line endings vary (LF, CRLF); empty captions, lines that are not UTF-8,
duplicate lines, split-list ids with no image or no captions. A line that is
not of its file's form (a tab column too many, a quote that does not close on
its line) and a caption too long to be one are skipped and counted the same
way: each caption is one line, never guessed from several. What cannot be
read at all (an empty file, a wrong CSV header, JSON of another schema) is a
CaptionFileError naming the file, the line or entry, and what was expected.
Every caption a file holds is either read or counted as skipped (checked).
Nothing is ever written into the data folder.
"""
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy

from .splits import SPLIT_NAMES, CaptionSplit, LoadReport
from .text import tokenize

__all__ = ["CaptionFileError", "Flickr8k", "find_flickr8k_dir", "load_flickr8k", "seeded_split", "LAYOUTS"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR_NAMES = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
ORIGINAL_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
KARPATHY_FILE = "dataset_flickr8k.json"
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "dev": "dev", "test": "test"}
LAYOUTS = ("original", "karpathy", "kaggle")
MAX_CAPTION_CHARS = 500  # the longest real Flickr8k caption has 199
DOWNLOAD_HINT = "get it with `python -m captioning download --dest DIR`"


class CaptionFileError(ValueError):
    """A caption file that is not in its layout's format: the one-line message names the
    file, the line or entry, and what was expected there."""


@dataclass
class Flickr8k:
    """A loaded data set: `splits["train" | "dev" | "test"]` and what was skipped."""
    root: Path
    layout: str
    splits: dict
    report: LoadReport

    def __getitem__(self, name):
        return self.splits[name]


def find_flickr8k_dir(data_arg=None, required=True):
    """The Flickr8k folder: `--data`, else $FLICKR8K_DIR, else ../shared/flickr8k.

    ../shared/flickr8k is relative to the project root (the folder holding
    `captioning/`). Returns a Path, or None when nothing is found and
    `required` is False; raises FileNotFoundError otherwise.
    """
    for given, source in ((data_arg, "--data"), (os.environ.get("FLICKR8K_DIR"), "$FLICKR8K_DIR")):
        if not given:
            continue
        path = Path(given).expanduser()
        if path.is_file():
            raise FileNotFoundError(f"{path} (from {source}) is a file: give the folder that holds "
                                    f"Flickr8k (e.g. {path.parent})")
        if not path.is_dir():
            raise FileNotFoundError(f"Flickr8k folder {path} (from {source}) does not exist; {DOWNLOAD_HINT}")
        return path
    fallback = PROJECT_ROOT.parent / "shared" / "flickr8k"
    if fallback.is_dir():
        return fallback
    if required:
        raise FileNotFoundError(f"Flickr8k not found: give --data DIR, set $FLICKR8K_DIR, or place it at "
                                f"{fallback}; {DOWNLOAD_HINT}")
    return None


def load_flickr8k(root, layout=None, seed=0):
    """Read Flickr8k from `root` into train/dev/test CaptionSplits.

    root: the data folder. layout: None (detect) or one of LAYOUTS.
    seed: only for the kaggle layout without split lists (see seeded_split).
    Raises FileNotFoundError listing every layout looked for and what was
    missing for each when no layout is complete.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Flickr8k folder {root} does not exist; {DOWNLOAD_HINT}")
    layout, files = detect_layout(root, layout)
    report = LoadReport(layout=layout)
    if layout == "original":
        captions = _read_token_file(files["captions"], report)
        split_ids = {name: _read_split_list(files[name], report) for name in SPLIT_NAMES}
    elif layout == "kaggle":
        captions = _read_kaggle_csv(files["captions"], report)
        if all(name in files for name in SPLIT_NAMES):
            split_ids = {name: _read_split_list(files[name], report) for name in SPLIT_NAMES}
            report.notes.append("split: the official split lists found beside captions.txt")
        else:
            present = set(os.listdir(files["images"]))
            split_ids = seeded_split([i for i in captions if i in present], seed)
            report.notes.append(f"split: no split lists found, seeded split (seed {seed})")
    else:
        captions, split_ids = _read_karpathy_json(files["captions"], report)
    splits = _assemble_splits(split_ids, captions, files["images"], report)
    return Flickr8k(root=root, layout=layout, splits=splits, report=report)


def detect_layout(root, layout=None):
    """(layout name, dict of the files it uses) for the first complete layout."""
    finders = {"original": _find_original, "karpathy": _find_karpathy, "kaggle": _find_kaggle}
    if layout is not None and layout not in finders:
        raise ValueError(f"unknown Flickr8k layout {layout!r}; choose one of {LAYOUTS}")
    missing = {}
    for name in ([layout] if layout else LAYOUTS):
        files, lacking = finders[name](Path(root))
        if not lacking:
            return name, files
        missing[name] = lacking
    lines = [f"no Flickr8k layout is complete in {root}. Looked for:"]
    lines += [f"  {name}: missing {', '.join(lacking)}" for name, lacking in missing.items()]
    lines.append(f"Point --data / $FLICKR8K_DIR at the folder holding the data, or {DOWNLOAD_HINT}.")
    raise FileNotFoundError("\n".join(lines))


def _first_dir(root, names):
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _find_original(root):
    files, lacking = {}, []
    text_dir = next((d for d in (root / "Flickr8k_text", root) if (d / TOKEN_FILE).is_file()), None)
    if text_dir is None:
        lacking.append(f"Flickr8k_text/{TOKEN_FILE}")
        text_dir = root / "Flickr8k_text"
    files["captions"] = text_dir / TOKEN_FILE
    for name, file_name in SPLIT_FILES.items():
        files[name] = text_dir / file_name
        if not files[name].is_file():
            lacking.append(f"{text_dir.name}/{file_name}")
    files["images"] = _first_dir(root, ORIGINAL_IMAGE_DIRS)
    if files["images"] is None:
        lacking.append("Flicker8k_Dataset/ (image folder)")
    return files, lacking


def _find_kaggle(root):
    files = {"captions": root / "captions.txt", "images": _first_dir(root, ("Images", "images"))}
    lacking = []
    if not files["captions"].is_file():
        lacking.append("captions.txt")
    if files["images"] is None:
        lacking.append("Images/ (image folder)")
    for folder in (root, root / "Flickr8k_text"):  # optional official split lists
        if all((folder / f).is_file() for f in SPLIT_FILES.values()):
            files.update({name: folder / f for name, f in SPLIT_FILES.items()})
            break
    return files, lacking


def _find_karpathy(root):
    files = {"captions": root / KARPATHY_FILE, "images": _first_dir(root, IMAGE_DIR_NAMES)}
    lacking = []
    if not files["captions"].is_file():
        lacking.append(KARPATHY_FILE)
    if files["images"] is None:
        lacking.append("an image folder (" + " or ".join(IMAGE_DIR_NAMES) + ")")
    return files, lacking


def seeded_split(image_ids, seed=0):
    """Split ids the way the official split does when no split list exists.

    Sizes: 6000/1000/1000 when there are at least 8000 images (the rest, as in
    the official split, in no split); otherwise dev = test = n // 8 and train
    the rest. Order: numpy.random.default_rng(seed).permutation of the sorted
    ids; test takes the first ones, then dev, then train.
    """
    ids = sorted(image_ids)
    n = len(ids)
    n_dev = n_test = 1000 if n >= 8000 else n // 8
    n_train = 6000 if n >= 8000 else n - n_dev - n_test
    order = numpy.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    return {"test": shuffled[:n_test], "dev": shuffled[n_test:n_test + n_dev],
            "train": shuffled[n_test + n_dev:n_test + n_dev + n_train]}


def _read_bytes(path):
    """The bytes of a file, without a UTF-8 byte-order mark."""
    data = Path(path).read_bytes()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _read_lines(path, report):
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


def _read_token_file(path, report):
    """image id -> captions, from `<image>#<k><TAB><caption>` lines.

    A line of another form is skipped and counted (its caption cannot be told
    apart from the rest without a guess); a repeated `<image>#<k>` key is a
    duplicate line: the first one is kept.
    """
    captions, seen_keys, skips_before = {}, set(), report.num_skipped()
    for number, line in _read_lines(path, report):
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


def _read_kaggle_csv(path, report):
    """image id -> captions, from the `image,caption` CSV: a header, then one caption a line.

    A caption may be quoted ("a dog, running"), and an unquoted one may hold
    commas (the image name has none). A caption never spans lines, so a line
    whose quote does not close on it is skipped and counted, never joined to
    the lines after it.
    """
    path, skips_before = Path(path), report.num_skipped()
    lines = _read_lines(path, report)
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


def _read_karpathy_json(path, report):
    """(image id -> captions, split -> ids) from Karpathy's dataset_flickr8k.json.

    Schema: {"images": [{"filename": str, "split": str, "sentences":
    [{"tokens": [str, ...], "raw": str}, ...]}, ...]}; a sentence's tokens are
    used, its raw text when it has no tokens. Anything else is a
    CaptionFileError naming the entry (never a guess at what was meant).
    """
    path, skips_before, n_sentences = Path(path), report.num_skipped(), 0
    captions, split_ids, seen = {}, {name: [] for name in SPLIT_NAMES}, set()
    for i, entry in enumerate(_karpathy_images(path)):
        where = f"images[{i}]"
        _expect(path, entry, dict, where, "an object with filename, split and sentences")
        image_id, split, sentences = (entry.get(key) for key in ("filename", "split", "sentences"))
        _expect(path, image_id, str, f"{where}.filename", "a file name")
        _expect(path, split, str, f"{where}.split", 'a split name ("train", "val", "test", "restval")')
        _expect(path, sentences, list, f"{where}.sentences", "a list of sentences")
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
    """How many lines of a file are not blank (as _read_lines splits them)."""
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


def _read_split_list(path, report):
    return [line.strip() for _, line in _read_lines(path, report)]


def _assemble_splits(split_ids, captions, image_dir, report):
    """CaptionSplits from split id lists, keeping images that exist and have captions."""
    present = set(os.listdir(image_dir))
    for image_id, texts in captions.items():
        if image_id not in present:
            for _ in texts:
                report.skip("captions of images not found", image_id)
    assigned = set()
    splits = {}
    for name in SPLIT_NAMES:
        ids = []
        for image_id in split_ids.get(name, []):
            if image_id in assigned:
                report.skip("split-list ids listed twice", f"{name}: {image_id}")
            elif image_id not in present:
                report.skip("split-list ids with no image file", image_id)
            elif not captions.get(image_id):
                report.skip("split-list ids with no captions", image_id)
            else:
                ids.append(image_id)
                assigned.add(image_id)
        texts = [captions[i] for i in ids]
        splits[name] = CaptionSplit(
            name=name, image_ids=ids, image_paths=[str(Path(image_dir) / i) for i in ids],
            captions=texts, tokens=[[tokenize(c) for c in per_image] for per_image in texts])
        report.images[name] = len(ids)
        report.captions[name] = sum(len(t) for t in texts)
    unused = sum(1 for i in captions if i in present and i not in assigned)
    if unused:
        report.notes.append(f"{unused} images with captions are in no split (as in the official lists)")
    return splits
