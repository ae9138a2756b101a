"""`python -m captioning classify IMAGE...`: ImageNet classes from EfficientNet-Lite0."""
import json

from ..cli import UsageError

HELP = "classify photos into the 1000 ImageNet classes with the pretrained EfficientNet-Lite0"
DESCRIPTION = """\
Run the pretrained EfficientNet-Lite0 (in this project's own conv layers) on
each image and print its top ImageNet classes: class index, probability, name.

examples:
  python -m captioning classify photo.jpg
  python -m captioning classify a.jpg b.jpg --top 3 --json
  python -m captioning classify photo.jpg --backend cupy
"""


def add_arguments(parser):
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    parser.add_argument("--top", type=int, default=5, help="how many classes to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")


def run(args):
    from ..encoders.efficientnet import classify_files

    if not 1 <= args.top <= 1000:
        raise UsageError(f"--top must be between 1 and 1000, got {args.top}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    from ..data.images import ImageDecodeError

    try:
        results = classify_files(args.images, top=args.top, batch_size=args.batch_size)
    except ImageDecodeError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for item in results:
        print(item["image"])
        for rank, guess in enumerate(item["top"], 1):
            print(f"  {rank}. {guess['class']:4d}  {guess['probability']:6.1%}  {guess['label']}")
    return 0
