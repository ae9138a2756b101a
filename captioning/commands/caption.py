"""`python -m captioning caption IMAGE...`: describe image files with a trained checkpoint."""
import os
import sys

from PIL import Image

from nn import backend
from nn.persist import remove_stale_temporaries

from ..cli import (UsageError, add_block_bad_endings_argument, add_no_repeat_ngram_argument, check_decoding_options,
                   check_output_file, check_outputs)

HELP = "caption image files with a trained checkpoint (optionally draw where the model looked)"
DESCRIPTION = """\
Print a caption for each image file (32 images at a time, so memory stays
bounded and each caption appears as soon as its batch is done; a whole
folder, e.g. photos/*.jpg, is fine). The image encoder is the one the
checkpoint was trained with: EfficientNet-Lite0 (pretrained; its top
fine-tuned for a --fine-tune-blocks checkpoint such as the shipped one) for a
Flickr8k model, the checkpoint's own small CNN for a synthetic-shapes model.
With --attention-png (attention models only) one PNG per image shows, for
every generated word, where the model looked.

Without --checkpoint the captioner shipped with the package is used (one
line on stderr says which model it is and how it scored).

examples:
  python -m captioning caption photo.jpg                      # the shipped captioner
  python -m captioning caption photo.jpg --checkpoint outputs/flickr8k_attention/best.npz --beam 3
  python -m captioning caption a.png b.png --checkpoint outputs/shapes_attention/best.npz \\
      --attention-png attention.png          # writes attention-a.png, attention-b.png
"""


def add_arguments(parser):
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--checkpoint", default=None,
                        help="a best.npz / last.npz written by train (default: the shipped Flickr8k captioner)")
    parser.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    parser.add_argument("--max-length", type=int, default=20, help="decoding steps (default 20)")
    parser.add_argument("--length-alpha", type=float, default=0.0, help="length normalisation (default 0)")
    add_no_repeat_ngram_argument(parser)
    add_block_bad_endings_argument(parser)
    parser.add_argument("--attention-png", default=None, metavar="NAME.png",
                        help="write the attention picture to NAME.png (one image), or to "
                             "NAME-<image file name without extension>.png each (several); a name "
                             "without an extension gets .png, other extensions are refused")


# Images encoded and decoded at once: memory stays bounded (EfficientNet needs about 8 MB per
# photo), and each caption is printed as soon as its batch is done.
BATCH_SIZE = 32


def _png_paths(out, images, checkpoint):
    """The attention PNG of each image: NAME.png for one image, NAME-<image stem>.png for several
    (none of them one of the files read: an image or the checkpoint). A missing folder is made,
    as train makes its --out."""
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.exists(folder):
        os.makedirs(folder)
    check_output_file(out, "--attention-png")
    stem, ext = os.path.splitext(out)
    if ext.lower() not in ("", ".png"):
        raise UsageError(f"--attention-png writes PNG pictures: give a name ending in .png, not {out}")
    if len(images) == 1:
        paths = [stem + (ext or ".png")]
    else:
        paths = [f"{stem}-{os.path.splitext(os.path.basename(p))[0]}{ext or '.png'}" for p in images]
    first_image = {}
    for image, png in zip(images, paths):
        if png in first_image:
            raise UsageError(f"{first_image[png]} and {image} would both write their attention picture to "
                             f"{png}; caption them in separate runs")
        first_image[png] = image
    check_outputs([("--attention-png", png) for png in paths],
                  [("the input image", image) for image in images] + [("the checkpoint", checkpoint)])
    return paths


def image_encoder(ckpt):
    """The checkpoint's image encoder as a function: image files -> (features for the
    checkpoint's model, display images (N, 3, H, W) in [0, 1]). Built once, called per batch."""
    from ..encoders import make_encoder
    from ..models import ConfigMismatchError

    model = ckpt.model
    try:
        encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=model.dtype)
        return encoder.file_encoder(model.feature_kind, model.dtype)
    except ConfigMismatchError as exc:
        raise UsageError(f"{ckpt.path}: {exc}") from None


def _open_checkpoint(path):
    """The checkpoint to caption with: `path`, or the shipped captioner when none is given."""
    from .. import pretrained
    from ..checkpoint import load_checkpoint
    from ..models import ConfigMismatchError

    try:
        return load_checkpoint(pretrained.checkpoint_or_shipped(path))
    except ConfigMismatchError as exc:
        raise UsageError(str(exc)) from None


