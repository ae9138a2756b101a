"""`python -m captioning evaluate`: caption a split with a checkpoint and score it (BLEU, CIDEr-D)."""
import json
import os
import sys
import time

from nn.persist import atomic_write, remove_stale_temporaries

from ..cli import (UsageError, add_block_bad_endings_argument, add_no_repeat_ngram_argument, check_decoding_options,
                   check_output_file, check_outputs)

HELP = "caption a data split with a checkpoint and print BLEU-1..4 and CIDEr-D"
DESCRIPTION = """\
Caption every image of a split (greedy or beam search, all images batched)
and score the captions against ALL reference captions of each image (raw
words, out-of-vocabulary ones included) with corpus BLEU-1..4 (as
coco-caption / nltk compute it) and CIDEr-D, both printed x100. Every
generated caption is written to a JSON file with the settings and scores.

Without --checkpoint the captioner shipped with the package is used. Without
--data, the data the checkpoint was trained on is used (the synthetic shapes
set is regenerated from its seed; Flickr8k, Flickr30k or COCO from the
recorded folder and feature cache, or for the shipped model $FLICKR8K_DIR or
../shared/flickr8k).
When no feature cache is given or found, the photos of the evaluated split
are encoded first into outputs/features/ (once; about a minute for the 1000
test photos on a 2-core CPU; interrupt and rerun to resume).
A checkpoint of `train --fine-tune-blocks K` reads the cache of the
activations entering its last K blocks (made the same way when missing) and
runs its fine-tuned top on them.

examples:
  python -m captioning evaluate --data ../shared/flickr8k --split test   # the shipped captioner
  python -m captioning evaluate --checkpoint outputs/shapes_attention/best.npz
  python -m captioning evaluate --checkpoint outputs/flickr8k_attention/best.npz \\
      --data ../shared/flickr8k --split test --beam 3
"""


def add_arguments(parser):
    parser.add_argument("--checkpoint", default=None,
                        help="a best.npz / last.npz written by train (default: the shipped Flickr8k captioner)")
    parser.add_argument("--data", default=None, help="a photo folder: Flickr8k, Flickr30k or COCO (default: the checkpoint's data)")
    parser.add_argument("--features", default=None,
                        help="feature cache of a photo-folder checkpoint (default: the checkpoint's own; "
                             "with --data naming another folder, outputs/features/<name>_efficientnet_lite0, "
                             "<name> flickr8k, flickr30k or coco)")
    parser.add_argument("--split", choices=["train", "dev", "test"], default="test", help="default test")
    parser.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    parser.add_argument("--max-length", type=int, default=20, help="decoding steps (default 20)")
    parser.add_argument("--length-alpha", type=float, default=0.0,
                        help="length normalisation: score / length**alpha (default 0)")
    add_no_repeat_ngram_argument(parser)
    add_block_bad_endings_argument(parser)
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument("--batch-size", type=int, default=100, help="images decoded at once (default 100)")
    parser.add_argument("--out", default=None,
                        help="JSON file for the captions (default next to the checkpoint; outputs/ for the "
                             "shipped model)")
    parser.add_argument("--html", default=None, metavar="DIR",
                        help="also write a results page DIR/index.html: every image with its caption, its "
                             "references, per-image BLEU-4 and CIDEr-D (sortable), and for attention models "
                             "where the model looked for each word")


def _check_options(args):
    check_decoding_options(args.beam, args.max_length, args.length_alpha, no_repeat_ngram=args.no_repeat_ngram)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {args.max_images}")


