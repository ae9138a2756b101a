"""Lesson 13: a small Flickr8k run - cached features, a few minutes of training, evaluation.

Everything together on real photos: Flickr8k (Hodosh et al. 2013; 8091
photos, 5 captions each, the official 6000 / 1000 / 1000 split), frozen
EfficientNet-Lite0 features computed once and cached (lesson 6), the Show,
Attend and Tell decoder (Xu et al. 2015; lesson 11) trained by the project's
Trainer, beam search (lesson 10), BLEU and CIDEr-D (lesson 12), and an
attention picture of a test photo.

This is a small run on a slice of the data, trained for minutes. For
scale, on all of Flickr8k with hours of training, Xu et al. 2015 report
BLEU-4 19.5 with soft attention and Karpathy & Fei-Fei 2015 16.0 (their CNNs
and training differ from ours too). Scores are printed x100 (BLEU-4 17.8
means 0.178), as the papers and `python -m captioning evaluate` print them.
The full run is `python -m captioning features --data DIR` followed by
`python -m captioning train --data DIR` (see the README).

Data: --data DIR, $FLICKR8K_DIR, or ../shared/flickr8k. Without it, the
lesson says how to get it and stops. --features CACHE reads the photos'
features from a cache made by `python -m captioning features`. --quick:
800 training photos and two minutes of training (about 4 minutes in all when the features must be
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
from collections import Counter
from pathlib import Path

import numpy

from captioning.attention_png import save_attention_png
from captioning.checkpoint import load_checkpoint
from captioning.data import Vocabulary, load_flickr8k
from captioning.data.images import load_image
from captioning.encoders.efficientnet import EfficientNetLite0, WeightsNotInstalledError
from captioning.features import FeatureCacheError, default_cache_path, extract_features, open_cache
from captioning.data.text import UNK
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
    current folder, where `train` looks too) or --features names one, it is
    reused; otherwise the photos of this slice are encoded now into the
    lesson's own cache under --out (interrupted? run again with the same
    --out: it resumes).
    """
    try:
        ctx.cnn = EfficientNetLite0.from_pretrained()
    except WeightsNotInstalledError as exc:
        ctx.stop(f"The pretrained CNN weights are not installed:\n{exc}")
    ids = [i for split in ctx.splits.values() for i in split.image_ids]
    paths = [p for split in ctx.splits.values() for p in split.image_paths]
    # relative: the `features` command's default
    full_cache = ctx.features or default_cache_path("flickr8k", ctx.cnn.name)
    started = time.perf_counter()
    try:
        cache, source = open_cache(full_cache, image_ids=ids, encoder=ctx.cnn), f"{full_cache} (reused)"
    except (FileNotFoundError, FeatureCacheError) as exc:
        if ctx.features:
            ctx.stop(f"--features {ctx.features} cannot be used: {exc}")
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
    """Train the attention decoder with the project's Trainer, then take the best checkpoint.

    Teacher forcing, Adam, gradient clipping, dropout 0.5 before the output
    layer, the doubly stochastic attention regulariser; after each epoch the
    dev photos are captioned and scored by BLEU-4, which picks the best
    checkpoint (best.npz) and lowers the learning rate on a plateau. The
    trainer's model ends with the LAST weights; the rest of the lesson uses
    best.npz, loaded back, and checks that it reproduces its dev score.
    curves.png (in the run's folder) draws the training loss with the dev
    loss (the same loss on the dev photos' captions, without dropout) and
    dev BLEU-4: the dev loss flattening or rising while the training loss
    falls is where more epochs stop helping.
    """
    data = {name: split.with_features(ctx.inputs[name]) for name, split in ctx.splits.items()}
    ctx.data13 = data
    config = {"model": "attention", "vocab_size": len(ctx.vocab), "feature_dim": 1280, "wordvec_dim": 128,
              "hidden_dim": 256, "attention_dim": 128, "dropout": 0.5, "doubly_stochastic": 1.0,
              "null_id": ctx.vocab.null_id, "start_id": ctx.vocab.start_id, "end_id": ctx.vocab.end_id}
    ctx.encoder = FrozenFeatures({"name": ctx.cnn.name, "version": ctx.cnn.version})
    train_config = TrainConfig(epochs=ctx.sizes["epochs"], batch_size=64, lr=2e-3, patience=3,
                               max_minutes=ctx.sizes["minutes"], log_every=15.0)
    ctx.run_dir = ctx.out_dir / "lesson13_run"
    trainer = Trainer(build(config, seed=0), ctx.vocab, ctx.encoder, data["train"], data["dev"], train_config,
                      ctx.run_dir)
    history = ctx.fit(trainer)  # trainer.fit(), but Ctrl-C ends the lesson (see run_lesson.py)
    ctx.check(len(history) >= 1, "at least one epoch (or part of one) was trained")
    best = max(history, key=lambda record: record["dev_bleu"][3])     # the first of equals, as the Trainer
    ctx.model = load_checkpoint(trainer.best_path).model
    again = bleu(data["dev"].references, generate_captions(ctx.model, ctx.encoder, data["dev"], ctx.vocab,
                                                          beam=train_config.beam)[0])[3]
    ctx.check(abs(again - best["dev_bleu"][3]) < 1e-9, "best.npz reproduces the best dev BLEU-4")
    losses = [record["train_loss"] for record in history]
    ctx.check(len(losses) < 2 or losses[-1] < losses[0], "the training loss went down")
    return {"epochs": len(history), "train loss per epoch": numpy.round(losses, 3),
            "dev loss per epoch": numpy.round([record["dev_loss"] for record in history], 3),
            "curves (train and dev loss, dev BLEU-4)": str(ctx.run_dir / "curves.png"),
            "dev BLEU-4 x100 per epoch": numpy.round([100 * r["dev_bleu"][3] for r in history], 2),
            "best epoch (best.npz, used from here on)": best["epoch"],
            "dev BLEU-4 x100 of best.npz, decoded again": round(100 * again, 2),
            "checkpoints": str(ctx.run_dir)}


