"""The data sets a captioner trains on, by name: `DATASETS`.

Each entry says how to load the data set for training (`load`), how to load it
again from what a checkpoint recorded (`from_spec`), and the training settings
sized for it (`train_defaults`, used by `train` for options not given). Both
loaders return a `TrainingData`: the train / dev / test `CaptionSplit`s, the
JSON `spec` saved in checkpoints (so `evaluate` can rebuild the same splits
without being told), and the spec of the image encoder its inputs need
(`captioning.encoders.new_encoder` builds it).

- "shapes": the built-in synthetic set (no download), pixels in memory, a
  small CNN trained end to end with the decoder.
- "flickr8k": a Flickr8k folder (any of its three layouts) whose inputs are
  rows of the EfficientNet-Lite0 feature cache (the CNN stays frozen).
- "flickr30k", "coco": the same, from Karpathy's split file and image
  folders (captioning.data.karpathy).

A folder data set loaded with fine_tune_blocks=K > 0 reads instead the cache of
the activations entering block 16 - K of EfficientNet-Lite0 (made by `features
--fine-tune-blocks K`, default name <name>_efficientnet_lite0_ft<K>), and its
encoder is the fine-tuned top (captioning.encoders.finetuned).

`folder_dataset(DIR)` says which folder data set `--data DIR` holds (by its
files, see there); `FOLDER_DATASET` is the one read when no folder is given.
Another folder data set is one more `FolderDataset` subclass here (its reader,
returning CaptionSplits, in its own module of captioning/data), one line in
DATASETS and, when its files tell it apart, one test in `folder_dataset`.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .splits import SPLIT_NAMES

__all__ = ["DATASETS", "DEFAULT_DATASET", "FOLDER_DATASET", "DatasetError", "TrainingData", "dataset_from_spec",
           "folder_dataset"]


class DatasetError(ValueError):
    """Data that cannot be used as asked (an empty split, a missing feature cache, ...)."""


class MissingFeatureCache(DatasetError):
    """No feature cache where one was looked for (the message says how to make it)."""


@dataclass
class TrainingData:
    name: str                        # a key of DATASETS
    splits: dict                     # "train" / "dev" / "test" -> CaptionSplit
    spec: dict                       # how to rebuild it (saved in checkpoints)
    encoder_spec: dict               # the image encoder its inputs need (captioning.encoders)
    feature_dim: Optional[int] = None   # D of cached features (None: the encoder decides)
    notes: list = field(default_factory=list)

    def train_tokens(self):
        return [tokens for refs in self.splits["train"].references for tokens in refs]

    def files_read(self):
        """(what, path) pairs of the files read besides the data folder: the feature cache's three."""
        if "features" not in self.spec:
            return []
        from ..features import cache_paths
        return [("the feature cache", str(path)) for path in cache_paths(self.spec["features"]).values()]

    def describe(self):
        sizes = ", ".join(f"{name} {len(split)} images" for name, split in self.splits.items())
        return f"{self.name} ({sizes})" + "".join(f"; {note}" for note in self.notes)


def _first_images(splits, max_images):
    """The first max_images images of each split (a smaller generated set would draw other images)."""
    if max_images is None:
        return splits
    return {name: split.subset(range(min(max_images, len(split)))) for name, split in splits.items()}


