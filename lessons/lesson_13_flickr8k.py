"""Lesson 13: a small Flickr8k run - cached features, a few minutes of training, evaluation.

Everything together on real photos: Flickr8k (Hodosh et al. 2013; 8091
photos, 5 captions each, the official 6000 / 1000 / 1000 split), frozen
EfficientNet-Lite0 features computed once and cached (lesson 6), the Show,
Attend and Tell decoder (Xu et al. 2015; lesson 11) trained by the project's
Trainer, beam search (lesson 10), BLEU and CIDEr-D (lesson 12), and an
attention picture of a test photo.

This is a SMALL run on a slice of the data, so expect captions that are
generic and scores far below the papers' (Xu et al. 2015 report BLEU-4 19.5
with soft attention, Karpathy & Fei-Fei 2015 16.0, both on all of Flickr8k).
The full run is `python -m captioning features --data DIR` followed by
`python -m captioning train --data DIR` (see the README).

Data: --data DIR, $FLICKR8K_DIR, or ../shared/flickr8k. Without it, the
lesson says how to get it and stops. --quick: 800 training photos and two
minutes of training (about 4 minutes in all when the features must be
computed first); without --quick: all 6000 training photos and six minutes
of training (plus about 5 minutes, once, to cache the features of the 7200
photos used, unless `python -m captioning features` has cached them all).
A smaller copy of Flickr8k works too: a split smaller than this slice is
then used whole (an empty split stops the lesson).

Files: the cache of `python -m captioning features` is reused from where
that command writes it and `train` reads it, outputs/features/ under the
current folder; everything this lesson makes (its own feature cache, the
checkpoints, the picture) goes under --out (default: outputs/lessons in
the project folder).
"""
import time
from pathlib import Path

import numpy

from captioning.attention_png import save_attention_png
from captioning.data import Vocabulary, load_flickr8k
from captioning.data.images import load_image
from captioning.encoders.efficientnet import EfficientNetLite0, WeightsNotInstalledError
from captioning.features import FeatureCacheError, default_cache_path, extract_features, open_cache
from captioning.metrics import bleu, cider_d
from captioning.models import build
from captioning.encoders import FrozenFeatures
from captioning.generation import generate_captions
from captioning.training import Trainer, TrainConfig

TITLE = "A small Flickr8k run: cached features, a few minutes of training, evaluation, a test photo"
SECONDS = 480
QUICK_SECONDS = 180

SIZES = {"quick": {"train": 800, "dev": 50, "test": 100, "minutes": 2.0, "epochs": 8},
         "full": {"train": 6000, "dev": 200, "test": 1000, "minutes": 6.0, "epochs": 8}}


def step_1_find_the_data(ctx):
    """Find Flickr8k, or say how to get it.

    The data is read where it is and never written to; everything this
    lesson makes goes to the outputs folder (--out).
    """
    if ctx.data is None or not Path(ctx.data).is_dir():
        where = ctx.data if ctx.data is not None else "../shared/flickr8k"
        ctx.stop(f"Flickr8k was not found (looked at {where}). To get it (about 1 GB):\n"
                 "    python -m captioning download --dest DIR\n"
                 "then run this lesson with --data DIR or set FLICKR8K_DIR=DIR.")
    try:
        ctx.flickr = load_flickr8k(ctx.data)
    except FileNotFoundError as exc:
        ctx.stop(f"{ctx.data} does not hold Flickr8k: {exc}")
    print(ctx.flickr.report)
    return {"folder": str(ctx.data), "layout": ctx.flickr.layout}


def step_2_a_slice(ctx):
    """A slice of each split, so that the run takes minutes, not hours.

    The first images of each official split (so the test images are never
    trained on); all of them when a split is smaller than the slice (a
    trimmed copy of Flickr8k). The vocabulary is built from the training
    captions only, keeping words seen at least 5 times (lesson 7).
    """
    ctx.sizes = dict(SIZES["quick" if ctx.quick else "full"])
    for name in ("train", "dev", "test"):
        available = len(ctx.flickr.splits[name])
        if available == 0:
            ctx.stop(f"The {name} split of {ctx.data} has no photos; this lesson needs photos in all three.")
        if available < ctx.sizes[name]:
            print(f"the {name} split has {available} photos, fewer than the {ctx.sizes[name]} of this slice: "
                  "using all of them")
            ctx.sizes[name] = available
    ctx.splits = {name: ctx.flickr.splits[name].subset(range(ctx.sizes[name])) for name in ("train", "dev", "test")}
    ctx.vocab = Vocabulary.build(ctx.splits["train"].all_tokens(), min_count=5)
    return {"images": {name: len(split) for name, split in ctx.splits.items()},
            "training captions": ctx.splits["train"].num_captions, "vocabulary": len(ctx.vocab)}


