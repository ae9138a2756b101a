"""`python -m captioning align train|evaluate|search|annotate`: image-sentence alignment
(Karpathy & Fei-Fei 2015). The logic is in captioning.alignment."""
import json
import math
import os
import time

from nn.persist import atomic_write

from ..cli import UsageError, check_output_file, check_outputs

HELP = "image-sentence retrieval and word-region alignment (Karpathy & Fei-Fei 2015)"
DESCRIPTION = """\
Deep Visual-Semantic Alignments: image regions (the cells of the CNN's feature
grid and the whole image) and the words of a sentence (a bidirectional RNN)
are mapped into one space; an image and a sentence score
S = 10 x the mean over the words of the best region's cosine (on the shapes
set: the sum; --cosine 0 --no-average: the paper's sum of dot products),
trained with the bidirectional max-margin ranking loss (margin 1). On the
shapes set the score adds 3 x 10 x the cosine of the whole image and the
whole sentence (--global-weight 3: the fragment score cannot count) and a
learned vector per grid cell to its region vector (--positions).

  train      train on the synthetic shapes set (default) or on cached Flickr8k features (--data)
  evaluate   image annotation and image search Recall@1/5/10 and median rank on a split
  search     the images of a split that best match a sentence
  annotate   a picture: each region's best words, and each word's best region

examples:
  python -m captioning align train                               # shapes, about 4 minutes
  python -m captioning align train --data ../shared/flickr8k --features CACHE --max-minutes 30
  python -m captioning align evaluate --checkpoint outputs/align_shapes/best.npz --split test
  python -m captioning align search "a dog jumps into the water" --data ../shared/flickr8k --top 5
  python -m captioning align annotate photo.jpg --sentence "a dog runs" --png out.png   # the shipped aligner
"""


def _common(p, checkpoint=True):
    from argparse import SUPPRESS
    p.add_argument("--backend", choices=["numpy", "cupy"], default=SUPPRESS,
                   help="array backend (also accepted before the subcommand)")
    if checkpoint:
        p.add_argument("--checkpoint", default=None,
                       help="an aligner best.npz written by `align train` (default: the shipped "
                            "Flickr8k aligner, captioning/pretrained/aligner_flickr8k.npz)")
    p.add_argument("--data", default=None, help="Flickr8k folder (default: the checkpoint's data / shapes)")
    p.add_argument("--features", default=None, help="EfficientNet-Lite0 feature cache of the Flickr8k folder")


def add_arguments(parser):
    sub = parser.add_subparsers(dest="align_command", metavar="SUBCOMMAND", required=True)
    t = sub.add_parser("train", help="train an aligner")
    _common(t, checkpoint=False)
    for name, kind, text in (("epochs", int, "epochs (default 8 shapes / 15 Flickr8k)"),
                             ("batch-size", int, "image-sentence pairs per step (default 32 shapes / 100 Flickr8k)"),
                             ("lr", float, "Adam learning rate (default 5e-3 shapes / 1e-3 Flickr8k)"),
                             ("hidden", int, "multimodal size h (default 128 / 256)"),
                             ("embed", int, "word-vector size (default 64 / 200)"),
                             ("min-count", int, "vocabulary: words seen this often in train (default 1 / 5)"),
                             ("val-images", int, "dev recall on the first N dev images (default all / 500)"),
                             ("patience", int, "early stopping: epochs without better dev recall (default 3)"),
                             ("max-minutes", float, "stop after this many minutes of training (default 8 "
                                                    "shapes, none Flickr8k; 0 = no limit)"),
                             ("dropout", float, "drop probability of region features while training"),
                             ("word-dropout", float, "drop probability of word-vector entries while training"),
                             ("weight-decay", float, "L2 weight decay of the weight matrices"),
                             ("lr-decay", float, "the learning rate is multiplied by this after each epoch (default 0.6 shapes / 1)"),
                             ("cosine", float, "0: dot products; c > 0: c times the cosine of region and word (default 10)"),
                             ("global-weight", float, "g > 0 adds g x (whole image . whole sentence) to the "
                                                      "fragment score, so that the score can count (default 3 shapes / 0: off)"),
                             ("hard-warmup", int, "with --hard-negatives: the sum of hinges for the first N epochs "
                                                  "(VSE++ needed such a warm-up sometimes; default 0)"),
                             ("max-images", int, "only the first N images of each split (quick runs)")):
        t.add_argument("--" + name, type=kind, default=None, help=text)
    from argparse import BooleanOptionalAction
    t.add_argument("--clip", action=BooleanOptionalAction, default=None,
                   help="a word's best match counts as max(0, v . s) (the paper's full objective)")
    t.add_argument("--average", action=BooleanOptionalAction, default=None,
                   help="sentence score: mean over its words (default Flickr8k; --no-average: the sum, default shapes)")
    t.add_argument("--hard-negatives", action=BooleanOptionalAction, default=None,
                   help="ranking loss: each true pair pays only for its hardest wrong sentence and "
                        "hardest wrong image in the batch (the max of hinges of VSE++, Faghri et al. "
                        "2018) instead of the sum over all wrong pairs (default off)")
    t.add_argument("--positions", action=BooleanOptionalAction, default=None,
                   help="add a free learned vector per grid cell to its region vector, for words like "
                        "'left' (default on shapes / off)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", default=None, help="output folder (default outputs/align_<data>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.npz")
    e = sub.add_parser("evaluate", help="Recall@K and median rank, both directions")
    _common(e)
    e.add_argument("--split", choices=["train", "dev", "test"], default="test", help="default test")
    e.add_argument("--max-images", type=int, default=None, help="only the first N images")
    e.add_argument("--json", default=None, metavar="OUT", help="write the metrics to this JSON file")
    s = sub.add_parser("search", help="the images that best match a sentence")
    s.add_argument("query", help="a sentence, e.g. \"a dog jumps into the water\"")
    _common(s)
    s.add_argument("--split", choices=["train", "dev", "test"], default="test", help="default test")
    s.add_argument("--top", type=int, default=5, help="how many images (default 5)")
    a = sub.add_parser("annotate", help="a PNG of each region's best words and each word's best region")
    a.add_argument("image", help="an image file (a photo for a Flickr8k aligner, a shapes PNG for a shapes one)")
    _common(a)
    a.add_argument("--sentence", default=None,
                   help="the sentence to align (default: each region's best single words only)")
    a.add_argument("--png", required=True, help="the PNG to write")