def _warn_if_shapes_model_sees_photos(ckpt, images):
    """A model trained on the synthetic shapes set describes any picture as coloured shapes: say so
    once when it is given pictures that are not the set's size (photos, most likely)."""
    data = ckpt.training.get("data") or {}
    if data.get("name") != "shapes":
        return
    size = data.get("image_size")
    for path in images:
        try:
            with Image.open(path) as picture:
                other = picture.size != (size, size)
        except (OSError, ValueError):
            continue            # an undecodable file is reported when it is encoded
        if other:
            print(f"note: {ckpt.path} was trained on the synthetic shapes set, so it only knows coloured "
                  "circles, squares and triangles: a photo gets a caption about shapes", file=sys.stderr)
            return


def _encode_batch(encode, paths):
    """(features, display images, kept indices) of the files that decode; each file that does not is
    reported on stderr and left out, so one bad photo does not stop the others."""
    from ..data.images import ImageDecodeError

    try:
        features, display = encode(paths)
        return features, display, list(range(len(paths)))
    except ImageDecodeError:
        pass
    good = []
    for i, path in enumerate(paths):
        try:
            good.append((i, encode([path])))
        except ImageDecodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
    if not good:
        return None, None, []
    xp = backend.get_array_module(good[0][1][0])
    return (xp.concatenate([f for _, (f, _) in good]), xp.concatenate([d for _, (_, d) in good]),
            [i for i, _ in good])


def _caption_batch(args, ckpt, features, display, paths, pngs):
    """Decode one batch and print (and draw) each caption."""
    from ..attention_png import save_attention_png
    from ..decoding import beam_search, greedy_decode
    from ..generation import bad_ending_ids

    model = ckpt.model
    bad_ids = bad_ending_ids(ckpt.vocabulary) if args.block_bad_endings else ()
    if args.beam > 1:
        result = beam_search(model, features, model.start_id, model.end_id, beam_size=args.beam,
                             max_length=args.max_length, length_alpha=args.length_alpha,
                             no_repeat_ngram=args.no_repeat_ngram, bad_ending_ids=bad_ids)
    else:
        result = greedy_decode(model, features, model.start_id, model.end_id, max_length=args.max_length,
                               no_repeat_ngram=args.no_repeat_ngram, bad_ending_ids=bad_ids)
    for i, (path, png) in enumerate(zip(paths, pngs)):
        words = ckpt.vocabulary.decode(result.sequences[i])
        print(f"{path}: {' '.join(words)}", flush=True)
        if png is not None:
            grid_side = int(round(features.shape[1] ** 0.5))
            attention = result.attention[i]
            shape = (grid_side, grid_side) if grid_side * grid_side == features.shape[1] else None
            save_attention_png(backend.to_numpy(display[i]), words or ["<empty>"],
                               attention if words else attention[:1], png, grid_shape=shape)
            print(f"  attention: {png}", flush=True)


def run(args):
    check_decoding_options(args.beam, args.max_length, args.length_alpha, no_repeat_ngram=args.no_repeat_ngram)
    for path in args.images:
        if os.path.isdir(path):
            raise UsageError(f"{path} is a folder, not an image file (for all its images: {path}/*.jpg)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
    ckpt = _open_checkpoint(args.checkpoint)
    check_decoding_options(args.beam, args.max_length, args.length_alpha, len(ckpt.vocabulary))
    if args.attention_png and ckpt.model.feature_kind != "grid":
        raise UsageError(f"--attention-png needs an attention model; {ckpt.path} is {ckpt.model.name}")
    pngs = [None] * len(args.images)
    if args.attention_png:
        pngs = _png_paths(args.attention_png, args.images, ckpt.path)
    remove_stale_temporaries([png for png in pngs if png is not None])   # left by a killed run
    _warn_if_shapes_model_sees_photos(ckpt, args.images)
    encode = image_encoder(ckpt)
    failed = 0
    for first in range(0, len(args.images), BATCH_SIZE):
        paths = args.images[first:first + BATCH_SIZE]
        features, display, kept = _encode_batch(encode, paths)
        failed += len(paths) - len(kept)
        if kept:
            _caption_batch(args, ckpt, features, display, [paths[i] for i in kept],
                           [pngs[first + i] for i in kept])
    if failed:
        print(f"error: {failed} of {len(args.images)} images could not be read (see above)", file=sys.stderr)
        return 2
    return 0
