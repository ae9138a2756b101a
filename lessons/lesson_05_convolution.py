"""Lesson 5: convolution and pooling.

A convolutional layer slides small filters over the image; each filter
computes, at every position, a weighted sum of the pixels under it. The same
few weights are reused everywhere, so a filter that detects an edge detects
it anywhere in the image. Pooling then keeps the strongest response in each
small window, making the map smaller and a little shift-tolerant. Stacks of
these layers are the CNN encoders every captioning system starts from.

Images are NCHW arrays; filters w have shape (F, C, HH, WW).
"""
import time

import numpy
from PIL import Image

from nn import backend
from nn import conv
from nn.conv import conv_backward, conv_backward_naive, conv_forward, conv_forward_naive, same_padding
from nn.dense import relu_forward
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.pool import max_pool_backward, max_pool_forward

TITLE = "Convolution and pooling: naive loops, im2col, feature maps you can look at"
SECONDS = 1

# `python run_lesson.py 5 --exercise`: write these yourself (graded by grade_<name> below and by the steps)
EXERCISES = ["conv_forward_naive", "conv_backward_naive"]
EXERCISE_IMPORTS = ["from nn import backend"]


def draw_picture(size=48):
    """A grey picture with a bright square and a bright disc (made here, no data needed)."""
    rows, cols = numpy.mgrid[0:size, 0:size]
    picture = numpy.full((size, size), 0.2)
    picture[8:24, 6:22] = 1.0                                          # square, top left
    picture[(rows - 32) ** 2 + (cols - 32) ** 2 < 10 ** 2] = 0.8       # disc, bottom right
    return picture