class ShapesDataset:
    """The built-in synthetic shapes set (generated in about a second), captioned through a small CNN."""
    name = "shapes"
    DEV, TEST, IMAGE_SIZE = 200, 500, 64   # dev images are decoded each epoch: keep validation quick
    # The CNN's first 64x64 stage dominates a step; (8, 16, 32) channels take a third of the time
    # of (16, 32, 64) and gave better captions within the same minutes.
    CNN_CHANNELS = (8, 16, 32)
    # Measured on the 2-core CPU (test BLEU-4, beam 3, 500 unseen images): lr 3e-3 falling linearly
    # to a tenth over 3 epochs gave 94.8 in 1 min 24 s (seeds 1 and 2: 91.7, 93.7), steadier than a
    # constant rate. Validating with beam 3 (as the test is scored) costs 0.3 s per epoch.
    train_defaults = dict(epochs=3, batch_size=16, lr=3e-3, lr_decay_to=0.1, hidden=128, embed=64,
                          attention_dim=64, dropout=0.0, alpha_reg=0.01, min_count=1, beam=3, max_minutes=2.0,
                          shapes_train=2000)

    @classmethod
    def load(cls, n_train=2000, seed=0, max_images=None, n_dev=DEV, n_test=TEST):
        from .shapes import shapes_splits

        splits = shapes_splits(n_train=n_train, n_val=n_dev, n_test=n_test, seed=seed, image_size=cls.IMAGE_SIZE)
        spec = {"name": cls.name, "n_train": n_train, "n_dev": n_dev, "n_test": n_test, "seed": seed,
                "image_size": cls.IMAGE_SIZE, "max_images": max_images}
        encoder = {"name": "small_cnn", "config": {"channels": list(cls.CNN_CHANNELS),
                                                   "image_size": cls.IMAGE_SIZE, "seed": seed, "coords": True}}
        return TrainingData(cls.name, _first_images(splits, max_images), spec, encoder)

    @classmethod
    def from_spec(cls, spec, data_arg=None, features_arg=None, kind="grid", max_images=None, splits=SPLIT_NAMES,
                  fine_tune_blocks=None):
        if fine_tune_blocks:
            raise DatasetError("a fine-tuned EfficientNet-Lite0 captions photos, not the synthetic shapes set: "
                               "give --data DIR")
        if features_arg is not None:
            raise DatasetError("--features is for checkpoints of a photo folder (Flickr8k, Flickr30k, COCO); "
                               "this one was trained on the synthetic shapes set, whose images are encoded by "
                               "its own CNN (give --data DIR for a photo folder)")
        if max_images is None:
            max_images = spec.get("max_images")
        return cls.load(n_train=spec["n_train"], seed=spec["seed"], n_dev=spec["n_dev"], n_test=spec["n_test"],
                        max_images=max_images)


