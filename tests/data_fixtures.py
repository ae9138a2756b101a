"""Tiny Flickr8k look-alikes in each layout, built in a temporary folder by the data tests."""
import csv
import io
import json
from pathlib import Path

import numpy
from PIL import Image

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}


def write_jpeg(path, seed=0, size=(40, 30)):
    """A small random-colour JPEG at `path`."""
    rng = numpy.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=numpy.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG")


def tiny_corpus(n_train=6, n_dev=2, n_test=2):
    """(split -> image ids, image id -> 5 captions) with a few shared words."""
    splits, captions = {}, {}
    k = 0
    for name, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        splits[name] = []
        for _ in range(n):
            image_id = f"{1000 + k}_abc{k}.jpg"
            splits[name].append(image_id)
            captions[image_id] = [f"A dog runs , number {k} ." if j == 0 else f"a {name} dog, caption {j}"
                                  for j in range(5)]
            k += 1
    return splits, captions


def write_images(folder, image_ids):
    for i, image_id in enumerate(image_ids):
        write_jpeg(Path(folder) / image_id, seed=i)


def make_original(root, splits, captions, newline="\n", extra_token_lines=(), extra_split_ids=None):
    """Original layout: Flicker8k_Dataset/ + Flickr8k_text/ token file and split lists."""
    root = Path(root)
    write_images(root / "Flicker8k_Dataset", list(captions))
    text = root / "Flickr8k_text"
    text.mkdir(parents=True, exist_ok=True)
    lines = [f"{image_id}#{j}\t{c}" for image_id, cs in captions.items() for j, c in enumerate(cs)]
    body = newline.join(lines + list(extra_token_lines)) + newline
    (text / "Flickr8k.token.txt").write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
    extra_split_ids = extra_split_ids or {}
    for name, file_name in SPLIT_FILES.items():
        ids = splits[name] + list(extra_split_ids.get(name, []))
        (text / file_name).write_text(newline.join(ids) + newline)
    return root


def make_kaggle(root, captions, split_lists=None):
    """Kaggle layout: Images/ + captions.txt (CSV with header, quoted commas)."""
    root = Path(root)
    write_images(root / "Images", list(captions))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "caption"])
    for image_id, cs in captions.items():
        for c in cs:
            writer.writerow([image_id, c])
    (root / "captions.txt").write_text(buffer.getvalue())
    if split_lists:
        for name, file_name in SPLIT_FILES.items():
            (root / file_name).write_text("\n".join(split_lists[name]) + "\n")
    return root


def karpathy_images(splits, captions, filepath=None, restval=False):
    """The "images" list of a Karpathy split file; dev is called "val" (and, with `restval`, the
    last train image "restval"). filepath: None, or image id -> its folder (COCO's "train2014")."""
    karpathy_split = {"train": "train", "dev": "val", "test": "test"}
    images = []
    for name, ids in splits.items():
        for k, image_id in enumerate(ids):
            sentences = [{"raw": c, "tokens": c.lower().replace(",", "").replace(".", "").split()}
                         for c in captions[image_id]]
            split = "restval" if restval and name == "train" and k == len(ids) - 1 else karpathy_split[name]
            images.append({"filename": image_id, "split": split, "sentences": sentences,
                           **({"filepath": filepath(image_id)} if filepath else {})})
    return images


def make_karpathy(root, splits, captions, image_folder="Images"):
    """Karpathy layout: dataset_flickr8k.json (+ an image folder); dev is called "val"."""
    root = Path(root)
    write_images(root / image_folder, list(captions))
    images = karpathy_images(splits, captions)
    (root / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    return root


def make_flickr30k(root, splits, captions, image_folder="flickr30k-images"):
    """Flickr30k through Karpathy's dataset_flickr30k.json + flickr30k-images/."""
    root = Path(root)
    write_images(root / image_folder, list(captions))
    images = karpathy_images(splits, captions, restval=True)
    (root / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    return root


def coco_folder(image_id):
    """COCO's folder of a tiny-corpus image: train2014/ and val2014/ in turn (both hold photos of
    every split in Karpathy's)."""
    return "train2014" if int(image_id[:4]) % 2 == 0 else "val2014"


def make_coco(root, splits, captions, under=""):
    """COCO through Karpathy's dataset_coco.json + train2014/ and val2014/ (in root/`under`)."""
    root = Path(root)
    for i, image_id in enumerate(captions):
        write_jpeg(root / under / coco_folder(image_id) / image_id, seed=i)
    images = karpathy_images(splits, captions, filepath=coco_folder, restval=True)
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    return root