EDGE_FILTERS = {                   # Sobel-like 3x3 filters, one per edge direction
    "vertical edges": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "horizontal edges": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "diagonal edges (rising)": [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
    "diagonal edges (falling)": [[-2, -1, 0], [-1, 0, 1], [0, 1, 2]],
}


def step_1_by_hand(ctx):
    """Convolution with loops: a 3x3 filter slides over the image.

    With x_p the input padded with `pad` zeros on each side and step `stride`:
    out[f, i, j] = sum over c, di, dj of x_p[c, i*stride + di, j*stride + dj] * w[f, c, di, dj] + b[f].
    Strictly this is cross-correlation: a mathematical convolution would
    flip the filter (w[f, c, HH-1-di, WW-1-dj]). Deep-learning libraries all
    compute it unflipped and call it convolution; for learned filters it
    makes no difference (training learns the flipped filter instead).
    `conv_forward_naive` is exactly these loops (here stride 1, pad 1). A vertical-edge filter
    answers where brightness changes from left to right: positive on one side
    of the square, negative on the other, zero on flat areas.
    """
    picture = draw_picture()
    ctx.x = backend.asarray(picture[None, None])                       # (N=1, C=1, 48, 48)
    ctx.w = backend.asarray(numpy.array(list(EDGE_FILTERS.values()), dtype=float)[:, None])  # (4, 1, 3, 3)
    ctx.b = backend.xp().zeros(4)
    out, _ = conv_forward_naive(ctx.x, ctx.w, ctx.b, {"stride": 1, "pad": 1})
    row = backend.to_numpy(out[0, 0, 16, 2:26])                         # one row through the square
    ctx.check(row.max() > 0 > row.min() and abs(row[10]) < 1e-12, "edges respond, flat areas do not")
    return {"input": ctx.x.shape, "filters": ctx.w.shape, "output": out.shape,
            "vertical-edge response along row 16": row.round(1)}


def step_2_output_size(ctx):
    """Output size: H_out = (H + pad_top + pad_bottom - HH) // stride + 1.

    Padding adds zeros around the border so the filter can also sit on edge
    pixels; a stride > 1 skips positions and shrinks the map. TensorFlow's
    "same" padding (used by EfficientNet, lesson 6) pads just enough for
    H_out = ceil(H / stride); when that needs an odd number of zeros, the
    extra one goes at the bottom/right. For our 48 x 48 picture, a 3x3 filter
    and stride 2 that is (0, 1): the same output SIZE as 1 zero on each side,
    but the filter sits one pixel further down and right, so the VALUES
    differ (weights trained with one padding are off by a pixel with the
    other). For a 47 x 47 crop "same" pads 1 and 1: no difference.
    """
    ctx.show_source(same_padding)
    sizes = {}
    for stride, pad in [(1, 0), (1, 1), (2, 1), (2, same_padding(48, 3, 2) * 2)]:
        out, _ = conv_forward(ctx.x, ctx.w, ctx.b, {"stride": stride, "pad": pad})
        top, bottom = (pad, pad) if isinstance(pad, int) else pad[:2]
        formula = (48 + top + bottom - 3) // stride + 1
        ctx.check(out.shape[2] == formula, "the formula predicts the size")
        sizes[f"stride {stride}, pad {pad}"] = f"{out.shape[2]} x {out.shape[3]}"
    for size in (48, 47):
        x = ctx.x[:, :, :size, :size]
        symmetric, _ = conv_forward(x, ctx.w, ctx.b, {"stride": 2, "pad": 1})
        tf_same, _ = conv_forward(x, ctx.w, ctx.b, {"stride": 2, "pad": same_padding(size, 3, 2) * 2})
        difference = float(abs(symmetric - tf_same).max()) if symmetric.shape == tf_same.shape else None
        sizes[f"{size} x {size}: 'same' pads (top, bottom)"] = same_padding(size, 3, 2)
        sizes[f"{size} x {size}: largest difference from pad 1 on each side"] = difference
    ctx.check(sizes["48 x 48: largest difference from pad 1 on each side"] > 0, "asymmetric padding matters")
    ctx.check(sizes["47 x 47: largest difference from pad 1 on each side"] == 0, "symmetric here: no difference")
    return sizes


def step_3_im2col(ctx):
    """im2col: turn convolution into ONE matrix product.

    Copy every 3x3 patch of the input into a column of a matrix (im2col):
    (C*HH*WW) rows x (H_out*W_out) columns. Each filter, flattened, is a row
    of w; then out = w_rows @ columns. Matrix products are what CPUs and GPUs
    do fastest, so `conv_forward` works this way for ordinary and grouped
    convolutions (with one slice copy per kernel tap instead of the patch
    loop below, which only shows the idea on a tiny input; depthwise ones,
    step 5, need no matrix product). For stride 1 each tap's columns are even ONE contiguous
    slice of the flattened, padded input (see the docstring of nn/conv.py).
    """
    xp = backend.xp()
    tiny = xp.arange(16.0).reshape(1, 1, 4, 4)
    columns = xp.stack([tiny[0, 0, i:i + 3, j:j + 3].reshape(9) for i in range(2) for j in range(2)], axis=1)
    w_rows = ctx.w.reshape(4, 9)
    by_matrix_product = (w_rows @ columns).reshape(1, 4, 2, 2)
    naive, _ = conv_forward_naive(tiny, ctx.w, None, {"stride": 1, "pad": 0})
    ctx.check(rel_error(by_matrix_product, naive) < 1e-12, "im2col + matmul = the loops")
    return {"tiny input": backend.to_numpy(tiny[0, 0]), "columns (9 x 4)": backend.to_numpy(columns),
            "out by matrix product": backend.to_numpy(by_matrix_product[0, 0]),
            "out by loops": backend.to_numpy(naive[0, 0])}


def step_4_fast_versus_naive(ctx):
    """The fast convolution equals the loops, and is much faster.

    Same random input and filters through `conv_forward_naive` and
    `conv_forward`: the outputs agree to rounding error.
    """
    gen = ctx.rng(0)
    x = gen.standard_normal((2, 3, 24, 24))
    w = gen.standard_normal((8, 3, 3, 3))
    b = gen.standard_normal(8)
    param = {"stride": 1, "pad": 1}
    started = time.perf_counter()
    slow, _ = conv_forward_naive(x, w, b, param)
    naive_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fast, _ = conv_forward(x, w, b, param)
    backend.synchronize()
    fast_seconds = time.perf_counter() - started
    difference = rel_error(slow, fast)
    ctx.check(difference < 1e-10, "fast and naive convolutions agree")
    return {"naive (ms)": naive_seconds * 1e3, "conv_forward (ms)": fast_seconds * 1e3,
            "speed-up": naive_seconds / max(fast_seconds, 1e-9), "relative difference": difference}


def step_5_groups_and_depthwise(ctx):
    """Groups: filters that see only some channels; depthwise = one channel each.

    With groups=G the C input channels are split into G groups and each filter
    sees only C/G of them, so w has shape (F, C // G, HH, WW). With G = C = F
    (depthwise) each channel gets its own filter: 9 weights per channel
    instead of 9*C. EfficientNet and MobileNet are built from depthwise 3x3 or
    5x5 convs followed by 1x1 convs that mix the channels.
    """
    gen = ctx.rng(1)
    channels = 6
    x = gen.standard_normal((1, channels, 10, 10))
    depthwise_w = gen.standard_normal((channels, 1, 3, 3))
    out, _ = conv_forward(x, depthwise_w, None, {"stride": 1, "pad": 1, "groups": channels})
    one_channel, _ = conv_forward_naive(x[:, 2:3], depthwise_w[2:3], None, {"stride": 1, "pad": 1})
    ctx.check(rel_error(out[:, 2:3], one_channel) < 1e-10, "depthwise channel 2 = its own conv")
    return {"full conv weights (6 filters)": 6 * channels * 9, "depthwise weights": int(depthwise_w.size),
            "output": out.shape}


def step_6_conv_backward(ctx):
    """The backward pass: gradients for the input, the filters and the biases.

    In loops (`conv_backward_naive`): each output pixel was sum(field * w[f])
    + b[f], so its gradient dout[n, f, i, j] adds field * dout to dw[f],
    w[f] * dout to the field's pixels in dx, and dout to db[f]. Vectorised
    (`conv_backward`): the output is w @ columns, so dw = dout @ columns^T
    and dcolumns = w^T @ dout, which col2im adds back to the pixels each
    column was copied from. Both are checked, numerically with stride 2 and
    TensorFlow-style asymmetric padding, and for a depthwise conv.
    """
    gen = ctx.rng(2)
    errors = {}
    for label, w_shape, param in [("stride 2, pad (0, 1, 0, 1)", (3, 2, 3, 3), {"stride": 2, "pad": (0, 1, 0, 1)}),
                                  ("depthwise, pad 1", (2, 1, 3, 3), {"stride": 1, "pad": 1, "groups": 2})]:
        x, w, b = gen.standard_normal((2, 2, 5, 5)), gen.standard_normal(w_shape), gen.standard_normal(w_shape[0])
        out, cache = conv_forward(x, w, b, param)
        dout = gen.standard_normal(out.shape)
        dx, dw, db = conv_backward(dout, cache)
        dx_num = eval_numerical_gradient_array(lambda v: conv_forward(v, w, b, param)[0], x, dout)
        dw_num = eval_numerical_gradient_array(lambda v: conv_forward(x, v, b, param)[0], w, dout)
        db_num = eval_numerical_gradient_array(lambda v: conv_forward(x, w, v, param)[0], b, dout)
        errors[label] = max(rel_error(dx, dx_num), rel_error(dw, dw_num), rel_error(db, db_num))
        loops = conv_backward_naive(dout, (x, w, b, param))
        errors[label + ", loops vs vectorised"] = max(rel_error(a, v) for a, v in zip(loops, (dx, dw, db)))
    ctx.check(max(errors.values()) < 1e-7, f"conv gradients must match: {errors}")
    return {f"worst relative error, {k}": v for k, v in errors.items()}


def step_7_max_pooling(ctx):
    """Max pooling: keep the largest value of each window; the gradient goes to it.

    A 2x2 window with stride 2 halves the height and width. In the backward
    pass only the position that held the maximum receives the gradient; the
    other three get zero.
    """
    xp = backend.xp()
    x = xp.asarray([[[[1.0, 2.0, 5.0, 0.0], [3.0, 4.0, 1.0, 1.0], [0.0, 0.5, 2.0, 7.0], [1.0, 0.0, 6.0, 3.0]]]])
    param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = max_pool_forward(x, param)
    dx = max_pool_backward(xp.ones_like(out), cache)
    ctx.check(backend.to_numpy(out[0, 0]).tolist() == [[4.0, 5.0], [1.0, 7.0]], "max of each window")
    dout = ctx.rng(3).standard_normal(out.shape)
    dx_num = eval_numerical_gradient_array(lambda v: max_pool_forward(v, param)[0], x, dout)
    error = rel_error(max_pool_backward(dout, cache), dx_num)
    ctx.check(error < 1e-7, "max-pool gradient must match")
    return {"x": backend.to_numpy(x[0, 0]), "max pool 2x2": backend.to_numpy(out[0, 0]),
            "dx for dout = 1": backend.to_numpy(dx[0, 0]), "relative error dx": error}


def step_8_feature_maps(ctx):
    """Feature maps you can look at: edges -> ReLU -> max pool, saved as a PNG.

    The four edge filters of step 1 run on the picture; ReLU keeps the
    positive responses (so each map shows only edges of one sign: dark to
    bright in the filter's direction); 2x2 max pooling halves each map. The PNG shows the
    input and, for each filter, its map before and after pooling. A trained
    CNN's first layer learns filters much like these (and many more).
    """
    maps, _ = conv_forward(ctx.x, ctx.w, ctx.b, {"stride": 1, "pad": 1})
    active, _ = relu_forward(maps)
    pooled, _ = max_pool_forward(active, {"pool_height": 2, "pool_width": 2, "stride": 2})
    active, pooled = backend.to_numpy(active)[0], backend.to_numpy(pooled)[0]

    def tile(array, scale):
        array = array / max(array.max(), 1e-12)
        image = Image.fromarray((255 * array).astype(numpy.uint8))
        return image.resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)

    size, gap = 48 * 3, 6
    sheet = Image.new("L", ((size + gap) * 5, (size + gap) * 2), 40)
    sheet.paste(tile(backend.to_numpy(ctx.x)[0, 0], 3), (0, 0))
    for k in range(4):
        sheet.paste(tile(active[k], 3), ((size + gap) * (k + 1), 0))
        sheet.paste(tile(pooled[k], 6), ((size + gap) * (k + 1), size + gap))
    path = ctx.output_path("lesson05_feature_maps.png")
    sheet.save(path)
    ctx.check(pooled.shape == (4, 24, 24), "pooling halves the maps")
    return {"feature maps": active.shape, "after pooling": pooled.shape,
            "strongest response per filter": dict(zip(EDGE_FILTERS, active.max(axis=(1, 2)).round(2).tolist())),
            "picture": str(path), "layout": "top: input, then each filter's map; bottom: after max pooling"}


