"""Flickr30k and MS-COCO through Karpathy's split files, read into train/dev/test.

Both come as one JSON file of Karpathy's (the schema of dataset_flickr8k.json,
read by captioning.data.caption_files.read_karpathy_json) beside an image folder:

- Flickr30k: `dataset_flickr30k.json` + `flickr30k-images/` (or `images/`);
  31014 photos, 29000 / 1014 / 1000.
- COCO: `dataset_coco.json` + `train2014/` and `val2014/`, directly in the
  folder or in `images/`; each entry's `filepath` names the folder of its
  photo, and its image id is "<filepath>/<filename>" (e.g.
  "val2014/COCO_val2014_000000391895.jpg"); 123287 photos, 113287 / 5000 / 5000.

Karpathy's splits: "train" and "restval" -> train, "val" -> dev, "test" ->
test. What is skipped (photos listed but not on disk, empty captions) is
counted in the report, as for Flickr8k; nothing is written into the folder.
"""
import os
from pathlib import Path

from .caption_files import read_karpathy_json
from .flickr8k import Flickr8k, assemble_splits
from .splits import LoadReport

__all__ = ["KARPATHY_DATASETS", "find_karpathy_files", "load_karpathy"]

# name -> (title, split file, image folder names, whether images sit in `filepath` subfolders)
KARPATHY_DATASETS = {
    "flickr30k": ("Flickr30k", "dataset_flickr30k.json", ("flickr30k-images", "images"), False),
    "coco": ("COCO", "dataset_coco.json", ("train2014", "val2014"), True),
}


def find_karpathy_files(root, name):
    """({"captions": the JSON file, "images": the image folder}, [what is missing]) of data set `name`."""
    title, json_name, folders, nested = KARPATHY_DATASETS[name]
    root = Path(root)
    files, lacking = {"captions": root / json_name, "images": None}, []
    if not files["captions"].is_file():
        lacking.append(json_name)
    if nested:      # the folder that holds train2014/ and val2014/
        files["images"] = next((base for base in (root, root / "images")
                                if any((base / folder).is_dir() for folder in folders)), None)
    else:
        files["images"] = next((root / folder for folder in folders if (root / folder).is_dir()), None)
    if files["images"] is None:
        names = " or ".join(f"{folder}/" for folder in folders)
        lacking.append(f"{names} (image folders, here or in images/)" if nested else f"{names} (image folder)")
    return files, lacking


def load_karpathy(root, name):
    """Read data set `name` ("flickr30k" or "coco") from `root` into train/dev/test CaptionSplits.

    Returns a Flickr8k-shaped record (root, layout "karpathy", splits, report).
    Raises FileNotFoundError naming what is missing, CaptionFileError for a
    split file of another schema.
    """
    title, _, folders, nested = KARPATHY_DATASETS[name]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{title} folder {root} does not exist")
    files, lacking = find_karpathy_files(root, name)
    if lacking:
        raise FileNotFoundError(f"no {title} in {root}: missing {', '.join(lacking)}")
    report = LoadReport(layout="karpathy")
    captions, split_ids = read_karpathy_json(files["captions"], report, with_folder=nested)
    present = None
    if nested:
        present = {f"{folder}/{file}" for folder in folders if (files["images"] / folder).is_dir()
                   for file in os.listdir(files["images"] / folder)}
    splits = assemble_splits(split_ids, captions, files["images"], report, present=present)
    return Flickr8k(root=root, layout="karpathy", splits=splits, report=report)
