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
The caption files are read by captioning.data.caption_files; this module finds
the layout, the split lists and the images. Nothing is ever written into the
data folder.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy

from .caption_files import CaptionFileError, read_kaggle_csv, read_karpathy_json, read_lines, read_token_file
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
LAYOUTS = ("original", "karpathy", "kaggle")
DOWNLOAD_HINT = "get it with `python -m captioning download --dest DIR`"


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
        captions = read_token_file(files["captions"], report)
        split_ids = {name: _read_split_list(files[name], report) for name in SPLIT_NAMES}
    elif layout == "kaggle":
        captions = read_kaggle_csv(files["captions"], report)
        if all(name in files for name in SPLIT_NAMES):
            split_ids = {name: _read_split_list(files[name], report) for name in SPLIT_NAMES}
            report.notes.append("split: the official split lists found beside captions.txt")
        else:
            present = set(os.listdir(files["images"]))
            split_ids = seeded_split([i for i in captions if i in present], seed)
            report.notes.append(f"split: no split lists found, seeded split (seed {seed})")
    else:
        captions, split_ids = read_karpathy_json(files["captions"], report)
    splits = assemble_splits(split_ids, captions, files["images"], report)
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


def _read_split_list(path, report):
    return [line.strip() for _, line in read_lines(path, report)]


def assemble_splits(split_ids, captions, image_dir, report, present=None):
    """CaptionSplits from split id lists, keeping images that exist and have captions.

    present: the image ids found on disk, as paths relative to `image_dir`
    (default: the files directly in it).
    """
    present = set(os.listdir(image_dir)) if present is None else present
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