def step_5_evaluate(ctx):
    """Caption the test photos with beam search (beam 3) and score them, next to a human.

    Each test photo has five human captions. The first is set aside as "a
    human's caption"; the model's caption and that human's are both scored
    against the other FOUR (corpus BLEU-1..4 and CIDEr-D, lesson 12), so the
    two rows are comparable. Words seen fewer than 5 times in training are
    all one word, <UNK>, for the model. Together they are one of the most
    common "words" of its training captions (the share is printed), so a
    briefly trained model says "<UNK>" where a rarer word belongs, and BLEU
    counts that as a miss. How varied are the captions? Count the distinct
    ones.
    """
    test = ctx.data13["test"]
    captions, ctx.decoded = generate_captions(ctx.model, ctx.encoder, test, ctx.vocab, beam=3, max_length=20)
    four = [refs[1:] for refs in test.references]
    human = [refs[0] for refs in test.references]
    ctx.captions = captions
    ctx.check(all(len(c) > 0 for c in captions), "every photo gets a caption")
    for i in range(1, min(4, len(captions))):           # photo 0 comes in step 7
        print(f"test photo {i}: model: {' '.join(captions[i])}\n              human: {' '.join(human[i])}")
    with_unk = sum(UNK in caption for caption in captions)
    train_words = [word for tokens in ctx.splits["train"].all_tokens() for word in tokens]
    unk_share = sum(word not in ctx.vocab for word in train_words) / max(len(train_words), 1)
    counts = Counter(word if word in ctx.vocab else UNK for word in train_words)
    unk_rank = [word for word, _ in counts.most_common()].index(UNK) + 1 if UNK in counts else None
    return {"model BLEU-1..4 x100 (4 references)": numpy.round(100 * numpy.array(bleu(four, captions)), 1),
            "human BLEU-1..4 x100 (the same 4)": numpy.round(100 * numpy.array(bleu(four, human)), 1),
            "model CIDEr-D x100": round(100 * cider_d(four, captions), 1),
            "human CIDEr-D x100": round(100 * cider_d(four, human), 1),
            "distinct captions": f"{len(set(map(tuple, captions)))} for {len(captions)} photos",
            "captions with <UNK>": f"{with_unk} of {len(captions)}",
            "training words that are <UNK>": f"{100 * unk_share:.1f} % (rank {unk_rank} among its words)"}


def step_6_decoding_choices(ctx):
    """Greedy, beam search, and beam search with length normalisation on the same photos.

    Lesson 10 on real photos: greedy takes the most probable word at each
    step; beam 3 keeps three partial captions; length_alpha ranks finished
    captions by log-probability / length**alpha, so longer ones are not
    punished for their extra words. Scored against all five captions.
    """
    test = ctx.data13["test"]
    rows = {}
    for name, beam, alpha in [("greedy", 1, 0.0), ("beam 3", 3, 0.0), ("beam 3, alpha 1", 3, 1.0)]:
        captions = ctx.captions if name == "beam 3" else generate_captions(      # step 5 decoded beam 3
            ctx.model, ctx.encoder, test, ctx.vocab, beam=beam, length_alpha=alpha)[0]
        rows[name] = {"BLEU-4 x100": round(100 * bleu(test.references, captions)[3], 1),
                      "CIDEr-D x100": round(100 * cider_d(test.references, captions), 1),
                      "mean words": round(float(numpy.mean([len(c) for c in captions])), 1)}
    ctx.check(rows["beam 3, alpha 1"]["mean words"] >= rows["beam 3"]["mean words"],
              "length normalisation does not make captions shorter")
    return rows


def step_7_a_test_photo(ctx):
    """One test photo: its caption, the human ones, where the model looked; the training curves.

    The PNG shows the photo and, for each generated word, the attention over
    the 7 x 7 grid upsampled onto it (Xu et al. 2015, figure style). The
    Trainer drew curves.png: training loss and dev BLEU-4 per epoch.
    """
    split = ctx.splits["test"]
    index = 0
    words = ctx.captions[index]
    picture = (load_image(split.image_paths[index], size=224) * 255).round().astype(numpy.uint8)
    path = save_attention_png(picture, words, ctx.decoded.attention[index],
                              ctx.output_path("lesson13_attention.png"))
    curves = ctx.run_dir / "curves.png"
    ctx.check(curves.read_bytes()[:4] == b"\x89PNG", "the Trainer drew its curves")
    return {"photo": split.image_paths[index], "model": " ".join(words),
            "humans": "\n".join(split.captions[index]), "attention picture": str(path),
            "training curves": str(curves)}


if __name__ == "__main__":  # python lessons/lesson_13_flickr8k.py [--no-pause] [--quick] [--data DIR]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
