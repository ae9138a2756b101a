"""Everything between files on disk and mini-batches of arrays.

- text:     tokenize(), Vocabulary (<NULL>=0, <START>, <END>, <UNK>)
- splits:   CaptionSplit (one of train/dev/test), LoadReport
- flickr8k: find_flickr8k_dir(), load_flickr8k() for the three real layouts
- shapes:   the built-in synthetic data set (the default when none is given)
- images:   load_image(s): any Pillow mode -> float NCHW on the current backend
- batches:  encode_split(), seeded caption mini-batches, per-image evaluation batches
- download: fetch and unpack Flickr8k (`python -m captioning download`)
- datasets: load_splits(data=None): Flickr8k from a folder, else the shapes set
"""
from .splits import SPLIT_NAMES, CaptionSplit, LoadReport
from .text import Vocabulary, tokenize
from .flickr8k import CaptionFileError, Flickr8k, find_flickr8k_dir, load_flickr8k
from .shapes import ShapesSplit, make_shapes_dataset, shapes_splits
from .images import ImageDecodeError, load_image, load_images, normalize_images
from .batches import (CaptionBatch, CaptionTable, ImageBatch, encode_split, epoch_order,
                      iterate_images, iterate_minibatches, num_batches)
from .datasets import load_splits