GRADED_CONVS = [((2, 3, 6, 5), (4, 3, 3, 3), {"stride": 1, "pad": 1}),
                ((2, 2, 6, 5), (3, 2, 3, 3), {"stride": 2, "pad": (0, 1, 0, 1)}),
                ((1, 4, 5, 5), (4, 2, 3, 3), {"stride": 1, "pad": 1, "groups": 2})]


def graded_conv(gen, x_shape, w_shape):
    """float64 x, w, b for grading, drawn from the generator gen."""
    return gen.standard_normal(x_shape), gen.standard_normal(w_shape), gen.standard_normal(w_shape[0])


def grade_conv_forward_naive(ctx, mine, reference):
    """Your out against the library's vectorised conv_forward: stride 1 and 2, asymmetric padding, groups."""
    errors = {}
    for k, (x_shape, w_shape, param) in enumerate(GRADED_CONVS):
        x, w, b = graded_conv(ctx.rng(20 + k), x_shape, w_shape)
        errors[str(param)] = rel_error(mine.conv_forward_naive(x, w, b, param)[0], conv.conv_forward(x, w, b, param)[0])
    ctx.check(max(errors.values()) < 1e-10, f"out differs from conv_forward: relative errors {errors}")
    return f"out matches conv_forward (largest relative error {max(errors.values()):.1e})"


def grade_conv_backward_naive(ctx, mine, reference):
    """Your dx, dw, db (cache (x, w, b, conv_param)) against finite differences of the library's conv_forward."""
    errors = {}
    for k, (x_shape, w_shape, param) in enumerate(GRADED_CONVS):
        args = list(graded_conv(ctx.rng(30 + k), x_shape, w_shape))
        dout = ctx.rng(40 + k).standard_normal(conv.conv_forward(*args, param)[0].shape)
        grads = mine.conv_backward_naive(dout, (*args, param))
        for i, name in enumerate(["dx", "dw", "db"]):
            def out(value, i=i):
                return conv.conv_forward(*(args[:i] + [value] + args[i + 1:]), param)[0]
            errors[f"{name} {param}"] = rel_error(grads[i], eval_numerical_gradient_array(out, args[i], dout))
    ctx.check(max(errors.values()) < 1e-7, f"gradients differ from finite differences: {errors}")
    return f"dx, dw, db match finite differences (largest relative error {max(errors.values()):.1e})"


if __name__ == "__main__":  # python lessons/lesson_05_convolution.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
