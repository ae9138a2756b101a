"""Data for the train / evaluate commands: the synthetic shapes set or Flickr8k + cached features.

Each loader returns a `TrainingData` whose `spec` (JSON) is saved in the
checkpoint, so `evaluate` can rebuild the same splits without being told.
"""
import os
from dataclasses import dataclass, field
from typing import Optional

from ..cli import UsageError
from ..training import CaptionData, FrozenFeatures, TrainableEncoder

SHAPES_DEV = 200     # dev images decoded each epoch (validation must stay quick)
SHAPES_TEST = 500
SHAPES_IMAGE_SIZE = 64


@dataclass
class TrainingData:
    name: str                        # "shapes" or "flickr8k"
    splits: dict                     # "train" / "dev" / "test" -> CaptionData
    spec: dict                       # how to rebuild it (saved in checkpoints)
    feature_dim: Optional[int] = None
    encoder: object = None           # FrozenFeatures for cached features
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


def _caption_data(split, inputs=None, max_images=None):
    data = CaptionData(split.images if inputs is None else inputs, split.tokens, list(split.image_ids))
    return data.head(max_images)


def shapes_data(n_train=3000, seed=0, max_images=None, n_dev=SHAPES_DEV, n_test=SHAPES_TEST):
    """The built-in synthetic shapes set (generated in about a second)."""
    from ..data.shapes import shapes_splits

    splits = shapes_splits(n_train=n_train, n_val=n_dev, n_test=n_test, seed=seed,
                           image_size=SHAPES_IMAGE_SIZE)
    if max_images is not None:   # the first images of the full set (a smaller set draws other images)
        splits = {name: split.subset(range(min(max_images, len(split)))) for name, split in splits.items()}
    spec = {"name": "shapes", "n_train": n_train, "n_dev": n_dev, "n_test": n_test, "seed": seed,
            "image_size": SHAPES_IMAGE_SIZE, "max_images": max_images}
    return TrainingData("shapes", {k: _caption_data(v) for k, v in splits.items()}, spec)


# Channels of the small CNN for the synthetic set. The CNN took three quarters of the training time
# with (16, 32, 64) (59 ms of a step of 16 images, mostly the 64x64 first stage: conv, batchnorm and
# max-pool backward); (8, 16, 32) takes 25 ms, so an epoch takes 26 s instead of 52, and the
# captions came out better in less time (constant lr 2e-3: test BLEU-4 95.1 after 4 epochs in
# 1 min 46 s, against 88.7 after 3 epochs in 2 min 36 s with the wider CNN). Attention stayed on
# the shapes: of the weight on a colour or shape word, 61% lies on the object it names (50% before).
SHAPES_CNN_CHANNELS = (8, 16, 32)


def small_cnn_encoder(seed=0):
    return TrainableEncoder.small_cnn(channels=SHAPES_CNN_CHANNELS, image_size=SHAPES_IMAGE_SIZE, seed=seed)


def _default_features_path():
    from ..features import default_cache_path
    return str(default_cache_path("flickr8k", "efficientnet_lite0"))


def flickr8k_data(data_arg, features_arg=None, max_images=None, kind="grid", splits=("train", "dev", "test"),
                  again="run train again"):
    """Flickr8k splits whose inputs are rows of the EfficientNet-Lite0 feature cache.

    splits: the splits to load (the cache needs the features of these only);
    again: what the user should do once the missing cache is made.
    """
    from ..data.flickr8k import find_flickr8k_dir, load_flickr8k
    from ..features import FeatureCacheError, open_cache

    root = find_flickr8k_dir(data_arg)
    dataset = load_flickr8k(root)
    features_path = features_arg or _default_features_path()
    splits = {name: dataset[name] for name in splits}
    if max_images is not None:
        splits = {name: split.subset(range(min(max_images, len(split)))) for name, split in splits.items()}
    wanted = [i for split in splits.values() for i in split.image_ids]
    try:
        cache = open_cache(features_path, image_ids=wanted)
    except FileNotFoundError:
        raise UsageError(
            f"no feature cache at {features_path}: extract the EfficientNet-Lite0 features first with\n"
            f"  python -m captioning features --data {root}" +
            (f" --out {features_path}" if features_arg else "") +
            f"\n(a few minutes on a CPU, resumable), then {again}") from None
    except FeatureCacheError as exc:
        raise UsageError(str(exc)) from None
    encoder_name = cache.index["encoder"]["name"]
    if encoder_name != "efficientnet_lite0":
        raise UsageError(f"feature cache {features_path} was made by {encoder_name}, not efficientnet_lite0")
    # Photos the cache could not decode (features --skip-bad) hold zeros: leave them out.
    skipped = set(cache.index.get("skipped", []))
    if skipped:
        splits = {name: split.subset([i for i, image_id in enumerate(split.image_ids) if image_id not in skipped])
                  for name, split in splits.items()}
    data = {}
    for name, split in splits.items():
        grid, pooled = cache.for_images(split.image_ids, check=(kind,))
        data[name] = _caption_data(split, grid if kind == "grid" else pooled)
    spec = {"name": "flickr8k", "root": os.path.abspath(root), "features": os.path.abspath(str(cache.path)),
            "max_images": max_images}
    encoder = FrozenFeatures({"name": "efficientnet_lite0", **cache.index["encoder"]})
    feature_dim = int(cache.index["grid_shape"][-1])
    return TrainingData("flickr8k", data, spec, feature_dim=feature_dim, encoder=encoder,
                        notes=[f"features {cache.path} ({cache.grid.dtype}, grid {tuple(cache.grid.shape[1:])})"]
                        + ([f"{len(skipped)} undecodable photos left out"] if skipped else [])
                        + dataset.report.skipped_lines())


def data_from_spec(spec, data_arg=None, features_arg=None, kind="grid", max_images=None,
                   splits=("train", "dev", "test")):
    """The data a checkpoint was trained on (optionally from another folder / cache)."""
    name = (spec or {}).get("name")
    if data_arg is None and name == "shapes" and features_arg is not None:
        raise UsageError("--features is for Flickr8k checkpoints; this one was trained on the synthetic "
                         "shapes set, whose images are encoded by its own CNN (give --data DIR for Flickr8k)")
    if data_arg is None and name == "shapes":
        if max_images is None:
            max_images = spec.get("max_images")
        return shapes_data(n_train=spec["n_train"], seed=spec["seed"], n_dev=spec["n_dev"],
                           n_test=spec["n_test"], max_images=max_images)
    if data_arg is None and name != "flickr8k":
        raise UsageError("give --data DIR: the checkpoint does not say which data it was trained on")
    same_data = data_arg is None or (name == "flickr8k" and os.path.abspath(data_arg) == spec["root"])
    if data_arg is None:
        data_arg = spec["root"]
        if not os.path.isdir(data_arg):
            raise UsageError(f"the checkpoint was trained on the Flickr8k folder {data_arg}, which does "
                             "not exist any more (moved?): give its new place with --data DIR")
    if features_arg is None and name == "flickr8k" and same_data:
        features_arg = spec.get("features")    # other data: its own cache, at the default place
    if max_images is None and name == "flickr8k":
        max_images = spec.get("max_images")
    return flickr8k_data(data_arg, features_arg, max_images=max_images, kind=kind, splits=splits,
                         again="run this command again (or give an existing cache with --features)")
