"""Everything between files on disk and batches of caption ids.

- text:     tokenize(), Vocabulary (<NULL>=0, <START>, <END>, <UNK>)
- splits:   CaptionSplit (one of train/dev/test, the one split type everywhere), LoadReport
- flickr8k: find_flickr8k_dir(), load_flickr8k() for the three real layouts
- caption_files: the readers of their caption files (CaptionFileError)
- shapes:   the built-in synthetic data set (the default when none is given)
- images:   load_image(s): any Pillow mode -> float NCHW on the current backend
- batches:  encode_captions(), the seeded (optionally length-bucketed) batches of an epoch
- karpathy: load_karpathy() for Flickr30k and COCO through Karpathy's split files
- datasets: DATASETS, the registry of data sets (shapes, flickr8k, flickr30k, coco) and their
  training defaults; folder_dataset(DIR), the one a folder holds
- download: fetch and unpack Flickr8k (`python -m captioning download`)
"""
from .splits import SPLIT_NAMES, CaptionSplit, LoadReport
from .text import Vocabulary, tokenize
from .flickr8k import CaptionFileError, Flickr8k, find_flickr8k_dir, load_flickr8k
from .shapes import ShapesSplit, make_shapes_dataset, shapes_splits
from .images import ImageDecodeError, load_image, load_images, normalize_images
from .batches import CaptionTable, encode_captions, epoch_batches, num_batches, take_batch
from .datasets import DATASETS, DatasetError, TrainingData, dataset_from_spec