def _load_data(args, ckpt):
    """The split to caption: the checkpoint's data (or --data), checked against what the model expects."""
    from ..data.datasets import DatasetError, MissingFeatureCache, dataset_from_spec
    from ..encoders import fine_tune_blocks

    def load(features):
        return dataset_from_spec(ckpt.training.get("data"), args.data, features, kind=ckpt.model.feature_kind,
                                 max_images=args.max_images, splits=(args.split,),
                                 fine_tune_blocks=fine_tune_blocks(ckpt.encoder))
    try:
        try:
            data = load(args.features)
        except MissingFeatureCache:
            if args.features is not None:
                raise
            data = load(_split_cache(args, ckpt))
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    if data.feature_dim is not None and data.feature_dim != ckpt.model.config["feature_dim"]:
        raise UsageError(f"{args.checkpoint}: the model expects {ckpt.model.config['feature_dim']}-d features, "
                         f"the cache holds {data.feature_dim}-d ones (another encoder?)")
    # name, version and input preprocessing: features of another encoder, or of the same one
    # fed differently resized or normalised images, are other numbers for the same shapes.
    differs = [key for key in ("name", "version", "input")
               if key in ckpt.encoder and data.encoder_spec.get(key) != ckpt.encoder.get(key)]
    if differs:
        raise UsageError(f"{args.checkpoint} was trained on features that differ from this cache's in "
                         f"{', '.join(differs)}: checkpoint {[ckpt.encoder.get(k) for k in differs]}, "
                         f"cache {[data.encoder_spec.get(k) for k in differs]}; use the feature cache "
                         "it was trained with (--features) or train on this one")
    return data


def _split_cache(args, ckpt):
    """No feature cache was given and there is none at the default place: the default cache of the
    evaluated split, made first if needed by encoding the photos of that split only (the 1000 test photos take about a minute on a 2-core CPU, once; resumable) into
    the default cache of that split, as `features --split SPLIT` would. Returns the cache name."""
    from ..data.datasets import DATASETS, FOLDER_DATASET, folder_dataset
    from ..encoders import fine_tune_blocks
    from ..features import cache_paths

    spec = ckpt.training.get("data") or {}
    dataset = folder_dataset(args.data) if args.data else DATASETS.get(spec.get("name"), DATASETS[FOLDER_DATASET])
    data_arg = args.data or (spec.get("root") if spec.get("name") == dataset.name else None)
    root, ids, paths, _ = dataset.image_list(data_arg, args.split, args.max_images)
    k = fine_tune_blocks(ckpt.encoder)
    out = (dataset.default_features_path(args.split, fine_tune_blocks=k)
           + (f"_first{args.max_images}" if args.max_images else ""))
    if cache_paths(out)["index"].is_file():      # made by an earlier evaluate (or features --split)
        return out
    check_outputs([("the feature cache", out)], data_folder=root)
    print(f"no feature cache given or found: encoding the {len(ids)} photos of the {args.split} split "
          f"into {out} (once; interrupt and rerun to resume)", file=sys.stderr)
    dataset.encode(root, ids, paths, out, dataset.rebuild_command(root, args.split, out, limit=args.max_images,
                                                                  fine_tune_blocks=k),
                   split=args.split, fine_tune_blocks=k)
    return out


def run(args):
    from .. import pretrained
    from ..checkpoint import load_checkpoint
    from ..encoders import make_encoder
    from ..generation import evaluate_captions, generate_captions
    from ..models import ConfigMismatchError

    _check_options(args)
    args.checkpoint = pretrained.checkpoint_or_shipped(args.checkpoint)
    folder = "outputs" if pretrained.is_shipped(args.checkpoint) else os.path.dirname(os.path.abspath(args.checkpoint))
    out = args.out or os.path.join(folder, f"captions_{args.split}_beam{args.beam}.json")
    out_option = "--out" if args.out else "the captions file (--out)"
    if not args.out:
        os.makedirs(folder, exist_ok=True)
    check_output_file(out, out_option)
    check_outputs([(out_option, out)], [("the checkpoint", args.checkpoint)])
    try:
        ckpt = load_checkpoint(args.checkpoint)
        encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)
    except ConfigMismatchError as exc:
        raise UsageError(str(exc)) from None
    check_decoding_options(args.beam, args.max_length, args.length_alpha, len(ckpt.vocabulary))
    data = _load_data(args, ckpt)
    check_outputs([(out_option, out)], data.files_read(), data.spec.get("root"))
    split = data.splits[args.split].head(args.max_images)
    if len(split) == 0:
        raise UsageError(f"the {args.split} split of {data.describe()} has no images to caption")

    if args.html:
        check_outputs([("--html", args.html)], data.files_read(), data.spec.get("root"))
    start = time.perf_counter()
    captions, result = generate_captions(ckpt.model, encoder, split, ckpt.vocabulary, beam=args.beam,
                                         max_length=args.max_length, length_alpha=args.length_alpha,
                                         batch_size=args.batch_size, no_repeat_ngram=args.no_repeat_ngram,
                                         block_bad_endings=args.block_bad_endings)
    seconds = time.perf_counter() - start
    scores = evaluate_captions(split.references, captions)
    settings = _report(args, data, split, captions, scores, seconds, out)
    if args.html:
        _write_page(args.html, ckpt, split, captions, result, settings, scores)
    return 0