def run(args):
    return {"train": _train, "evaluate": _evaluate, "search": _search, "annotate": _annotate}[args.align_command](args)


def _log(line):
    print(line, flush=True)


INTEGER_OPTIONS = ("epochs", "batch_size", "hidden", "embed", "min_count", "val_images", "patience", "max_images")


def _train_options(args):
    from ..alignment.app import DEFAULTS
    name = "shapes" if args.data is None else "flickr8k"
    if args.data is None and args.features:
        raise UsageError("--features needs --data: the built-in shapes set has no feature cache")
    options = dict(DEFAULTS[name])
    for key in list(options) + ["max_images"]:
        value = getattr(args, key)
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
        if key == "lr" and value <= 0:
            raise UsageError(f"--lr must be > 0, got {value}")
        if key == "max_minutes" and value < 0:
            raise UsageError(f"--max-minutes must be >= 0, got {value}")
        if key in ("dropout", "word_dropout") and not 0 <= value < 1:
            raise UsageError(f"{flag} must be in [0, 1), got {value}")
        if key in ("weight_decay", "cosine", "global_weight") and value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
        if key == "lr_decay" and not 0 < value <= 1:
            raise UsageError(f"--lr-decay must be in (0, 1], got {value}")
        if key == "hard_warmup" and value < 0:
            raise UsageError(f"--hard-warmup must be >= 0, got {value}")
        if key in INTEGER_OPTIONS and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
        options[key] = value
    if options["max_minutes"] == 0:
        options["max_minutes"] = None
    return name, options


def _loss_name(o):
    if not o["hard_negatives"]:
        return "sum of hinges"
    warmup = f" after {o['hard_warmup']} epochs of the sum" if o["hard_warmup"] else ""
    return "hardest negatives (VSE++)" + warmup


