"""Image encoders: images (N, 3, H, W) -> a grid of feature vectors (N, L, D) and its mean (N, D).

- `EfficientNetLite0`: ImageNet-pretrained, frozen, run in our own conv layers
  (`EfficientNetLite0.from_pretrained()`); also classifies into ImageNet classes.
- `SmallCNN`: small and trainable end to end (for the synthetic shapes set).

Both expose `name`, `version`, `preprocess` ({size, resize, mean, std} for
captioning.data.images) and `features(images) -> (grid, pooled)`, which is all
that captioning.features needs to cache their outputs.
"""
from .efficientnet import EfficientNetLite0, classify_files
from .small_cnn import SmallCNN

__all__ = ["EfficientNetLite0", "SmallCNN", "classify_files"]
