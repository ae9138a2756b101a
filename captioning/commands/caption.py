"""`python -m captioning caption IMAGE...`: describe image files with a trained checkpoint."""
import os

from nn import backend
from nn.persist import remove_stale_temporaries

from ..cli import UsageError, check_output_file, check_outputs

HELP = "caption image files with a trained checkpoint (optionally draw where the model looked)"
DESCRIPTION = """\
Print a caption for each image file (32 images at a time, so memory stays
bounded and each caption appears as soon as its batch is done; a whole
folder, e.g. photos/*.jpg, is fine). The image encoder is the one the
checkpoint was trained with: EfficientNet-Lite0 (pretrained, frozen) for a
Flickr8k model, the checkpoint's own small CNN for a synthetic-shapes model.
With --attention-png (attention models only) one PNG per image shows, for
every generated word, where the model looked.

examples:
  python -m captioning caption photo.jpg --checkpoint outputs/flickr8k_attention/best.npz --beam 3
  python -m captioning caption a.png b.png --checkpoint outputs/shapes_attention/best.npz \\
      --attention-png attention.png          # writes attention-a.png, attention-b.png
"""


def add_arguments(parser):
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--checkpoint", required=True, help="a best.npz / last.npz written by train")
    parser.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    parser.add_argument("--max-length", type=int, default=20, help="decoding steps (default 20)")
    parser.add_argument("--length-alpha", type=float, default=0.0, help="length normalisation (default 0)")
    parser.add_argument("--attention-png", default=None, metavar="NAME.png",
                        help="write the attention picture to NAME.png (one image), or to "
                             "NAME-<image file name without extension>.png each (several); a name "
                             "without an extension gets .png, other extensions are refused")


# Images encoded and decoded at once: memory stays bounded (EfficientNet needs about 8 MB per
# photo), and each caption is printed as soon as its batch is done.
BATCH_SIZE = 32


def _png_paths(out, images, checkpoint):
    """The attention PNG of each image: NAME.png for one image, NAME-<image stem>.png for several
    (none of them one of the files read: an image or the checkpoint)."""
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
    from ..data.images import load_images
    from ..training import make_encoder

    model, spec = ckpt.model, ckpt.encoder
    if spec.get("name") == "small_cnn":
        encoder = make_encoder(spec, ckpt.encoder_state, dtype=model.dtype).eval()
        size = spec.get("config", {}).get("image_size", 64)

        def encode_small_cnn(paths):
            pixels, _, _ = load_images(paths, size=size, resize="squash", dtype=model.dtype)
            return encoder.encode(pixels, model.feature_kind, model.dtype), pixels
        return encode_small_cnn
    if spec.get("name") == "efficientnet_lite0":
        from ..encoders.efficientnet import EfficientNetLite0
        net = EfficientNetLite0.from_pretrained()
        pre = net.preprocess
        wanted = spec.get("input", {})
        if wanted and (wanted.get("size") != pre["size"] or wanted.get("resize") != pre["resize"]):
            raise UsageError(f"{ckpt.path}: trained on EfficientNet inputs {wanted}, this encoder uses {pre}")

        def encode_efficientnet(paths):
            batch, _, _ = load_images(paths, size=pre["size"], resize=pre["resize"], mean=pre["mean"],
                                      std=pre["std"])
            grid, pooled = net.features(batch.astype(backend.default_float()))
            features = (grid if model.feature_kind == "grid" else pooled).astype(model.dtype)
            display, _, _ = load_images(paths, size=pre["size"], resize=pre["resize"])
            return features, display
        return encode_efficientnet
    raise UsageError(f"{ckpt.path}: unknown image encoder {spec!r}")


def run(args):
    import math

    from ..attention_png import save_attention_png
    from ..checkpoint import load_checkpoint
    from ..decoding import beam_search, greedy_decode
    from ..models import ConfigMismatchError

    if args.beam < 1 or args.max_length < 1:
        raise UsageError("--beam and --max-length must be >= 1")
    if not (math.isfinite(args.length_alpha) and args.length_alpha >= 0):
        raise UsageError(f"--length-alpha must be a number >= 0, got {args.length_alpha}")
    for path in args.images:
        if os.path.isdir(path):
            raise UsageError(f"{path} is a folder, not an image file (for all its images: {path}/*.jpg)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except ConfigMismatchError as exc:
        raise UsageError(str(exc)) from None
    model = ckpt.model
    if args.attention_png and model.feature_kind != "grid":
        raise UsageError(f"--attention-png needs an attention model; {args.checkpoint} is {model.name}")
    pngs = [None] * len(args.images)
    if args.attention_png:
        pngs = _png_paths(args.attention_png, args.images, args.checkpoint)
    remove_stale_temporaries([png for png in pngs if png is not None])   # left by a killed run
    encode = image_encoder(ckpt)
    for first in range(0, len(args.images), BATCH_SIZE):
        paths = args.images[first:first + BATCH_SIZE]
        features, display = encode(paths)
        if args.beam > 1:
            result = beam_search(model, features, model.start_id, model.end_id, beam_size=args.beam,
                                 max_length=args.max_length, length_alpha=args.length_alpha)
        else:
            result = greedy_decode(model, features, model.start_id, model.end_id, max_length=args.max_length)
        for i, path in enumerate(paths):
            words = ckpt.vocabulary.decode(result.sequences[i])
            print(f"{path}: {' '.join(words)}", flush=True)
            png = pngs[first + i]
            if png is not None:
                grid_side = int(round(features.shape[1] ** 0.5))
                attention = result.attention[i]
                shape = (grid_side, grid_side) if grid_side * grid_side == features.shape[1] else None
                save_attention_png(backend.to_numpy(display[i]), words or ["<empty>"],
                                   attention if words else attention[:1], png, grid_shape=shape)
                print(f"  attention: {png}", flush=True)
    return 0