class FolderDataset:
    """A folder of photos with captions, read through a feature cache; a subclass says how to find
    (`find_root`) and read (`read`) its folder, and names it (`name`, `title`)."""
    name, title = None, None
    ENCODE_TIME = "a few minutes on a CPU"     # for messages: how long making its feature cache takes
    ENCODER = "efficientnet_lite0"   # the frozen CNN whose cached outputs the captioner reads
    train_defaults = dict(epochs=10, batch_size=64, lr=1e-3, lr_decay_to=1.0, hidden=512, embed=256,
                          attention_dim=256, dropout=0.5, alpha_reg=1.0, min_count=5, beam=1, max_minutes=0)

    @classmethod
    def cache_encoder(cls, fine_tune_blocks=0):
        """The name of the network whose outputs the cache holds: the frozen CNN, or (K > 0) its
        part below the last K blocks (captioning.encoders.TopInputs)."""
        return cls.ENCODER if not fine_tune_blocks else f"{cls.ENCODER}_ft{fine_tune_blocks}"

    @classmethod
    def default_features_path(cls, split="all", max_images=None, limit=None, fine_tune_blocks=0):
        """Where the `features` command puts the cache of a split ("all": train + dev + test), of the
        first `max_images` photos of each split (_maxN), or of the first `limit` photos (_firstN);
        with fine_tune_blocks=K, of the activations entering the last K blocks (<name>_..._ft<K>)."""
        from ..features import default_cache_path
        path = str(default_cache_path(cls.name, cls.cache_encoder(fine_tune_blocks), split))
        return path + (f"_max{max_images}" if max_images else "") + (f"_first{limit}" if limit else "")

    @classmethod
    def image_list(cls, data_arg, split="all", limit=None, per_split=None):
        """(root, image ids, image paths, skipped) of a split, or of train + dev + test for "all";
        only the first `per_split` of each split and then the first `limit` in all, when given.

        skipped: lines about entries of the caption and split files that were
        left out (e.g. photos listed but not in the folder).
        """
        root = cls.find_root(data_arg)
        data = cls.read(root)
        ids, paths = [], []
        for name in (SPLIT_NAMES if split == "all" else (split,)):
            ids += list(data[name].image_ids)[:per_split]
            paths += list(data[name].image_paths)[:per_split]
        if limit is not None:
            ids, paths = ids[:limit], paths[:limit]
        return root, ids, paths, data.report.skipped_lines()

    @classmethod
    def rebuild_command(cls, root, split, out, limit=None, max_images=None, fine_tune_blocks=0):
        """The `features` command that makes (or resumes) the cache `out`."""
        return (f"python -m captioning features --data {root} --split {split} --out {out}"
                + (f" --max-images {max_images}" if max_images else "") + (f" --limit {limit}" if limit else "")
                + (f" --fine-tune-blocks {fine_tune_blocks}" if fine_tune_blocks else ""))

    @classmethod
    def encode(cls, root, ids, paths, out, rebuild, split="all", batch_size=8, progress=True,
               dtype="float16", overwrite=False, skip_bad=False, announce=None, fine_tune_blocks=0):
        """Run the frozen encoder over the photos (ids, paths) of `root` into the feature cache `out`
        (resumable: an interrupted run continues where it stopped; `rebuild` is the command that
        does so, for messages; `announce` is told the cache's size first). Returns the FeatureCache.
        fine_tune_blocks=K > 0: cache the activations entering the last K blocks instead."""
        from ..encoders import PRETRAINED, TopInputs
        from ..features import extract_features

        network = TopInputs(fine_tune_blocks) if fine_tune_blocks else PRETRAINED[cls.ENCODER]()
        return extract_features(network, paths, ids, out, batch_size=batch_size,
                                progress=progress, dtype=dtype, overwrite=overwrite, skip_bad=skip_bad,
                                rebuild=rebuild, workers=min(8, os.cpu_count() or 1),
                                extra_index={"data": str(root), "split": split}, announce=announce)

    @classmethod
    def load(cls, data_arg, features_arg=None, max_images=None, kind="grid", splits=SPLIT_NAMES,
             again="run train again", fine_tune_blocks=0):
        """Splits whose inputs are rows of the feature cache (`kind`: "grid" or "pooled").

        splits: the splits to load (the cache needs the features of these only);
        again: what the user should do once the missing cache is made;
        fine_tune_blocks: K > 0 reads the cache of the activations entering the last
        K blocks (the inputs are those, whatever `kind`), for a fine-tuned encoder.
        """
        root = cls.find_root(data_arg)
        dataset = cls.read(root)
        features_path = features_arg or cls._default_cache_for(max_images, fine_tune_blocks)
        chosen = _first_images({name: dataset[name] for name in splits}, max_images)
        cache = cls._open_cache(features_path, chosen, root, features_arg, again, max_images, fine_tune_blocks)
        if fine_tune_blocks:
            kind = "grid"       # the activation maps, stored as grids

        # Photos the cache could not decode (features --skip-bad) hold zeros: leave them out.
        skipped = set(cache.index.get("skipped", []))
        if skipped:
            chosen = {name: split.subset([i for i, image_id in enumerate(split.image_ids) if image_id not in skipped])
                      for name, split in chosen.items()}
        for name, split in chosen.items():
            grid, pooled = cache.for_images(split.image_ids, check=(kind,))
            chosen[name] = split.with_features(grid if kind == "grid" else pooled)
        spec = {"name": cls.name, "root": os.path.abspath(root), "features": os.path.abspath(str(cache.path)),
                "max_images": max_images, **({"fine_tune_blocks": fine_tune_blocks} if fine_tune_blocks else {})}
        what = f"activations entering block {16 - fine_tune_blocks}" if fine_tune_blocks else "features"
        notes = ([f"{what} {cache.path} ({cache.grid.dtype}, grid {tuple(cache.grid.shape[1:])})"]
                 + ([f"{len(skipped)} undecodable photos left out"] if skipped else [])
                 + dataset.report.skipped_lines())
        if fine_tune_blocks:
            from ..encoders import FineTunedEncoder
            encoder, dim = FineTunedEncoder.new_spec(fine_tune_blocks, cache.index["encoder"]), None
        else:
            encoder, dim = {"name": cls.ENCODER, **cache.index["encoder"]}, int(cache.index["grid_shape"][-1])
        return TrainingData(cls.name, chosen, spec, encoder, feature_dim=dim, notes=notes)

    @classmethod
    def _default_cache_for(cls, max_images, fine_tune_blocks=0):
        """The default cache of every photo, or, when that does not exist but `features --max-images N`
        made one for the same N, that one."""
        from ..features import cache_paths
        full = cls.default_features_path(fine_tune_blocks=fine_tune_blocks)
        small = cls.default_features_path(max_images=max_images, fine_tune_blocks=fine_tune_blocks)
        if max_images and not cache_paths(full)["index"].is_file() and cache_paths(small)["index"].is_file():
            return small
        return full

    @classmethod
    def _open_cache(cls, features_path, splits, root, features_arg, again, max_images=None, fine_tune_blocks=0):
        from ..features import FeatureCacheError, open_cache

        wanted = [i for split in splits.values() for i in split.image_ids]
        k = f" --fine-tune-blocks {fine_tune_blocks}" if fine_tune_blocks else ""
        try:
            cache = open_cache(features_path, image_ids=wanted)
        except FileNotFoundError:
            stem = Path(features_path).with_suffix("")
            if Path(features_path).suffix and Path(f"{stem}.json").exists():
                raise MissingFeatureCache(
                    f"no feature cache at {features_path}, but there is one at {stem} ({stem.name}.json, "
                    f"{stem.name}.grid.npy, ...): --features names a cache by its stem, without an "
                    f"extension; use --features {stem}") from None
            what = (f"the activations entering its last {fine_tune_blocks} blocks" if fine_tune_blocks
                    else "the EfficientNet-Lite0 features")
            raise MissingFeatureCache(
                f"no feature cache at {features_path}: extract {what} first with\n"
                f"  python -m captioning features --data {root}{k}" +
                (f" --out {features_path}" if features_arg else "") +
                f"\n({cls.ENCODE_TIME}, resumable), then {again}" +
                ("" if features_arg or not max_images else
                 f"; for the first {max_images} photos of each split only: "
                 f"python -m captioning features --data {root} --max-images {max_images}{k}")) from None
        except FeatureCacheError as exc:
            raise DatasetError(str(exc)) from None
        expected = cls.cache_encoder(fine_tune_blocks)
        if cache.index["encoder"]["name"] != expected:
            raise DatasetError(f"feature cache {features_path} was made by {cache.index['encoder']['name']}, "
                               f"not {expected}" + (f" (the activations entering the last {fine_tune_blocks} "
                                                    f"blocks: features --fine-tune-blocks {fine_tune_blocks})"
                                                    if fine_tune_blocks else ""))
        return cache

    @classmethod
    def from_spec(cls, spec, data_arg=None, features_arg=None, kind="grid", max_images=None, splits=SPLIT_NAMES,
                  fine_tune_blocks=None):
        """The recorded folder and cache, or another folder (`data_arg`) with its own cache.
        fine_tune_blocks: K of a fine-tuned encoder (None: as recorded in `spec`)."""
        recorded = spec.get("name") == cls.name
        same_data = data_arg is None or (recorded and os.path.abspath(data_arg) == spec.get("root"))
        if data_arg is None and spec.get("root") is None:
            # a shipped model records no folder of the machine it was trained on: --data, else
            # the data set's default folder (Flickr8k: $FLICKR8K_DIR, else ../shared/flickr8k)
            data_arg = str(cls.find_root(None))
        elif data_arg is None:
            data_arg = spec["root"]
            if not os.path.isdir(data_arg):
                raise DatasetError(f"the checkpoint was trained on the {cls.title} folder {data_arg}, which "
                                   "does not exist any more (moved?): give its new place with --data DIR")
        if features_arg is None and recorded and same_data:
            features_arg = spec.get("features")    # other data: its own cache, at the default place
        if max_images is None and recorded:
            max_images = spec.get("max_images")
        if fine_tune_blocks is None:
            fine_tune_blocks = spec.get("fine_tune_blocks", 0) if recorded else 0
        return cls.load(data_arg, features_arg, max_images=max_images, kind=kind, splits=splits,
                        again="run this command again (or give an existing cache with --features)",
                        fine_tune_blocks=fine_tune_blocks)