def step_3_features_once(ctx):
    """Encode every photo ONCE with the frozen CNN and keep the features on disk.

    The decoder trains for many epochs but the CNN is frozen, so its output
    per photo never changes: computing the 7 x 7 x 1280 grid once and caching
    it (float16, memory-mapped) makes every epoch cheap. If the full cache of
    `python -m captioning features` exists (outputs/features/ under the
    current folder, where `train` looks too) it is reused; otherwise the
    photos of this slice are encoded now into the lesson's own cache under
    --out (interrupted? run again with the same --out: it resumes).
    """
    try:
        ctx.cnn = EfficientNetLite0.from_pretrained()
    except WeightsNotInstalledError as exc:
        ctx.stop(f"The pretrained CNN weights are not installed:\n{exc}")
    ids = [i for split in ctx.splits.values() for i in split.image_ids]
    paths = [p for split in ctx.splits.values() for p in split.image_paths]
    full_cache = default_cache_path("flickr8k", ctx.cnn.name)   # relative: the `features` command's default
    started = time.perf_counter()
    try:
        cache, source = open_cache(full_cache, image_ids=ids, encoder=ctx.cnn), f"{full_cache} (reused)"
    except (FileNotFoundError, FeatureCacheError):
        target = ctx.out_dir / "features" / f"flickr8k_lesson13_{len(ids)}"
        # overwrite: a cache of this name made for other photos (another trimmed copy) is of no use now
        cache = extract_features(ctx.cnn, paths, ids, target, batch_size=16, progress=True, overwrite=True)
        source = f"{target} (made now)"
    seconds = time.perf_counter() - started
    ctx.inputs = {name: cache.for_images(split.image_ids)[0] for name, split in ctx.splits.items()}
    ctx.check(ctx.inputs["train"].shape == (len(ctx.splits["train"]), 49, 1280), "a 7x7x1280 grid per photo")
    return {"cache": source, "grid per split": {n: v.shape for n, v in ctx.inputs.items()},
            "seconds": seconds, "photos per second": len(ids) / max(seconds, 1e-9)}


def step_4_train(ctx):
    """Train the attention decoder with the project's Trainer.

    Teacher forcing, Adam, gradient clipping, dropout 0.5 before the output
    layer, the doubly stochastic attention regulariser; after each epoch the
    dev photos are captioned and scored by BLEU-4, which picks the best
    checkpoint (best.npz) and lowers the learning rate on a plateau. The
    progress lines show loss and speed.
    """
    data = {name: split.with_features(ctx.inputs[name]) for name, split in ctx.splits.items()}
    ctx.data13 = data
    config = {"model": "attention", "vocab_size": len(ctx.vocab), "feature_dim": 1280, "wordvec_dim": 128,
              "hidden_dim": 256, "attention_dim": 128, "dropout": 0.5, "doubly_stochastic": 1.0,
              "null_id": ctx.vocab.null_id, "start_id": ctx.vocab.start_id, "end_id": ctx.vocab.end_id}
    ctx.model = build(config, seed=0)
    ctx.encoder = FrozenFeatures({"name": ctx.cnn.name, "version": ctx.cnn.version})
    train_config = TrainConfig(epochs=ctx.sizes["epochs"], batch_size=64, lr=2e-3, patience=3,
                               max_minutes=ctx.sizes["minutes"], log_every=15.0)
    ctx.run_dir = ctx.out_dir / "lesson13_run"
    trainer = Trainer(ctx.model, ctx.vocab, ctx.encoder, data["train"], data["dev"], train_config, ctx.run_dir)
    history = ctx.fit(trainer)  # trainer.fit(), but Ctrl-C ends the lesson (see run_lesson.py)
    losses = [record["train_loss"] for record in history]
    ctx.check(len(history) >= 1, "at least one epoch (or part of one) was trained")
    ctx.check(len(losses) < 2 or losses[-1] < losses[0], "the training loss went down")
    return {"epochs": len(history), "train loss per epoch": numpy.round(losses, 3),
            "dev BLEU-4 per epoch": numpy.round([r["dev_bleu"][3] for r in history], 4),
            "checkpoints": str(ctx.run_dir)}


def step_5_evaluate(ctx):
    """Caption the test photos with beam search (beam 3) and score them.

    Corpus BLEU-1..4 and CIDEr-D against all five human captions (lesson 12).
    For scale: the same metric for one human caption against the other four
    on these photos (not directly comparable: fewer references make BLEU
    lower, see lesson 12, but it shows the room left). A small, briefly trained model says the same few
    generic sentences for many photos: count the distinct captions.
    """
    test = ctx.data13["test"]
    captions, ctx.decoded = generate_captions(ctx.model, ctx.encoder, test, ctx.vocab, beam=3, max_length=20)
    scores = bleu(test.references, captions)
    human = bleu([refs[1:] for refs in test.references], [refs[0] for refs in test.references])
    ctx.captions = captions
    ctx.check(all(len(c) > 0 for c in captions), "every photo gets a caption")
    for i in range(1, 4):
        print(f"test photo {i}: model: {' '.join(captions[i])}\n              human: {' '.join(test.references[i][0])}")
    return {"model BLEU-1..4": numpy.round(scores, 4), "model CIDEr-D": cider_d(test.references, captions),
            "one human vs the other four, BLEU-1..4": numpy.round(human, 4),
            "distinct captions": f"{len(set(map(tuple, captions)))} for {len(captions)} photos"}


def step_6_a_test_photo(ctx):
    """One test photo: its caption, the human ones, and where the model looked.

    The PNG shows the photo and, for each generated word, the attention over
    the 7 x 7 grid upsampled onto it (Xu et al. 2015, figure style).
    """
    split = ctx.splits["test"]
    index = 0
    words = ctx.captions[index]
    picture = (load_image(split.image_paths[index], size=224) * 255).round().astype(numpy.uint8)
    path = save_attention_png(picture, words, ctx.decoded.attention[index],
                              ctx.output_path("lesson13_attention.png"))
    return {"photo": split.image_paths[index], "model": " ".join(words),
            "humans": "\n".join(split.captions[index]), "attention picture": str(path)}


if __name__ == "__main__":  # python lessons/lesson_13_flickr8k.py [--no-pause] [--quick] [--data DIR]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
