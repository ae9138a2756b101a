"""`python -m captioning features`: encode a data set's images once into a feature cache."""
import sys

from ..cli import UsageError, check_outputs

HELP = "encode every image with EfficientNet-Lite0 into an on-disk feature cache (resumable)"
DESCRIPTION = """\
Run the pretrained EfficientNet-Lite0 over the photos of a data set (Flickr8k,
or Flickr30k / COCO through Karpathy's split files: see --data) and store,
per image, the 7x7x1280 feature grid (for attention) and its 1280-d mean (for
Show and Tell) in a memory-mapped cache: OUT.grid.npy, OUT.pooled.npy and the
index OUT.json. Batches are streamed, so memory stays bounded. Interrupt it
any time: the same command resumes where it stopped. The cache's size on disk
is printed before it is made (COCO's 123287 photos: 15.8 GB in float16),
and a disk without room for it is refused before any file is made.

The default OUT is ./outputs/features/<name>_efficientnet_lite0[_SPLIT]
(<name>: flickr8k, flickr30k or coco; + _maxN with --max-images N, + _firstN
with --limit N); an --out inside the data folder, which is only read, is
refused.

--max-images N takes the first N photos of EACH split, as `train
--max-images N` does, and `train --max-images N` then finds this cache by
itself: a quick real run in minutes end to end.

--fine-tune-blocks K stores instead the activations entering the last K
blocks (stem and blocks 0..15-K run once per photo), for `train
--fine-tune-blocks K`, which trains those K blocks and the head from them.
Default OUT: <name>_efficientnet_lite0_ft<K>[...]. For K = 1 to 4 that is a
192x7x7 map per photo: 152 MB for Flickr8k in float16, about as long to make
as the full features.

examples:
  python -m captioning features --data ~/data/flickr8k
  python -m captioning features --data ~/data/coco    # dataset_coco.json + train2014/ val2014/
  python -m captioning features --max-images 200 && python -m captioning train --data ../shared/flickr8k --max-images 200
  python -m captioning features --split test --batch-size 16
  python -m captioning features --limit 200 --out /tmp/f200      # a quick timing run
  python -m captioning features --fine-tune-blocks 1    # then: train --fine-tune-blocks 1
  python -m captioning features --backend cupy --batch-size 128
"""


def add_arguments(parser):
    parser.add_argument("--data", default=None,
                        help="the data folder: Flickr8k (any layout), or one with dataset_flickr30k.json "
                             "or dataset_coco.json and its images (default: $FLICKR8K_DIR, else "
                             "../shared/flickr8k)")
    parser.add_argument("--out", default=None, help="cache name (default: outputs/features/<name>_...)")
    parser.add_argument("--split", choices=["all", "train", "dev", "test"], default="all",
                        help="which images: all (train+dev+test, the default) or one split")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default 8 on numpy, 128 on cupy)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="only the first N photos of each split, as `train --max-images N` reads them")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N photos in all (a timing run; train cannot use it)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage dtype of the cache (default float16: half the disk)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing cache made for other images or another encoder")
    parser.add_argument("--skip-bad", action="store_true",
                        help="store zeros for images that cannot be decoded instead of stopping")
    parser.add_argument("--fine-tune-blocks", type=int, default=0, metavar="K",
                        help="cache the activations entering the last K blocks (1..16), for train "
                             "--fine-tune-blocks K, instead of the features (default 0: the features)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from ..data.datasets import folder_dataset
    from ..data.images import ImageDecodeError
    from ..features import FeatureCacheError, cache_paths

    from nn import backend

    if args.batch_size is None:
        args.batch_size = 128 if backend.name() == "cupy" else 8
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for option, value in (("--limit", args.limit), ("--max-images", args.max_images)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    if not 0 <= args.fine_tune_blocks <= 16:
        raise UsageError(f"--fine-tune-blocks must be from 0 to 16 (EfficientNet-Lite0 has 16 blocks), "
                         f"got {args.fine_tune_blocks}")
    if args.limit and args.max_images:
        raise UsageError("give --max-images (the first N of each split) or --limit (the first N in all), not both")
    dataset = folder_dataset(args.data)
    root, ids, paths, skipped = dataset.image_list(args.data, args.split, args.limit, per_split=args.max_images)
    for line in skipped:
        print(f"note: {line}", file=sys.stderr)
    if not ids:
        raise UsageError(f"no photos to encode: none of the photos that the caption and split files of "
                         f"{root} list for '{args.split}' is in its image folder")
    k = args.fine_tune_blocks
    out = args.out or dataset.default_features_path(args.split, max_images=args.max_images, limit=args.limit,
                                                    fine_tune_blocks=k)
    check_outputs([("--out", str(path)) for path in cache_paths(out).values()], data_folder=root)
    rebuild = dataset.rebuild_command(root, args.split, out, limit=args.limit, max_images=args.max_images,
                                      fine_tune_blocks=k)
    what = f" up to block {16 - k} (the activations entering it)" if k else ""
    print(f"encoding {len(ids)} images of {dataset.title}{what} from {root} ({args.split}) into {out}", file=sys.stderr)
    try:
        cache = dataset.encode(root, ids, paths, out, rebuild, split=args.split,
                               batch_size=args.batch_size, progress=not args.no_progress, dtype=args.dtype,
                               overwrite=args.overwrite, skip_bad=args.skip_bad,
                               announce=lambda line: print(line, file=sys.stderr), fine_tune_blocks=k)
    except FeatureCacheError as exc:
        raise UsageError(str(exc)) from None
    except ImageDecodeError as exc:
        raise UsageError(f"{exc}\nThe finished images are kept: rerun with --skip-bad to store zeros "
                         f"for undecodable images (training then leaves them out), i.e. {rebuild} --skip-bad"
                         ) from None
    except KeyboardInterrupt:
        print(f"\nstopped; the finished images are kept. Resume with: {rebuild}", file=sys.stderr)
        raise
    skipped = cache.index.get("skipped", [])
    print(f"done: {len(cache)} images, grid {cache.grid.shape}, pooled {cache.pooled.shape}, "
          f"{cache.grid.dtype}; index {cache.path}" + (f"; {len(skipped)} undecodable images stored as zeros"
                                                      if skipped else ""))
    return 0