class Flickr8kDataset(FolderDataset):
    """A Flickr8k folder (original, Kaggle or Karpathy layout, captioning.data.flickr8k)."""
    name, title = "flickr8k", "Flickr8k"

    @classmethod
    def find_root(cls, data_arg):
        """--data, else $FLICKR8K_DIR, else ../shared/flickr8k (FileNotFoundError if none)."""
        from .flickr8k import find_flickr8k_dir
        return find_flickr8k_dir(data_arg)

    @classmethod
    def read(cls, root):
        from .flickr8k import load_flickr8k
        return load_flickr8k(root)


class KarpathyDataset(FolderDataset):
    """A folder with one of Karpathy's split files and its images (captioning.data.karpathy)."""

    @classmethod
    def find_root(cls, data_arg):
        if data_arg is None:
            raise FileNotFoundError(f"give the {cls.title} folder with --data DIR")
        path = Path(data_arg).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{cls.title} folder {path} (from --data) does not exist or is not a folder")
        return path

    @classmethod
    def read(cls, root):
        from .karpathy import load_karpathy
        return load_karpathy(root, cls.name)


class Flickr30kDataset(KarpathyDataset):
    """Flickr30k: dataset_flickr30k.json + flickr30k-images/ (or images/)."""
    name, title = "flickr30k", "Flickr30k"
    ENCODE_TIME = "about 20 minutes on a CPU at the Flickr8k rate"     # 31014 photos


