"""How long one Flickr8k-sized training epoch takes, and where the time goes.

    python benchmarks/epoch_time.py [--backend numpy|cupy] [--features-on-device] [--json OUT]
                                    [--images 6000] [--dev-images 1000] [--steps K]

Issue 17's target is "a Flickr8k training epoch (469 steps of batch 64 plus
dev validation) <= 15 s" on the GPU. This runs exactly such an epoch of the
real `Trainer` (the attention model with the Flickr8k training defaults of
`python -m captioning train`) on data of Flickr8k's size that needs no
download: 6000 training images of random (49, 1280) float16 feature grids,
as the feature cache stores them, five random captions of 8 to 16 words each
(30,000 pairs: 469 steps of 64), a vocabulary of 2,500 words, and 1,000 dev
images. Then it says where the epoch went, each part timed with the device
synchronised before and after:

- gather:   the batch's features read from the cache (host, or the GPU copy of --features-on-device);
- model:    forward + backward of the decoder (`model.forward_backward`);
- update:   the rest of a step (gradient clipping, Adam, batching, bookkeeping);
- validate: greedy captions of the dev images and their BLEU;
- dev loss: the teacher-forced loss of the dev captions;
- save:     best.npz and last.npz;
- curves:   curves.png.

The captions are random words, so how long the dev captions the model writes
are (and with them the validation time) depends on what it learned from them:
the report gives their mean length (a trained Flickr8k model writes about 10
words).
`--steps K` stops after K steps (then validates once, as --max-minutes
would), for a quick look or a test.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nn import backend  # noqa: E402

PARTS = ("gather", "model", "update", "validate", "dev_loss", "save", "curves")


def random_split(name, num_images, grid, feature_dim, vocab_words, rng):
    """A CaptionSplit of random float16 feature grids and five random captions per image."""
    from captioning.data.splits import CaptionSplit

    tokens = [[list(rng.choice(vocab_words, size=rng.integers(8, 17))) for _ in range(5)]
              for _ in range(num_images)]
    # 256 distinct grids repeated: the values do not matter for the timing, drawing 6000 would take seconds
    distinct = rng.standard_normal((min(num_images, 256), grid, feature_dim), dtype=numpy.float32)
    features = numpy.resize(distinct.astype(numpy.float16), (num_images, grid, feature_dim))
    return CaptionSplit(name=name, image_ids=[f"{name}_{i}.jpg" for i in range(num_images)], image_paths=None,
                        captions=[[" ".join(t) for t in per_image] for per_image in tokens], tokens=tokens,
                        features=features)


def _timed(totals, part, function, running=[]):
    """function, wrapped so that its calls' wall time (device synchronised) adds to totals[part];
    a call inside another timed call (the dev loss's forward pass) counts for the outer one only."""
    def wrapper(*args, **kwargs):
        if running:
            return function(*args, **kwargs)
        running.append(part)
        try:
            backend.synchronize()
            start = time.perf_counter()
            result = function(*args, **kwargs)
            backend.synchronize()
            totals[part] += time.perf_counter() - start
        finally:
            running.pop()
        return result
    return wrapper


def make_trainer(args, out_dir):
    from captioning.data.datasets import FolderDataset
    from captioning.data.text import Vocabulary
    from captioning.encoders import FrozenFeatures
    from captioning.models import build
    from captioning.training import TrainConfig, Trainer

    rng = numpy.random.default_rng(0)
    words = numpy.array([f"w{i}" for i in range(args.vocab - 4)])      # + 4 special tokens
    train = random_split("train", args.images, args.grid, args.feature_dim, words, rng)
    dev = random_split("dev", args.dev_images, args.grid, args.feature_dim, words, rng)
    vocabulary = Vocabulary(list(words))
    d = FolderDataset.train_defaults      # the Flickr8k defaults of `train`
    config = {"model": "attention", "vocab_size": len(vocabulary), "feature_dim": args.feature_dim,
              "wordvec_dim": d["embed"], "hidden_dim": d["hidden"], "attention_dim": d["attention_dim"],
              "dropout": d["dropout"], "doubly_stochastic": d["alpha_reg"],
              "null_id": vocabulary.null_id, "start_id": vocabulary.start_id, "end_id": vocabulary.end_id}
    model = build(config, seed=0)
    train_config = TrainConfig(epochs=1, batch_size=d["batch_size"], lr=d["lr"], beam=d["beam"],
                               features_on_device=args.features_on_device, log_every=1e9)
    return Trainer(model, vocabulary, FrozenFeatures({"name": "efficientnet_lite0"}), train, dev,
                   train_config, out_dir, log=lambda *a, **k: None)


def time_epoch(args):
    """Run one epoch (or --steps steps and a validation); return the timings as a dict."""
    totals = dict.fromkeys(PARTS, 0.0)
    with tempfile.TemporaryDirectory(prefix="epoch_time_") as out_dir:
        trainer = make_trainer(args, out_dir)
        trainer.train_inputs = _timed(totals, "gather", trainer.train_inputs)
        trainer.model.forward_backward = _timed(totals, "model", trainer.model.forward_backward)
        lengths = []

        def validate():
            bleus, captions = trainer.__class__.validate(trainer)
            lengths.extend(len(c) for c in captions)
            return bleus, captions
        trainer.validate = _timed(totals, "validate", validate)
        trainer.dev_loss = _timed(totals, "dev_loss", trainer.dev_loss)
        trainer.save = _timed(totals, "save", trainer.save)
        trainer._draw_curves = _timed(totals, "curves", trainer._draw_curves)
        steps_total = trainer.steps_per_epoch
        trainer.model.forward_backward(*_warm_up_batch(trainer))      # compile kernels, allocate the pool
        totals.update(dict.fromkeys(PARTS, 0.0))
        backend.synchronize()
        start = time.perf_counter()
        trainer.fit(stop_after_steps=args.steps)
        if args.steps is not None and args.steps < steps_total:
            trainer._end_of_epoch(partial=True)                         # validate as a cut-short run does
        backend.synchronize()
        wall = time.perf_counter() - start
    steps = trainer.progress.step
    step_parts = totals["gather"] + totals["model"]
    loop = wall - sum(totals[p] for p in PARTS if p not in ("gather", "model", "update"))
    totals["update"] = max(loop - step_parts, 0.0)
    return {"backend": backend.name(), "features_on_device": args.features_on_device, "steps": steps,
            "steps_per_epoch": steps_total, "images": args.images, "dev_images": args.dev_images,
            "wall_s": wall, "parts_s": totals, "dev_caption_words": float(numpy.mean(lengths)) if lengths else None,
            "step_ms": 1e3 * (totals["gather"] + totals["model"] + totals["update"]) / max(steps, 1),
            "epoch_estimate_s": (totals["gather"] + totals["model"] + totals["update"]) / max(steps, 1) * steps_total
            + totals["validate"] + totals["dev_loss"] + totals["save"] + totals["curves"]}


def _warm_up_batch(trainer):
    from captioning.data.batches import take_batch

    images, captions = take_batch(trainer.table, trainer.epoch_batches(0)[0])
    features = trainer.encoder.encode(trainer.train_data.inputs[images], trainer.model.feature_kind,
                                      trainer.model.dtype)
    return features, backend.asarray(captions)


def report(result):
    lines = [f"backend {result['backend']}{' --features-on-device' if result['features_on_device'] else ''}: "
             f"{result['steps']} of {result['steps_per_epoch']} steps, {result['images']} train / "
             f"{result['dev_images']} dev images: {result['wall_s']:.1f} s wall",
             f"  one epoch (estimated from these steps when --steps cut it short): "
             f"{result['epoch_estimate_s']:.1f} s; a step {result['step_ms']:.1f} ms"]
    if result["dev_caption_words"] is not None:
        lines.append(f"  dev captions written: {result['dev_caption_words']:.1f} words on average")
    for part in PARTS:
        seconds = result["parts_s"][part]
        per_step = f"  ({1e3 * seconds / max(result['steps'], 1):.2f} ms/step)" if part in ("gather", "model", "update") else ""
        lines.append(f"  {part:9s}{seconds:8.2f} s{per_step}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--features-on-device", action="store_true",
                        help="copy the training features to the GPU once (train --features-on-device)")
    parser.add_argument("--images", type=int, default=6000, help="training images (default 6000, as Flickr8k)")
    parser.add_argument("--dev-images", type=int, default=1000, help="dev images (default 1000)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: the epoch)")
    parser.add_argument("--vocab", type=int, default=2500, help="vocabulary size (default 2500)")
    parser.add_argument("--grid", type=int, default=49, help="feature grid cells (default 49 = 7x7)")
    parser.add_argument("--feature-dim", type=int, default=1280, help="feature size (default 1280)")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    args = parser.parse_args(argv)
    backend.use(args.backend)
    result = time_epoch(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
