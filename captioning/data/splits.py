"""What a data set hands the rest of the project: splits of images with captions.

A `CaptionSplit` is one of train / dev / test: parallel lists, one entry per
image. Flickr8k splits name image files (`image_paths`); the synthetic shapes
splits hold the pixels in memory (`images`) instead. For training on cached
encoder outputs a split also carries their rows (`features`); `inputs` is what
the encoder reads, whichever of the two it is. The same type goes from the
reader through training (captioning.data.batches) to evaluation.
"""
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Optional

SPLIT_NAMES = ("train", "dev", "test")

__all__ = ["CaptionSplit", "LoadReport", "SPLIT_NAMES"]


@dataclass
class CaptionSplit:
    """One split: for image i, its id, its file (or pixels) and its captions.

    name:        "train", "dev" or "test"
    image_ids:   list of N str, e.g. "1000268201_693b08cb0e.jpg"
    image_paths: list of N str (files on disk), or None for in-memory data
    captions:    list of N lists of raw caption strings (5 per Flickr8k image)
    tokens:      list of N lists of token lists (tokenize() of each caption)
    images:      None, or an (N, 3, H, W) uint8 array for in-memory data
    features:    None, or cached encoder outputs (N, L, D) / (N, D), indexed like an array
                 (a NumPy array, or the memmap rows of captioning.features.FeatureCache.for_images)
    """
    name: str
    image_ids: List[str]
    image_paths: Optional[List[str]]
    captions: List[List[str]]
    tokens: List[List[List[str]]]
    images: Any = None
    features: Any = None

    def __len__(self):
        return len(self.image_ids)

    @property
    def inputs(self):
        """What the image encoder reads, leading axis N: the cached features, else the pixels."""
        return self.features if self.features is not None else self.images

    @property
    def references(self):
        """Per image, its reference captions as token lists (raw words: BLEU needs unknown ones too)."""
        return self.tokens

    def with_features(self, features):
        """The same split whose encoder input is `features` (N rows, in image order)."""
        return replace(self, features=features)

    def head(self, n):
        """The first n images (e.g. a quick validation subset); all of them for n None."""
        if n is None or n >= len(self):
            return self
        return self.subset(range(n))

    @property
    def num_captions(self):
        return sum(len(c) for c in self.captions)

    def all_tokens(self):
        """Every caption's tokens, flattened: what Vocabulary.build wants."""
        return [t for per_image in self.tokens for t in per_image]

    def subset(self, indices):
        """A split of the same kind with only the given images (e.g. a 100-image slice).

        Every per-image field (a list or array of len(self) entries) is picked;
        a field with metadata {"per_image": False} is kept as it is.
        """
        indices = [int(i) for i in indices]
        picked = {}
        for f in fields(self):
            if not f.metadata.get("per_image", True):
                continue
            values = getattr(self, f.name)
            if hasattr(values, "pick") and len(values) == len(self):
                picked[f.name] = values.pick(indices)     # cached rows stay on disk (COCO: 15 GB)
            elif isinstance(values, list) and len(values) == len(self):
                picked[f.name] = [values[i] for i in indices]
            elif hasattr(values, "shape") and values.shape[:1] == (len(self),):
                picked[f.name] = values[indices]
        return replace(self, **picked)


@dataclass
class LoadReport:
    """What a reader found and what it had to skip (never silently).

    images / captions: per split name, how many were kept.
    skipped: reason -> number of entries skipped for it.
    examples: reason -> up to 3 offending entries, to show the user.
    notes: other facts worth printing (e.g. images in no split).
    """
    layout: str
    images: Dict[str, int] = field(default_factory=dict)
    captions: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def skip(self, reason, example):
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        example = str(example)
        if not example.isprintable():  # shown on one terminal line: escape tabs, line breaks, ESC
            example = repr(example)[1:-1]
        example = example[:120]
        if len(shown) < 3 and example not in shown:
            shown.append(example)

    def num_skipped(self):
        """How many entries were skipped, for every reason together."""
        return sum(self.skipped.values())

    def skipped_lines(self):
        """One line per reason entries were skipped (e.g. photos listed but not in the folder)."""
        return [f"skipped {count} {reason} (e.g. {', '.join(self.examples[reason])})"
                for reason, count in self.skipped.items()]

    def __str__(self):
        lines = [f"layout: {self.layout}"]
        for name in self.images:
            lines.append(f"{name}: {self.images[name]} images, {self.captions.get(name, 0)} captions")
        lines.extend(self.skipped_lines())
        lines.extend(self.notes)
        return "\n".join(lines)