def _write_page(folder, ckpt, split, captions, result, settings, scores):
    """The results page (captioning.results_page) of this evaluation."""
    from ..results_page import PageEntry, per_image_scores, write_results_page

    bleu4, cider = per_image_scores(split.references, captions)
    with_attention = ckpt.model.feature_kind == "grid" and result.attention is not None
    entries = [PageEntry(image_id=image_id, caption=words, references=refs,
                         image=split.image_paths[i] if split.image_paths else split.images[i],
                         bleu4=float(bleu4[i]), cider=float(cider[i]),
                         attention=result.attention[i][:max(1, len(words))] if with_attention else None)
               for i, (image_id, words, refs) in enumerate(zip(split.image_ids, captions, split.captions))]
    summary = {**{f"BLEU-{n}": 100 * v for n, v in enumerate(scores["bleu"], start=1)},
               "CIDEr-D": 100 * scores["cider"], "ROUGE-L": 100 * scores["rouge_l"]}
    page = write_results_page(folder, entries, title=f"{settings['data']} {settings['split']}: "
                              f"{os.path.basename(settings['checkpoint'])}", settings=settings, scores=summary)
    print(f"results page: {page}")


def _report(args, data, split, captions, scores, seconds, out):
    """Print the scores; write every caption with the settings and scores to `out` (JSON)."""
    settings = {"checkpoint": os.path.abspath(args.checkpoint), "data": data.name, "split": args.split,
                "images": len(split), "decoding": "greedy" if args.beam == 1 else "beam search",
                "beam": args.beam, "max_length": args.max_length, "length_alpha": args.length_alpha,
                "no_repeat_ngram": args.no_repeat_ngram, "block_bad_endings": args.block_bad_endings}
    print(f"{data.name} {args.split}: {len(split)} images, {settings['decoding']}"
          f"{'' if args.beam == 1 else f' (beam {args.beam})'}, max length {args.max_length}, "
          f"length alpha {args.length_alpha}"
          f"{f', no repeated {args.no_repeat_ngram}-grams' if args.no_repeat_ngram else ''}"
          f"{', no bad endings' if args.block_bad_endings else ''}; {seconds:.1f}s ({len(split) / max(seconds, 1e-9):.0f} images/s)")
    for n, value in enumerate(scores["bleu"], start=1):
        print(f"BLEU-{n}  {100 * value:6.2f}")
    print(f"CIDEr-D {100 * scores['cider']:6.2f}")
    print(f"ROUGE-L {100 * scores['rouge_l']:6.2f}")
    record = {"settings": settings,
              "scores": {**{f"BLEU-{n}": 100 * v for n, v in enumerate(scores["bleu"], start=1)},
                         "CIDEr-D": 100 * scores["cider"], "ROUGE-L": 100 * scores["rouge_l"]},
              "captions": [{"image_id": image_id, "caption": " ".join(words),
                            "references": [" ".join(r) for r in refs]}
                           for image_id, words, refs in zip(split.image_ids, captions, split.references)]}
    _write_json(out, record)
    print(f"captions: {out}")
    return settings


def _write_json(path, data):
    remove_stale_temporaries(path)      # left by a run killed while writing it
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
