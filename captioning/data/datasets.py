"""One entry point for "the data set the user asked for, or the default one".

With no data folder the built-in synthetic shapes set is used (it needs no
download), so every command and lesson has something to run on.
"""
from .flickr8k import find_flickr8k_dir, load_flickr8k
from .shapes import shapes_splits

__all__ = ["load_splits"]


def load_splits(data=None, seed=0, shapes_sizes=(4000, 500, 500), image_size=64, captions_per_image=5):
    """(splits, description): {"train", "dev", "test"} CaptionSplits.

    data: None or "shapes" -> the synthetic shapes set (sizes `shapes_sizes`,
    `image_size`, `captions_per_image`, from `seed`); otherwise a Flickr8k
    folder (any layout; `seed` is then only used by a kaggle layout without
    split lists). description: one line saying what was loaded, for logs.
    """
    if data is None or str(data) == "shapes":
        n_train, n_val, n_test = shapes_sizes
        splits = shapes_splits(n_train, n_val, n_test, seed=seed, image_size=image_size,
                               captions_per_image=captions_per_image)
        return splits, (f"synthetic shapes (seed {seed}, {image_size}x{image_size}): "
                        f"{n_train}/{n_val}/{n_test} images")
    dataset = load_flickr8k(find_flickr8k_dir(data), seed=seed)
    counts = "/".join(str(len(dataset[name])) for name in ("train", "dev", "test"))
    return dataset.splits, f"Flickr8k at {dataset.root} ({dataset.layout} layout): {counts} images"