class CocoDataset(KarpathyDataset):
    """MS-COCO 2014: dataset_coco.json + train2014/ and val2014/ (here or in images/)."""
    name, title = "coco", "COCO"
    ENCODE_TIME = "over an hour on a CPU at the Flickr8k rate"         # 123287 photos


DATASETS = {cls.name: cls for cls in (ShapesDataset, Flickr8kDataset, Flickr30kDataset, CocoDataset)}
DEFAULT_DATASET = ShapesDataset.name    # what train uses without --data
FOLDER_DATASET = Flickr8kDataset.name   # the folder data set read without --data (evaluate, features)


def folder_dataset(data_arg=None):
    """The class of the folder data set in `data_arg` (a folder; None: the default one, Flickr8k).

    The first complete one, in this order: COCO (dataset_coco.json + train2014/ or val2014/),
    Flickr30k with flickr30k-images/, Flickr8k (any layout), Flickr30k with images/ (after
    Flickr8k, whose Karpathy layout also has images/: a folder of Karpathy's zip holds all three
    split files). Nothing complete: the data set whose split file is there (its reader names
    what is missing), else Flickr8k's message listing its layouts, with the other data sets'.
    """
    from .flickr8k import detect_layout
    from .karpathy import KARPATHY_DATASETS, find_karpathy_files

    root = Path(data_arg).expanduser() if data_arg is not None else None
    if root is None or not root.is_dir():
        return DATASETS[FOLDER_DATASET]     # its finder says what is wrong, or finds the default folder
    complete = {name: not find_karpathy_files(root, name)[1] for name in KARPATHY_DATASETS}
    if complete["coco"]:
        return CocoDataset
    if complete["flickr30k"] and (root / "flickr30k-images").is_dir():
        return Flickr30kDataset
    try:
        detect_layout(root)
        return Flickr8kDataset
    except FileNotFoundError as exc:
        flickr8k_error = str(exc)
    for cls in (Flickr30kDataset, CocoDataset):
        if complete[cls.name] or (root / KARPATHY_DATASETS[cls.name][1]).is_file():
            return cls
    raise FileNotFoundError(flickr8k_error + "\nFor Flickr30k: dataset_flickr30k.json + flickr30k-images/; "
                            "for COCO: dataset_coco.json + train2014/ and val2014/ (Karpathy's split files).")


def dataset_from_spec(spec, data_arg=None, features_arg=None, kind="grid", max_images=None, splits=SPLIT_NAMES,
                      fine_tune_blocks=None):
    """The data a checkpoint was trained on (its recorded `spec`), or the folder `data_arg` instead;
    fine_tune_blocks: K of the checkpoint's fine-tuned encoder (0: none; None: as `spec` records)."""
    spec = spec or {}
    if data_arg is not None:
        entry = folder_dataset(data_arg)
    elif spec.get("name") in DATASETS:
        entry = DATASETS[spec["name"]]
    else:
        raise DatasetError("give --data DIR: the checkpoint does not say which data it was trained on")
    return entry.from_spec(spec, data_arg, features_arg, kind=kind, max_images=max_images, splits=splits,
                           fine_tune_blocks=fine_tune_blocks)