def _train(args):
    from ..alignment import app
    from ..alignment.training import AlignConfig, AlignTrainer
    from ..progress import format_duration

    name, o = _train_options(args)
    out = args.out or os.path.join("outputs", f"align_{name}")
    if os.path.isfile(out):
        raise UsageError(f"--out {out} is a file; give a folder")
    check_outputs([("--out", out)], [("the feature cache", args.features)], data_folder=args.data)
    if args.resume and not os.path.isfile(os.path.join(out, "last.npz")):
        raise UsageError(f"--resume: no {os.path.join(out, 'last.npz')} to continue from")
    data, encoder = app.load_training_data(args.data, args.features, seed=args.seed, max_images=args.max_images)
    vocabulary = app.vocabulary_from(data, o["min_count"])
    model = app.build_model(data, encoder, vocabulary, o["hidden"], o["embed"], seed=args.seed,
                            **{k: o[k] for k in app.MODEL_OPTIONS})
    config = AlignConfig(epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"], patience=o["patience"],
                         seed=args.seed, max_minutes=o["max_minutes"], val_images=o["val_images"],
                         weight_decay=o["weight_decay"], lr_decay=o["lr_decay"], hard_warmup=o["hard_warmup"])
    _log(f"data: {data.describe()}; vocabulary {len(vocabulary)} words")
    _log(f"model: h {o['hidden']}, word vectors {o['embed']}, dropout {o['dropout']:g} regions / "
         f"{o['word_dropout']:g} words, score: {'mean' if o['average'] else 'sum'} over words of "
         f"{'max(0, best)' if o['clip'] else 'best'} {'cosine x %g' % o['cosine'] if o['cosine'] else 'dot product'}"
         f"{' + %g x global' % o['global_weight'] if o['global_weight'] else ''}"
         f"{', cell positions' if o['positions'] else ''}; "
         f"weight decay {o['weight_decay']:g}, lr {o['lr']:g} x {o['lr_decay']:g} per epoch; loss: "
         f"{_loss_name(o)}")
    trainer = AlignTrainer(model, encoder, vocabulary, data, config, out, log=_log)
    if args.resume:
        trainer.resume(os.path.join(out, "last.npz"))
        _log(f"resumed at epoch {trainer.progress.epoch + 1}, batch {trainer.progress.batch}")
    progress = trainer.fit()
    _log(f"trained {format_duration(progress.elapsed)}, {progress.step} steps"
         + {"time": " (time limit)", "early": " (early stop)"}.get(progress.stopped, "")
         + f"; best dev epoch {progress.best_epoch}: {os.path.join(out, 'best.npz')}")
    _report(app.open_checkpoint(os.path.join(out, "best.npz")), "test", None, None, None)
    return 0


def _report(ckpt, split, data_arg, features_arg, max_images):
    """Evaluate a checkpoint on a split and print the table (and, on shapes, where the
    colour and shape words point). Returns the metrics."""
    from ..alignment import app
    started = time.time()
    split_data = app.split_of(ckpt, split, data_arg, features_arg, max_images)
    metrics = app.evaluate_split(ckpt, split_data)
    flickr = ckpt.data.get("name") == "flickr8k"
    _log(f"{split}: {len(split_data)} images, {sum(len(r) for r in split_data.references)} sentences "
         f"({time.time() - started:.0f} s)")
    _log(app.format_table(metrics, paper=app.PAPER_FLICKR8K if flickr and split == "test" else None))
    if ckpt.data.get("name") == "shapes" and data_arg is None:
        from ..alignment.regions import shapes_word_alignment
        result = shapes_word_alignment(ckpt.model, ckpt.encoder, app.shapes_split(ckpt.data, split, max_images),
                                       ckpt.vocabulary)
        _log(f"colour and shape words whose best region lies on their shape: {100 * result['on_shape']:.1f}% "
             f"of {result['words']} (whole-image fragment: {100 * result['whole_image']:.1f}%)")
    return metrics


def _evaluate(args):
    from ..alignment import app
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {args.max_images}")
    if args.json:
        check_output_file(args.json, "--json")
        check_outputs([("--json", args.json)], [("the checkpoint", args.checkpoint)], data_folder=args.data)
    metrics = _report(app.open_checkpoint(args.checkpoint), args.split, args.data, args.features,
                      args.max_images)
    if args.json:
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=1)
        _log(f"wrote {args.json}")
    return 0


def _search(args):
    from ..alignment import app
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    ckpt = app.open_checkpoint(args.checkpoint)
    split_data = app.split_of(ckpt, args.split, args.data, args.features)
    for rank, hit in enumerate(app.search(ckpt, split_data, args.query, args.top), 1):
        _log(f"{rank}. {hit.image_id}  score {hit.score:.2f}  ({hit.caption})")
    return 0


def _annotate(args):
    from ..alignment import app
    from ..alignment.figure import annotate_image
    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"image not found: {args.image}")
    check_output_file(args.png, "--png")
    check_outputs([("--png", args.png)], [("the input image", args.image), ("the checkpoint", args.checkpoint)])
    ckpt = app.open_checkpoint(args.checkpoint)
    lines = annotate_image(ckpt, args.image, args.sentence, args.png)
    for line in lines:
        _log(line)
    _log(f"wrote {args.png}")
    return 0
